"""Keras-style layers. Each module holds one family: recurrent (SimpleRNN, LSTM, GRU), ..."""
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN

__all__ = ["SimpleRNN", "LSTM", "GRU", "RecurrentLayer"]
