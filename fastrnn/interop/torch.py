"""PyTorch adapter: `RNN`, `LSTM` and `GRU` modules that match torch.nn and run in fastrnn's kernels.

    import torch
    import fastrnn.torch as frt

    lstm = frt.LSTM(16, 64, num_layers=2, batch_first=True, bidirectional=True)   # torch.nn.LSTM's arguments
    lstm.load_state_dict(torch.nn.LSTM(16, 64, 2, batch_first=True, bidirectional=True).state_dict())
    y, (h_n, c_n) = lstm(x)          # what torch.nn.LSTM returns; y.sum().backward() runs fastrnn's BPTT

Same constructor arguments, parameter names, shapes, initialisation and state_dict as torch.nn (so state dicts
load both ways), the same inputs (time-major or `batch_first`, unbatched 2-D, `PackedSequence`) and outputs.
Extra keyword-only arguments: `backend` ("auto", "cython", "numba", "numpy"; `module.backend_used` tells which
ran), `check_finite` (default True) and `cache_weights` (default True).

How it maps (one layer and direction at a time, in fastrnn's canonical Keras layout, DESIGN.md):
W = weight_ih.T (I, G*H), R = weight_hh.T (H, G*H); LSTM gates i,f,g,o = Keras i,f,c,o; RNN and LSTM bias =
bias_ih + bias_hh; torch's GRU is Keras' reset_after=True GRU with gates r,z,n -> z,r,h and bias (2, 3H) =
[bias_ih, bias_hh]. The reverse direction is fastrnn's `reverse=True` (it honours per-sequence lengths, which
is how a PackedSequence runs). Every layer and direction is one torch.autograd.Function whose backward is
fastrnn.ops.rnn_backward; gradients are mapped back to torch's layout (a summed bias gives its gradient to both
bias_ih and bias_hh).

Tensors and arrays share memory where the layouts allow it: inputs (batch_first, or any input with one
sequence), initial states, the kernels' outputs and the gradients of inputs and initial states. The weights
need a transposing copy; inference (no grad, or frozen parameters) caches it, checked against a bit-exact
snapshot, so a change of any kind (optimizer step, `.data` write, numpy view) is always seen; training
converts on every forward. Modules are CPU only, float32 or float64.

Differences from torch.nn: no `proj_size`; NaN or inf in the input, initial states or weights raise a ValueError
naming the tensor (`check_finite=False` lets them propagate as torch does); not scriptable with torch.jit.
"""
import math
import numbers
import threading
import warnings

import numpy as np
import torch
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import _checks, ops

__all__ = ["RNN", "LSTM", "GRU", "RNNBase"]

# torch mode -> (fastrnn cell, activation, gates G)
_MODES = {"RNN_TANH": ("simple_rnn", "tanh", 1), "RNN_RELU": ("simple_rnn", "relu", 1),
          "LSTM": ("lstm", "tanh", 4), "GRU": ("gru", "tanh", 3)}
_DTYPES = (torch.float32, torch.float64)


def _np(t):
    """A tensor's data as a numpy array sharing its memory (None stays None)."""
    return None if t is None else t.numpy(force=True)  # force: detach, resolve neg/conj bits; no copy on CPU


def _finite(name, t):
    """t: a tensor or a numpy array."""
    a = _np(t) if isinstance(t, torch.Tensor) else t
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite; it contains NaN or inf (pass check_finite=False to the module "
                         "to let them propagate as torch.nn does)")


# ---------------------------------------------------------------------------------------------------------------
# Layout conversion, torch <-> fastrnn's canonical Keras layout
# ---------------------------------------------------------------------------------------------------------------
# Transposing copies go through torch: its copy is blocked, numpy's is element by element and slows down up to
# 5x when the source rows are long (measured 37 us vs 146 us for (128, 512) float32, 142 vs 736 for (256, 1024)).

