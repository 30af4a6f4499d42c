"""PyTorch-style cells: one time step, `cell(x, state) -> h` (LSTMCell: `(h, c)`).

    cell = fastrnn.LSTMCell(input_size=16, hidden_size=32)
    h, c = cell(x_t)                  # x_t (batch, 16); state None means zeros
    h, c = cell(x_next, (h, c))

The weights are stored in fastrnn's canonical (Keras) layout and gate order — kernel (input_size, G*hidden),
recurrent_kernel (hidden, G*hidden), bias (G*hidden,) or, for GRUCell (reset_after=True, PyTorch's GRU),
(2, 3*hidden) — and one step runs the same compiled kernels as the layers (ops, one time step). Initialisation is
PyTorch's: every parameter U(-1/sqrt(hidden), 1/sqrt(hidden)).

Per-call overhead is kept low: weights are validated (dtype, shape, finiteness, layout) once, when they are set,
so a call only checks x and the state. Modifying the arrays returned by `weights` in place is allowed (they are
the live parameters) but skips that validation.
"""
import numpy as np

from .. import _checks, ops
from .recurrent import _seed


class _Cell:
    cell = None
    gates = 1
    reset_after = True
    activation = "tanh"

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", backend="auto", seed=None):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.use_bias = _checks.boolean("bias", bias)
        self.dtype = _checks.float_dtype(dtype, "dtype")
        self.backend = _checks.choice("backend", backend, ops.BACKENDS)
        self.seed = _seed(seed)
        self.backend_used = None
        self._n_states = ops.N_STATES[self.cell]
        self._kernel = None       # select_kernel's choice for batch > 0, reused
        # Kernels never write their inputs (kernels/README.md), so these can be shared between calls:
        self._lengths = {}        # batch -> ones(batch) int64
        self._zeros = {}          # batch -> zeros((batch, hidden)), the default state
        rng = np.random.default_rng(self.seed)
        k = 1.0 / np.sqrt(self.hidden_size)
        shapes = self._weight_shapes()
        self._set([rng.uniform(-k, k, s).astype(self.dtype) for s in shapes])

    def _bias_shape(self):
        gh = self.gates * self.hidden_size
        return (2, gh) if (self.cell == "gru" and self.reset_after) else (gh,)

    def _weight_shapes(self):
        gh = self.gates * self.hidden_size
        shapes = [(self.input_size, gh), (self.hidden_size, gh)]
        if self.use_bias:
            shapes.append(self._bias_shape())
        return shapes

    def _weight_names(self):
        return ["kernel", "recurrent_kernel"] + (["bias"] if self.use_bias else [])

    # -- weights: validated once, here ---------------------------------------------------------------------------
    def _set(self, arrays):
        self._W, self._R = arrays[0], arrays[1]
        self._b = arrays[2] if self.use_bias else np.zeros(self._bias_shape(), self.dtype)

    @property
    def kernel(self):
        return self._W

    @property
    def recurrent_kernel(self):
        return self._R

    @property
    def bias(self):
        return self._b if self.use_bias else None

    @property
    def weights(self):
        """The live parameters in Keras order: kernel, recurrent_kernel[, bias]."""
        return [self._W, self._R] + ([self._b] if self.use_bias else [])

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Canonical (Keras) layout: [kernel (input_size, G*hidden), recurrent_kernel (hidden, G*hidden), bias]."""
        name = type(self).__name__
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{name}: weights must be a list of arrays; got {type(weights).__name__}")
        names = self._weight_names()
        if len(weights) != len(names):
            raise ValueError(f"{name}: set_weights needs {len(names)} arrays [{', '.join(names)}]; "
                             f"got {len(weights)}")
        arrays = []
        for label, w, shape in zip(names, weights, self._weight_shapes()):
            arr = _checks.as_array(label, w, self.dtype, check_finite=True)
            _checks.check_shape(f"{name}: {label}", arr, shape, str(shape))
            arrays.append(arr.copy())  # C-contiguous, of our dtype, owned
        self._set(arrays)

    def count_params(self):
        return int(sum(int(np.prod(s)) for s in self._weight_shapes()))

    # -- one step ------------------------------------------------------------------------------------------------
    def _state(self, label, s, shape):
        """A state argument checked like x, of `shape`: (batch, hidden) or, unbatched, (hidden,)."""
        s = _checks.as_array(label, s, self.dtype)  # no copy, one dot product for what a step loop passes
        if s.shape != shape:
            what = f"(hidden_size={shape[0]},)" if len(shape) == 1 else f"(batch={shape[0]}, hidden_size={shape[1]})"
            raise ValueError(f"{label} must have shape {what}; got shape {s.shape}")
        return s if len(shape) == 2 else s.reshape(1, shape[0])

    def _step(self, x, state):
        # Checks as few and as cheap as complete checks can be: this runs once per time step of a Python loop.
        x = _checks.as_array("x", x, self.dtype)
        D, H = self.input_size, self.hidden_size
        shape = x.shape
        if len(shape) == 2 and shape[1] == D:
            B = shape[0]
            state_shape = (B, H)
        elif shape == (D,):
            B = 1
            state_shape = (H,)
        else:
            raise ValueError(f"x must have shape (batch, input_size={D}) or (input_size={D},); got shape {shape}")
        if state is None:
            zeros = self._zeros.get(B)
            if zeros is None:
                zeros = self._zeros[B] = np.zeros((B, H), self.dtype)
            states = (zeros,) * self._n_states
        elif self._n_states == 1:
            states = (self._state("state", state, state_shape),)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"state must be a pair (h, c) for LSTMCell; got {type(state).__name__}"
                                 + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
            states = (self._state("state h", state[0], state_shape), self._state("state c", state[1], state_shape))
        lengths = self._lengths.get(B)
        if lengths is None:
            lengths = self._lengths[B] = np.ones(B, np.int64)
        kernel = self._kernel
        if kernel is None or not B:
            kernel = ops.select_kernel(self.cell, self.backend, self.dtype, (B, 1, D, H))  # B = 0: the reference
            if B:
                self._kernel = kernel
        p = ops.Problem(self.cell, x.reshape(B, 1, D), self._W, self._R, self._b, self.use_bias, states, lengths,
                        False, self.activation, self.reset_after)
        finals = kernel.forward(p, False)[1]
        self.backend_used = kernel.name
        if len(state_shape) == 1:  # unbatched
            return tuple(f[0] for f in finals)
        return finals

    def __repr__(self):
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size})"


class RNNCell(_Cell):
    """h' = nonlinearity(x W + h R + b), nonlinearity "tanh" (default) or "relu"."""
    cell = "simple_rnn"
    gates = 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype="float32", backend="auto",
                 seed=None):
        self.activation = _checks.choice("nonlinearity", nonlinearity, ops.ACTIVATIONS)
        super().__init__(input_size, hidden_size, bias, dtype, backend, seed)

    @property
    def nonlinearity(self):
        return self.activation

    def __call__(self, x, state=None):
        """x (batch, input_size) or (input_size,); state h (batch, hidden_size) or None -> h'."""
        return self._step(x, state)[0]


class LSTMCell(_Cell):
    """Keras gate order i, f, c, o (the same as PyTorch's i, f, g, o): (h', c') from x and (h, c)."""
    cell = "lstm"
    gates = 4

    def __call__(self, x, state=None):
        """x (batch, input_size) or (input_size,); state (h, c) or None -> (h', c')."""
        return self._step(x, state)


class GRUCell(_Cell):
    """reset_after=True (PyTorch's GRU, Keras' default), Keras gate order z, r, h; bias (2, 3*hidden)."""
    cell = "gru"
    gates = 3

    def __call__(self, x, state=None):
        """x (batch, input_size) or (input_size,); state h (batch, hidden_size) or None -> h'."""
        return self._step(x, state)[0]
