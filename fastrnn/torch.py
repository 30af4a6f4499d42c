"""`import fastrnn.torch`: the PyTorch modules RNN, LSTM and GRU (see fastrnn.interop.torch)."""
from fastrnn.interop.torch import GRU, LSTM, RNN, RNNBase  # noqa: F401  (absolute: `torch` here is the real torch)

__all__ = ["RNN", "LSTM", "GRU", "RNNBase"]