def _gru_weight_to_keras(w):
    """torch (3H, K) with row blocks r, z, n -> Keras (K, 3H) with column blocks z, r, h (a new tensor)."""
    H = w.shape[0] // 3
    out = torch.empty((w.shape[1], 3 * H), dtype=w.dtype)
    out[:, :H].copy_(w[H:2 * H].t())
    out[:, H:2 * H].copy_(w[:H].t())
    out[:, 2 * H:].copy_(w[2 * H:].t())
    return out


def _gru_weight_to_torch(g):
    """Keras (K, 3H) z, r, h -> torch (3H, K) r, z, n: the inverse of _gru_weight_to_keras."""
    H = g.shape[1] // 3
    out = torch.empty((3 * H, g.shape[0]), dtype=g.dtype)
    out[:H].copy_(g[:, H:2 * H].t())
    out[H:2 * H].copy_(g[:, :H].t())
    out[2 * H:].copy_(g[:, 2 * H:].t())
    return out


def _gru_swap(v):
    """Swap the first two H-blocks of a (3H,) vector: r,z,n <-> z,r,h (its own inverse)."""
    H = v.shape[-1] // 3
    return torch.cat([v[H:2 * H], v[:H], v[2 * H:]])


_scratch = threading.local()  # per thread: a bool buffer for _same_bits, kept between calls


def _same_bits(a, b):
    """a and b hold the same bits (b may be any array; only C-contiguous ones are compared).

    Compares into a kept per-thread buffer: np.array_equal's temporary is as large as the weights.
    """
    if a.shape != b.shape or a.dtype != b.dtype or not b.flags.c_contiguous:
        return False
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < a.size:
        buf = _scratch.buf = np.empty(a.size, bool)
    eq = buf[:a.size].reshape(a.shape)
    u = np.uint32 if a.itemsize == 4 else np.uint64
    np.equal(a.view(u), b.view(u), out=eq)
    return bool(eq.all())


def _to_keras(cell, w_ih, w_hh, b_ih, b_hh):
    """torch parameters of one layer and direction (detached) -> fastrnn weights [W, R(, b)] (numpy arrays).

    W and R are new memory, except that a weight whose transpose is already C-contiguous (input_size 1, or a
    parameter stored transposed) is used in place: kernels never write to their inputs.
    """
    if cell == "gru":
        weights = [_gru_weight_to_keras(w_ih), _gru_weight_to_keras(w_hh)]
        if b_ih is not None:
            weights.append(torch.stack([_gru_swap(b_ih), _gru_swap(b_hh)]))
    else:
        weights = [w_ih.t().contiguous(), w_hh.t().contiguous()]
        if b_ih is not None:
            weights.append(b_ih + b_hh)
    return [w.numpy() for w in weights]


# ---------------------------------------------------------------------------------------------------------------
# One layer and direction: plain call (inference) and autograd Function (training)
# ---------------------------------------------------------------------------------------------------------------

class _Call:
    """The fixed arguments of one layer-direction call, shared by the plain and the autograd path."""
    __slots__ = ("cell", "activation", "reverse", "lengths", "backend", "weights", "backend_used")

    def __init__(self, cell, activation, reverse, lengths, backend, weights):
        self.cell, self.activation, self.reverse = cell, activation, reverse
        self.lengths, self.backend, self.weights, self.backend_used = lengths, backend, weights, None

    def forward(self, x, h0, c0, training):
        states = None if h0 is None else ([_np(h0), _np(c0)] if self.cell == "lstm" else [_np(h0)])
        out = ops.rnn_forward(self.cell, _np(x), self.weights, states, self.lengths, reverse=self.reverse,
                              activation=self.activation, training=training, backend=self.backend,
                              check_finite=False)  # the module checked its arguments (or was told not to)
        self.backend_used = out.backend
        return out


