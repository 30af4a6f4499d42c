"""Keras-style layers, one family per module: base (the Layer protocol), recurrent (SimpleRNN, LSTM, GRU),
core (Input, Dense, Embedding, Dropout, Activation, Flatten, RepeatVector), wrappers (Bidirectional) and cells
(PyTorch-style RNNCell, LSTMCell, GRUCell)."""
from .base import Layer
from .cells import GRUCell, LSTMCell, RNNCell
from .core import Activation, Dense, Dropout, Embedding, Flatten, Input, RepeatVector
from .recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN
from .wrappers import Bidirectional

__all__ = ["Layer", "SimpleRNN", "LSTM", "GRU", "RecurrentLayer", "Input", "Dense", "Embedding", "Dropout",
           "Activation", "Flatten", "RepeatVector", "Bidirectional", "RNNCell", "LSTMCell", "GRUCell"]
