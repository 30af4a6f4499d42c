"""fastrnn: fast CPU recurrent networks (SimpleRNN, LSTM, GRU) with Numba and Cython kernels.

    import fastrnn
    layer = fastrnn.LSTM(64, return_sequences=True)
    y = layer(x)                # x: (batch, timesteps, features), numpy

The functional API is fastrnn.ops (rnn_forward / rnn_backward); fastrnn.reference is the NumPy oracle.
"""
from . import initializers, ops, reference
from . import layers
from .layers import (GRU, LSTM, Activation, Bidirectional, Dense, Dropout, Embedding, Flatten, GRUCell, Input, Layer,
                     LSTMCell, RecurrentLayer, RepeatVector, RNNCell, SimpleRNN)
from . import losses, metrics, optimizers
from .models import Sequential
from .ops import available_backends, rnn_backward, rnn_forward
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = [
    "SimpleRNN", "LSTM", "GRU", "RecurrentLayer", "RNNCell", "LSTMCell", "GRUCell",
    "Layer", "Input", "Dense", "Embedding", "Dropout", "Activation", "Flatten", "RepeatVector", "Bidirectional",
    "Sequential", "losses", "metrics", "optimizers",
    "rnn_forward", "rnn_backward", "available_backends", "ops", "reference", "initializers", "layers",
    "set_num_threads", "get_num_threads",
]