class _RNNFunction(torch.autograd.Function):
    """One layer and direction: (x (B,T,K), h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y (B,T,H), h_T(, c_T)).

    h0 / c0 / biases may be None. The parameters are inputs for autograd's sake; forward runs on their conversion
    `call.weights`, made just before. Forward keeps fastrnn's training tape, backward is ops.rnn_backward.
    """

    @staticmethod
    def forward(ctx, call, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        out = call.forward(x, h0, c0, training=True)
        ctx.call, ctx.out = call, out
        # The tape reads x's memory, and W / R may share a weight's (_to_keras): saving them makes torch report an
        # in-place change before backward, as torch.nn does.
        ctx.save_for_backward(x, w_ih, w_hh)
        ctx.set_materialize_grads(False)
        return tuple(torch.from_numpy(a) for a in (out.outputs, *out.states))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *d_states):
        ctx.saved_tensors  # noqa: B018 -- raises if x or a weight was modified in place since forward
        cell, need = ctx.call.cell, ctx.needs_input_grad
        g = ops.rnn_backward(ctx.out, _np(dy), [_np(d) for d in d_states], check_finite=False)
        dx = torch.from_numpy(g.dx) if need[1] else None
        dh0 = torch.from_numpy(g.d_initial_states[0]) if need[2] else None
        dc0 = torch.from_numpy(g.d_initial_states[1]) if need[3] else None
        dW, dR = torch.from_numpy(g.d_weights[0]), torch.from_numpy(g.d_weights[1])
        # in the parameters' (contiguous) layout: autograd then keeps them as .grad, or adds them fast
        to_torch = _gru_weight_to_torch if cell == "gru" else (lambda d: d.t().contiguous())
        dw_ih = to_torch(dW) if need[4] else None
        dw_hh = to_torch(dR) if need[5] else None
        db_ih = db_hh = None
        if len(g.d_weights) == 3:
            db = torch.from_numpy(g.d_weights[2])
            if cell == "gru":
                db_ih = _gru_swap(db[0]) if need[6] else None
                db_hh = _gru_swap(db[1]) if need[7] else None
            else:  # b = b_ih + b_hh: both get db, in separate memory (autograd may keep each one as a .grad)
                db_ih = db if need[6] else None
                db_hh = (db.clone() if need[6] else db) if need[7] else None
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------

class RNNBase(torch.nn.Module):
    """The shared part of RNN, LSTM and GRU: torch.nn.RNNBase's arguments, parameters and forward contract."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto", check_finite=True,
                 cache_weights=True):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}; got {mode!r}")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             f"element being zeroed; got {dropout!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero; got {value}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size != 0:
            raise ValueError(f"proj_size must be 0: fastrnn has no LSTM projections; got {proj_size!r}")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"fastrnn.torch modules run on the CPU only; got device={device!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
        _checks.choice("backend", backend, ops.BACKENDS)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)

        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.proj_size = 0
        self.backend = backend
        self.check_finite = _checks.boolean("check_finite", check_finite)
        self.cache_weights = _checks.boolean("cache_weights", cache_weights)
        self._weight_cache = {}   # layer-direction index -> (versions, snapshots, fastrnn weights); see _weights
        self.backend_used = None  # the fastrnn backend that ran the last forward

        self._cell, self._activation, gates = _MODES[mode]
        num_directions = 2 if bidirectional else 1
        factory = dict(device=torch.device("cpu"), dtype=dtype)
        self._flat_weights_names, self._all_weights = [], []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input = self.input_size if layer == 0 else self.hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gates * hidden_size, layer_input)),
                          ("weight_hh", (gates * hidden_size, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gates * hidden_size,)), ("bias_hh", (gates * hidden_size,))]
                names = []
                for stem, shape in shapes:
                    name = f"{stem}_l{layer}{suffix}"
                    setattr(self, name, torch.nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # torch.nn.RNNBase API ---------------------------------------------------------------------------------------

    def reset_parameters(self):
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, in torch's order (same seed, same
        weights as torch.nn)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self):
        """No-op, for code written for torch.nn (the parameters are never flattened here)."""

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # forward --------------------------------------------------------------------------------------------------

    def _weights(self, k, params, use_cache):
        """fastrnn weights [W, R(, b)] of layer-direction k from its torch parameters (numpy, canonical layout).

        A conversion is a transposing copy, so for weights that are not being trained (use_cache: no grad, or
        frozen parameters) it is kept with a snapshot of the parameters it came from, and reused while each
        parameter has the same version counter and the same bits. The bit comparison (a streaming pass, about a
        third of a transpose's time on warm memory) is what makes the cache exact: writes through `.data` or
        numpy views do not bump `_version`. Training converts every call (each optimizer step would miss).
        cache_weights=False turns the cache off; it holds two extra copies of the weights.
        """
        names = self._all_weights[k]
        params = [p.detach() for p in params]
        srcs = [p.numpy() for p in params]
        cache = use_cache and self.cache_weights
        if cache:
            versions = tuple(p._version for p in params)
            entry = self._weight_cache.get(k)
            if entry is not None and entry[0] == versions and all(map(_same_bits, entry[1], srcs)):
                return entry[2]
        if self.check_finite:
            for name, a in zip(names, srcs):
                _finite(name, a)
        weights = _to_keras(self._cell, *params, *([None, None] if len(params) == 2 else []))
        if cache:
            self._weight_cache[k] = (versions, [a.copy() for a in srcs], weights)  # replaced whole: thread-safe
        else:
            self._weight_cache.pop(k, None)
        return weights

    def _apply(self, *args, **kwargs):  # .to(), .double(), ...: new parameters, the cache is stale
        self._weight_cache = {}
        return super()._apply(*args, **kwargs)

    def __getstate__(self):  # pickle / deepcopy without the cache
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_weight_cache"] = {}
        return state

    def _check_params(self):
        dtype = None
        for name in self._flat_weights_names:
            p = getattr(self, name)
            if p.device.type != "cpu":
                raise ValueError(f"fastrnn.torch modules run on the CPU only; {name} is on {p.device} "
                                 "(move the module with .cpu())")
            if p.dtype not in _DTYPES:
                raise TypeError(f"fastrnn.torch modules compute in float32 or float64; {name} is {p.dtype}")
            if dtype is not None and p.dtype != dtype:
                raise TypeError(f"all parameters must have one dtype; {name} is {p.dtype}, "
                                f"{self._flat_weights_names[0]} is {dtype}")
            dtype = p.dtype
        return dtype

    def _check_tensor(self, name, t, dtype):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"fastrnn.torch modules run on the CPU only; {name} is on {t.device}")
        if t.dtype != dtype:
            raise TypeError(f"{name} must have the parameters' dtype {dtype}; got {t.dtype}")

    def _initial_states(self, hx, batch, unbatched, dtype):
        """hx -> [h0] / [h0, c0] of shape (num_layers*num_directions, B, H), or None."""
        if hx is None:
            return None
        n_states = 2 if self._cell == "lstm" else 1
        if n_states == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx for LSTM must be a tuple (h_0, c_0) of tensors; got "
                                + (f"a {type(hx).__name__} of length {len(hx)}" if isinstance(hx, (tuple, list))
                                   else type(hx).__name__))
            names, tensors = ("h_0", "c_0"), list(hx)
        else:
            names, tensors = ("hx",), [hx]
        LD = self.num_layers * (2 if self.bidirectional else 1)
        want = (LD, self.hidden_size) if unbatched else (LD, batch, self.hidden_size)
        what = (f"(num_layers*num_directions={LD}, hidden_size={self.hidden_size}) for unbatched 2-D input"
                if unbatched else
                f"(num_layers*num_directions={LD}, batch={batch}, hidden_size={self.hidden_size})")
        states = []
        for name, t in zip(names, tensors):
            self._check_tensor(name, t, dtype)
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must have shape {what}; got shape {tuple(t.shape)}")
            if self.check_finite:
                _finite(name, t)
            states.append(t.unsqueeze(1) if unbatched else t)
        return states

    def forward(self, input, hx=None):
        dtype = self._check_params()
        packed = isinstance(input, PackedSequence)
        if packed:
            self._check_tensor("input", input.data, dtype)
            x, lengths_t = pad_packed_sequence(input, batch_first=True)   # (B, T, I), rows in the caller's order
            lengths, unbatched = lengths_t.numpy().astype(np.int64), False
        else:
            self._check_tensor("input", input, dtype)
            if input.dim() not in (2, 3):
                raise ValueError(f"input must be 3-D ({'batch, seq' if self.batch_first else 'seq, batch'}, "
                                 f"input_size) or 2-D (seq, input_size) for unbatched input; got shape "
                                 f"{tuple(input.shape)} ({input.dim()}-D)")
            unbatched, lengths = input.dim() == 2, None
            x = input.unsqueeze(0) if unbatched else (input if self.batch_first else input.transpose(0, 1))
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features in its last dimension; "
                             f"got shape {tuple((input.data if packed else input).shape)}")
        if self.check_finite:
            _finite("input", input.data if packed else input)
        states = self._initial_states(hx, x.shape[0], unbatched, dtype)
        y, finals = self._run_layers(x, states, lengths)

        n_states = 2 if self._cell == "lstm" else 1
        finals = [torch.stack([f[k] for f in finals]) for k in range(n_states)]  # (L*D, B, H) each
        if packed:
            output = self._pack(y, input, lengths_t)
        elif unbatched:
            output, finals = y.squeeze(0), [f.squeeze(1) for f in finals]
        else:
            output = y if self.batch_first else y.transpose(0, 1).contiguous()
        return output, (tuple(finals) if n_states == 2 else finals[0])

    def _run_layers(self, x, states, lengths):
        """The stack on batch-major x (B, T, I): -> y (B, T, D*H), [(h_T(, c_T)) per layer and direction].

        A layer-direction runs as an autograd Function when something it reads needs a gradient, else as a plain
        inference call (no tape): a frozen first layer under a trained one costs no backward.
        """
        num_directions = 2 if self.bidirectional else 1
        grad_mode = torch.is_grad_enabled()
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                h0 = None if states is None else states[0][k]
                c0 = None if states is None or len(states) == 1 else states[1][k]
                params = [getattr(self, name) for name in self._all_weights[k]]
                # Cache conversions only of weights that no optimizer is updating (every step would miss).
                frozen = not (grad_mode and any(p.requires_grad for p in params))
                need_grad = not frozen or (grad_mode and any(t is not None and t.requires_grad for t in (x, h0, c0)))
                call = _Call(self._cell, self._activation, direction == 1, lengths, self.backend,
                             self._weights(k, params, use_cache=frozen))
                if need_grad:
                    y, *fin = _RNNFunction.apply(call, x, h0, c0, *params, *([None, None] if not self.bias else []))
                else:
                    out = call.forward(x, h0, c0, training=False)
                    y, fin = torch.from_numpy(out.outputs), [torch.from_numpy(s) for s in out.states]
                self.backend_used = call.backend_used
                outputs.append(y)
                finals.append(fin)
            x = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.dropout, training=True)
        return x, finals

    @staticmethod
    def _pack(y, packed_input, lengths):
        """Padded (B, T, F) output in the caller's row order -> a PackedSequence laid out like packed_input."""
        sorted_indices = packed_input.sorted_indices
        if sorted_indices is not None:
            y, lengths = y.index_select(0, sorted_indices), lengths[sorted_indices]
        data = pack_padded_sequence(y, lengths, batch_first=True, enforce_sorted=True).data
        return PackedSequence(data, packed_input.batch_sizes, sorted_indices, packed_input.unsorted_indices)


class RNN(RNNBase):
    """torch.nn.RNN on fastrnn: RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend='auto',
    check_finite=True). forward(input, hx=None) -> (output, h_n)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", check_finite=True,
                 cache_weights=True):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend, check_finite=check_finite, cache_weights=cache_weights)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh" else "")


class LSTM(RNNBase):
    """torch.nn.LSTM on fastrnn: LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *, backend='auto', check_finite=True).
    forward(input, hx=None) with hx = (h_0, c_0) -> (output, (h_n, c_n)). proj_size must be 0."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto", check_finite=True,
                 cache_weights=True):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend, check_finite=check_finite,
                         cache_weights=cache_weights)


class GRU(RNNBase):
    """torch.nn.GRU on fastrnn: GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend='auto', check_finite=True).
    forward(input, hx=None) -> (output, h_n)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", check_finite=True,
                 cache_weights=True):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend=backend, check_finite=check_finite, cache_weights=cache_weights)
