"""The functional API: validated forward and backward of one recurrent layer, and the one dispatch table.

    out = rnn_forward("lstm", x, [W, R, b], training=True)      # out.outputs (B,T,U), out.states (hT, cT)
    grads = rnn_backward(out, d_outputs, d_states)                # grads.dx, grads.d_initial_states, grads.d_weights

`weights` is the Keras list: [kernel W (D, G*U), recurrent_kernel R (U, G*U), bias b] (no bias when the layer has
none; GRU reset_after=True has b of shape (2, 3U)). Outputs keep input positions even with `reverse=True`
(the backward half of a Bidirectional); layers flip them for Keras `go_backwards`.

Every argument is checked here, before compiled code runs. Kernels (fastrnn.kernels) receive C-contiguous arrays of
one float dtype, int64 lengths, preallocated outputs and workspaces; see kernels/README.md.
"""
import importlib
import threading
from dataclasses import dataclass, field

import numpy as np
# Load SciPy's BLAS now, not lazily with the first kernel: threadpoolctl can only limit the BLAS pools that are
# already loaded, so a `threadpool_limits(1)` around the first call would otherwise miss the kernels' BLAS.
import scipy.linalg.cython_blas  # noqa: F401

from . import _checks, _column_split, _recycle, kernels, reference, threads

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
N_STATES = {"simple_rnn": 1, "lstm": 2, "gru": 1}
BACKENDS = ("auto", "numpy", "numba", "cython")
# "auto" takes the first of these that loads. Numba is as fast or faster than Cython at nearly every point of the
# benchmark grid (units 128-512, batch 1-64, both modes; README), so it comes first.
COMPILED_BACKENDS = ("numba", "cython")
ACTIVATIONS = ("tanh", "relu")

# Training workspaces of the compiled kernels: name and width in units of U, shape (B, T, width*U).
WORKSPACES = {
    "simple_rnn": (("ws_hprev", 1), ("ws_h", 1)),
    "lstm": (("ws_hprev", 1), ("ws_cprev", 1), ("ws_gates", 4), ("ws_c", 1)),
    "gru": (("ws_hprev", 1), ("ws_gates", 3), ("ws_vh", 1)),
}


@dataclass
class Problem:
    """One validated call: arrays of one dtype, every optional argument filled in."""
    cell: str
    x: np.ndarray
    W: np.ndarray
    R: np.ndarray
    b: np.ndarray          # (G*U,) or (2, 3U) for GRU reset_after; zeros when the layer has no bias
    has_bias: bool
    initial_states: tuple  # (h0,) or (h0, c0), each (B, U)
    lengths: np.ndarray    # (B,) int64
    reverse: bool
    activation: str
    reset_after: bool
    # PackedWeights of W and R (a frozen layer's), or None: the kernels pack them on every call where that pays.
    # Only for W and R exactly as they are here: nothing can tell a stale copy.
    packed: object = None

    @property
    def shape(self):
        B, T, D = self.x.shape
        return B, T, D, self.R.shape[0]


@dataclass
class RNNOutput:
    outputs: np.ndarray    # (B, T, U): y[b, t] for every input position, zeros past a row's length
    states: tuple          # final states (hT,) or (hT, cT)
    backend: str           # the backend that ran
    problem: Problem = field(repr=False)
    tape: object = field(default=None, repr=False)  # what backward needs; None in inference mode


@dataclass
class RNNGradients:
    dx: np.ndarray
    d_initial_states: tuple
    d_weights: list        # same order and shapes as the weights list


# ---------------------------------------------------------------------------------------------------------------
# Kernels: the reference and the compiled modules behind one interface
# ---------------------------------------------------------------------------------------------------------------

class ReferenceKernel:
    """Runs fastrnn.reference (also used for degenerate shapes: zero batch, timesteps or features)."""
    name = "numpy"

    def __init__(self, cell):
        self.cell = cell
        self.fwd = getattr(reference, cell + "_forward")
        self.bwd = getattr(reference, cell + "_backward")

    def available(self):
        return True

    def forward(self, p, training):
        opts = {}
        if p.cell == "simple_rnn":
            opts["activation"] = p.activation
        if p.cell == "gru":
            opts["reset_after"] = p.reset_after
        y, states, cache = self.fwd(p.x, p.W, p.R, p.b, *p.initial_states, lengths=p.lengths, reverse=p.reverse,
                                    training=training, **opts)
        return y, tuple(states), cache

    def backward(self, p, tape, dy, d_states):
        g = self.bwd(tape, dy, d_states)
        d_init = (g["dh0"], g["dc0"]) if p.cell == "lstm" else (g["dh0"],)
        return g["dx"], d_init, g["dW"], g["dR"], g["db"]


class CompiledKernel:
    """A kernels/<backend>_<cell> module, imported on first use (Numba loads its on-disk cache then)."""

    def __init__(self, backend, cell):
        self.name, self.cell = backend, cell
        self.module_name = f"fastrnn.kernels.{backend}_{cell}"
        self._module, self._error = None, None
        self._lock = threading.Lock()

    def available(self):
        return self._load() is not None

    def unavailable_reason(self):
        self._load()
        return self._error

    def _load(self):
        if self._module is None and self._error is None:
            with self._lock:
                if self._module is None and self._error is None:
                    try:
                        if self.name == "cython":  # the instruction-set variant for this CPU (fastrnn.kernels)
                            self._module = kernels.cython_module(f"cython_{self.cell}")
                        else:
                            self._module = importlib.import_module(self.module_name)
                    except ImportError as exc:  # e.g. Cython extensions not built, numba missing
                        self._error = f"{self.module_name}: {exc}"
        return self._module

    def blocks(self, p, passes):
        """Row boundaries [0, b1, ..., B] of the blocks a call runs on fastrnn's threads (fastrnn.threads), or None
        to run it whole: one thread, or too little work per block to pay for the handoff. `passes`: the call's
        matmul work in forward passes (forward 1, backward 2)."""
        B, T, D, U = p.shape
        if B < 2 * threads.MIN_ROWS_PER_BLOCK:  # first: the cheapest test, and what every step-loop call meets
            return None
        n = threads.kernel_threads()
        if n <= 1:
            return None
        n = threads.plan_blocks(n, B, passes * forward_flops(p.cell, (B, T, D, U)))
        if n <= 1:
            return None
        bounds = threads.split_rows(p.lengths, T, n)
        return bounds if len(bounds) > 2 else None

    def forward(self, p, training):
        mod = self._module or self._load()
        B, T, D, U = p.shape
        dt = p.x.dtype
        if training:
            y, finals, ws = training_outputs(p.cell, B, T, U, dt)
        else:
            y = np.empty((B, T, U), dt)
            # (a generator expression here would cost ~0.6 us of a ~10 us step call)
            finals = (np.empty((B, U), dt), np.empty((B, U), dt)) if p.cell == "lstm" else (np.empty((B, U), dt),)
            ws = _NO_WORKSPACE[dt][p.cell]  # ignored in inference (kernels/README.md): one shared empty array
        bounds = self.blocks(p, 1)
        packed = p.packed.whole if (p.packed is not None and self.name == "cython") else None
        if bounds is None:  # the whole batch on this thread: no closure, no handoff (a T=1 call costs ~10 us)
            _kernel_forward(mod, p, training, p.x, p.lengths, p.initial_states, (y, *finals), ws, packed)
        elif self.name == "cython" and p.cell in ROW_BLOCK_CELLS and not training:
            # Inference: the blocks handed to the kernel's threads in C (kernels/README.md, "Row blocks"). Training
            # keeps the Python pool for both passes (its backward splits there; mixing the pools measured no gain).
            _kernel_forward(mod, p, training, p.x, p.lengths, p.initial_states, (y, *finals), ws, packed,
                            np.asarray(bounds, np.int64), threads.kernel_threads())
        else:
            def run(k):
                # Rows r of every batch-major array are a kernel problem of their own (kernels/README.md).
                r = slice(bounds[k], bounds[k + 1])
                _kernel_forward(mod, p, training, p.x[r], p.lengths[r], tuple(s[r] for s in p.initial_states),
                                tuple(a[r] for a in (y, *finals)), tuple(a[r] for a in ws) if training else ws,
                                packed)

            threads.run_blocks(run, len(bounds) - 1)
        return y, finals, (ws if training else None)

    def backward(self, p, ws, dy, d_states):
        mod = self._module or self._load()
        bounds = self.blocks(p, 2)
        # Weight gradients are sums over rows: block 0 writes the results, every other block its own buffers,
        # added to them afterwards in block order (deterministic for a given split).
        dx, d_init, wgrads = gradient_arrays(p, 1 if bounds is None else len(bounds) - 1)
        if bounds is None:
            _kernel_backward(mod, p, p.x, p.lengths, ws, (dy, *d_states), (dx, *d_init) + wgrads[0])
        else:
            def run(k):
                r = slice(bounds[k], bounds[k + 1])
                _kernel_backward(mod, p, p.x[r], p.lengths[r], tuple(a[r] for a in ws),
                                 tuple(a[r] for a in (dy, *d_states)), tuple(a[r] for a in (dx, *d_init)) + wgrads[k])

            threads.run_blocks(run, len(bounds) - 1)
        total = wgrads[0]
        for other in wgrads[1:]:
            for acc, part in zip(total, other):
                acc += part
        dW, dR = total[0], total[1]
        if p.cell == "gru":
            db = np.stack([total[2], total[3]]) if p.reset_after else total[2]
        else:
            db = total[2]
        return dx, d_init, dW, dR, db


def training_outputs(cell, B, T, U, dtype):
    """(y, finals, ws) of a training forward: y (B, T, U), the final states ((B, U) each), and the cell's
    workspaces (training_workspaces; uninitialized: the forward writes every element). y and the workspaces are
    reused once the caller has dropped them (fastrnn._recycle: a fresh block's pages are faulted in one by one on
    their first write); y has a block of its own and the states are plain arrays, so that results a caller keeps
    hold no more memory than themselves."""
    y, = _recycle.arrays([((B, T, U), dtype)])
    finals = tuple(np.empty((B, U), dtype) for _ in range(N_STATES[cell]))
    return y, finals, training_workspaces(cell, B, T, U, dtype)


def training_workspaces(cell, B, T, U, dtype):
    """The workspaces of a training forward (WORKSPACES), as views of one block (fastrnn._recycle), uninitialized:
    the forward writes every element (zeros at padded positions; kernels/README.md), so zeroing them first was a
    redundant pass over the largest arrays of the call (LSTM: 7 x B x T x U)."""
    return tuple(_recycle.arrays([((B, T, w * U), dtype) for _, w in WORKSPACES[cell]]))


def gradient_arrays(p, n_wgrads=1):
    """Room for the gradients of problem p: dx (B, T, D), the initial states' ((B, U) each), and n_wgrads sets of
    weight gradients (dW, dR, db; GRU: db_in, db_rec), the first set the results. dx, dW and dR have recycled
    blocks of their own (as training_outputs' y); the other sets, summed into the first and dropped, share one."""
    B, T, D, U = p.shape
    dt = p.x.dtype
    GU = GATES[p.cell] * U
    n_db = 2 if p.cell == "gru" else 1
    dx, = _recycle.arrays([((B, T, D), dt)])
    d_init = tuple(np.empty((B, U), dt) for _ in range(N_STATES[p.cell]))
    (dW,), (dR,) = _recycle.arrays([(p.W.shape, dt)]), _recycle.arrays([(p.R.shape, dt)])
    sets = [(dW, dR) + tuple(np.empty(GU, dt) for _ in range(n_db))]
    if n_wgrads > 1:
        per_set = [(p.W.shape, dt), (p.R.shape, dt)] + [((GU,), dt)] * n_db
        rest = _recycle.arrays(per_set * (n_wgrads - 1))
        sets += [tuple(rest[i * len(per_set):(i + 1) * len(per_set)]) for i in range(n_wgrads - 1)]
    return dx, d_init, sets


ROW_BLOCK_CELLS = ("lstm", "simple_rnn", "gru")


def _kernel_forward(mod, p, training, x, lengths, states, out, ws, packed=None, bounds=None, n_threads=1):
    """One forward kernel call of problem p on rows given by x, lengths, states, out (y and finals) and ws;
    packed: PackedWeights.whole for a Cython module, else None (Numba's kernels take no such argument)."""
    extra = () if packed is None else (packed,)
    if bounds is not None:
        extra = (packed, bounds, n_threads)
    if p.cell == "lstm":
        mod.lstm_forward(x, p.W, p.R, p.b, states[0], states[1], lengths, p.reverse, training, *out, *ws, *extra)
    elif p.cell == "simple_rnn":
        mod.simple_rnn_forward(x, p.W, p.R, p.b, states[0], lengths, p.reverse, p.activation == "relu", training,
                               *out, *ws, *extra)
    else:
        b_in, b_rec = (p.b[0], p.b[1]) if p.reset_after else (p.b, np.zeros_like(p.b))
        mod.gru_forward(x, p.W, p.R, b_in, b_rec, states[0], lengths, p.reverse, p.reset_after, training, *out, *ws,
                        *extra)


class PackedWeights:
    """W and R, as check_weights returned them, packed once for the Cython kernels: Problem.packed of inference
    calls on weights that stay as they are (a frozen layer's), which then skip the kernels' own packing of W and R
    on every call (kernels/README.md, "Packed weights"). `whole`: for the whole-batch kernel (None where it is not
    built); for_threads(n): for the column-split kernel on n threads, packed at its first use."""

    def __init__(self, cell, W, R, reset_after=True):
        self.cell, self.W, self.R, self.reset_after = cell, W, R, reset_after
        kernel = KERNELS[(cell, "cython", W.dtype)]
        mod = kernel._module or kernel._load()
        if mod is None:
            self.whole = None
        elif cell == "gru":
            self.whole = mod.gru_pack(W, R, reset_after)
        else:
            self.whole = getattr(mod, cell + "_pack")(W, R)
        self._split = {}

    def for_threads(self, n):
        packed = self._split.get(n)
        if packed is None:  # (two threads may both pack it the first time: equal arrays, either is kept)
            packed = self._split[n] = _column_split.pack(self.cell, self.W, self.R, n, self.reset_after)
        return packed


def _kernel_backward(mod, p, x, lengths, ws, grads, out):
    """One backward kernel call of problem p on rows given by x, lengths, ws, grads (dy and the final states'
    gradients) and out (dx, the initial states' gradients, then the weight gradients of these rows)."""
    if p.cell == "lstm":
        mod.lstm_backward(x, p.W, p.R, lengths, p.reverse, *ws, *grads, *out)
    elif p.cell == "simple_rnn":
        mod.simple_rnn_backward(x, p.W, p.R, lengths, p.reverse, p.activation == "relu", *ws, *grads, *out)
    else:
        mod.gru_backward(x, p.W, p.R, lengths, p.reverse, p.reset_after, *ws, *grads, *out)


# Inference passes the kernels empty workspaces (they ignore them; size 0, nothing to write): shared, per dtype and
# cell. Writable, because the Numba signatures type workspaces as outputs.
_NO_WORKSPACE = {}
for _dt in _checks.FLOAT_DTYPES:
    _empty = np.zeros((0, 0, 0), _dt)
    _NO_WORKSPACE[_dt] = {cell: (_empty,) * len(ws) for cell, ws in WORKSPACES.items()}
del _dt, _empty

# The one dispatch table: (cell, backend, dtype) -> kernel.
KERNELS = {}
for _cell in GATES:
    _compiled = {name: CompiledKernel(name, _cell) for name in COMPILED_BACKENDS}
    for _dt in _checks.FLOAT_DTYPES:
        KERNELS[(_cell, "numpy", _dt)] = ReferenceKernel(_cell)
        for _name, _kernel in _compiled.items():
            KERNELS[(_cell, _name, _dt)] = _kernel
del _cell, _compiled, _dt, _name, _kernel


def available_backends():
    """{backend: None if usable, else the reason it is not} for the compiled backends, plus numpy."""
    out = {"numpy": None}
    for name in COMPILED_BACKENDS:
        k = KERNELS[("lstm", name, np.dtype(np.float32))]
        out[name] = None if k.available() else k.unavailable_reason()
    return out


# "auto" takes the Cython kernels, Numba's where they are not built. Measured here, 1 thread, float32, side by side:
# from ~10 MFLOP of matmuls per call Cython (packed products, gate math built for the CPU) is 1.05-2.3x as fast
# (LSTM 128/16/100 1.12x, 1024/16 1.9x; batch-1 T=100: 1.05-1.4x). Below, since its entries take plain ndarrays
# (kernels/array_args.pxd, ~0.7 us a call against Numba's ~2.3 us dispatch), it was faster at 77 of 90 small
# shapes (T = 1-100, units 32-128, batch 1-16): inference 0.52-0.98x Numba's time, forward + backward 0.60-0.97x.
# Slower: 5 steps of 128 units, where it packs R for 5 uses (1.14-1.20x), and batch 16-64 at T=1 (1.02-1.15x).
COMPILED_PREFERENCE = ("cython", "numba")


def forward_flops(cell, shape):
    """Matmul flops of one forward call of shape (B, T, D, U): the input projection (B*T, D) x (D, G*U) and the
    per-step products (B, U) x (U, G*U), 2 * B * T * (D + U) * G * U."""
    B, T, D, U = shape
    return 2.0 * B * T * (D + U) * GATES[cell] * U


def select_kernel(cell, backend, dtype, shape):
    """The kernel that runs `cell` for `backend` ("auto": the first of COMPILED_PREFERENCE that loads) on calls of
    this (B, T, D, U)."""
    _checks.choice("backend", backend, BACKENDS)
    B, T, D, U = shape
    if B == 0 or T == 0 or D == 0:
        return KERNELS[(cell, "numpy", dtype)]  # nothing to compile for: empty loops or an input-free recurrence
    if backend != "auto":
        kernel = KERNELS[(cell, backend, dtype)]
        if not kernel.available():
            raise RuntimeError(f"backend {backend!r} is not available: {kernel.unavailable_reason()}")
        return kernel
    for name in COMPILED_PREFERENCE:
        kernel = KERNELS[(cell, name, dtype)]
        if kernel.available():
            return kernel
    return KERNELS[(cell, "numpy", dtype)]


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------

def _weights_dtype(weights, dtype):
    if dtype is not None:
        return _checks.float_dtype(dtype)
    kernel_dtype = getattr(weights[0], "dtype", None) if weights else None
    for known in _checks.FLOAT_DTYPES:
        if kernel_dtype is known:  # native float32 / float64 (numpy shares these): no new dtype to build
            return known
    if kernel_dtype is not None and np.dtype(kernel_dtype).kind == "f":
        # A byte-swapped kernel ('>f8' on this machine) is float64 all the same: it must not silently drop to float32.
        native = np.dtype(kernel_dtype).newbyteorder("=")
        if native in _checks.FLOAT_DTYPES:
            return native
    return np.dtype(np.float32)


def _as_array(name, value, dtype, check_finite=True):
    """_checks.as_array whose NaN/inf error tells how to skip the check (only ops offers check_finite)."""
    return _checks.as_array(name, value, dtype, check_finite, " (pass check_finite=False to skip this check)")


def check_weights(cell, weights, dtype, x_shape, reset_after=True, check_finite=True):
    """Check [kernel, recurrent_kernel(, bias)] (a list or tuple of 2 or 3) for inputs x of `x_shape`.

    Returns (W, R, b, has_bias), arrays of `dtype`; b is zeros when there is no bias. make_problem runs it on
    every call; a layer runs it once per set of weights (its weights do not change between inference calls).
    """
    G = GATES[cell]
    R = _as_array("recurrent_kernel", weights[1], dtype, check_finite)
    _checks.check_rank("recurrent_kernel", R, 2, lambda: f"(units, {G}*units)")
    U = R.shape[0]
    if U == 0:
        raise ValueError(f"recurrent_kernel must have shape (units, {G}*units) with units >= 1; got shape {R.shape}")
    _checks.check_shape("recurrent_kernel", R, (U, G * U), lambda: f"(units={U}, {G}*units={G * U})")
    W = _as_array("kernel", weights[0], dtype, check_finite)
    D = x_shape[2]
    if W.ndim == 2 and W.shape[0] != D and W.shape[1] == G * U:
        raise ValueError(f"x must have shape (batch, timesteps, features={W.shape[0]}) to match kernel "
                         f"{W.shape}; got shape {tuple(x_shape)}")
    _checks.check_shape("kernel", W, (D, G * U), lambda: f"(input_dim={D}, {G}*units={G * U})")

    two_biases = cell == "gru" and reset_after
    b_shape = (2, G * U) if two_biases else (G * U,)
    has_bias = len(weights) == 3 and weights[2] is not None
    if has_bias:
        b = _as_array("bias", weights[2], dtype, check_finite)
        _checks.check_shape("bias", b, b_shape, lambda: f"(2, 3*units={G * U}) for GRU with reset_after=True"
                            if two_biases else f"({G}*units={G * U},)")
    else:
        b = np.zeros(b_shape, dtype)
    return W, R, b, has_bias


def check_initial_states(cell, initial_states, batch, units, dtype, check_finite=True):
    """None, h0, or [h0] / [h0, c0] -> a tuple of (batch, units) arrays of `dtype` (zeros for None)."""
    n = N_STATES[cell]
    if initial_states is None:
        # Fresh zeros every call: the Problem (and through it the states) is handed back in RNNOutput.
        h0 = np.zeros((batch, units), dtype)
        return (h0,) if n == 1 else (h0, np.zeros((batch, units), dtype))
    if isinstance(initial_states, np.ndarray) or not isinstance(initial_states, (list, tuple)):
        initial_states = [initial_states]
    if len(initial_states) != n:
        raise ValueError(f"initial_state must hold {n} array(s) {'[h0, c0]' if n == 2 else '[h0]'} "
                         f"for {cell}; got {len(initial_states)}")
    states = []
    for name, s in zip(("initial_state h0", "initial_state c0"), initial_states):
        if s is None:
            states.append(np.zeros((batch, units), dtype))
        else:
            s = _as_array(name, s, dtype, check_finite)
            _checks.check_shape(name, s, (batch, units), lambda: f"(batch={batch}, units={units})")
            states.append(s)
    return tuple(states)


def full_lengths(batch, timesteps):
    """lengths of a batch without padding: every row has all `timesteps` (empty + fill: np.full costs 3x more)."""
    lens = np.empty(batch, np.int64)
    lens.fill(timesteps)
    return lens


def make_problem(cell, x, weights, initial_states=None, lengths=None, reverse=False, activation="tanh",
                 reset_after=True, dtype=None, check_finite=True):
    """Check every argument and return a Problem with arrays of one float dtype."""
    _checks.choice("cell", cell, GATES)
    reverse = _checks.boolean("reverse", reverse)
    reset_after = _checks.boolean("reset_after", reset_after)
    # SimpleRNN takes tanh or relu; LSTM and GRU have tanh (their gates are sigmoids).
    _checks.choice("activation", activation, ACTIVATIONS if cell == "simple_rnn" else ("tanh",))
    if not isinstance(weights, (list, tuple)) or len(weights) not in (2, 3):
        raise TypeError("weights must be a list [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias]; "
                        f"got {type(weights).__name__}" + (f" of length {len(weights)}" if hasattr(weights, "__len__") else ""))
    dt = _weights_dtype(weights, dtype)

    x = _as_array("x", x, dt, check_finite)
    _checks.check_rank("x", x, 3, "(batch, timesteps, features)")
    B, T, D = x.shape
    W, R, b, has_bias = check_weights(cell, weights, dt, x.shape, reset_after, check_finite)
    states = check_initial_states(cell, initial_states, B, R.shape[0], dt, check_finite)
    lens = _checks.as_lengths(lengths, B, T)
    if lens is None:
        lens = full_lengths(B, T)
    return Problem(cell, x, W, R, b, has_bias, states, lens, reverse, activation, reset_after)


# ---------------------------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------------------------

def rnn_forward(cell, x, weights, initial_states=None, lengths=None, *, reverse=False, activation="tanh",
                reset_after=True, training=False, backend="auto", dtype=None, check_finite=True):
    """Run one recurrent layer over a batch of sequences.

    cell: "simple_rnn" | "lstm" | "gru".  x: (batch, timesteps, features).  weights: [W, R] or [W, R, b].
    initial_states: None, h0, or [h0] / [h0, c0], each (batch, units).  lengths: None or (batch,) ints in
    [0, timesteps] for right-padded batches.  training=True keeps what rnn_backward needs.
    dtype: float32 or float64 (default: the kernel's dtype if it is one of them, else float32).
    """
    training = _checks.boolean("training", training)
    check_finite = _checks.boolean("check_finite", check_finite)
    p = make_problem(cell, x, weights, initial_states, lengths, reverse, activation, reset_after, dtype,
                     check_finite)
    return forward_problem(p, training, select_kernel(cell, backend, p.x.dtype, p.shape), backend)


def forward_problem(p, training, kernel, backend="auto"):
    """Run a Problem whose arguments are all checked on `kernel` (select_kernel's choice for `backend`):
    rnn_forward after make_problem, or a layer that checked its own weights once and its call's arguments now
    (fastrnn.layers). `training` must be a bool."""
    if kernel.name == "cython" or (backend == "auto" and kernel.name == "numba"):
        # Small batches on several threads: the column-split kernel (fastrnn._column_split) where it pays (None
        # elsewhere, or when it is not built). It is built with the Cython backend: RNNOutput.backend says so.
        out = _column_split.maybe_forward(p, threads.get_num_threads(), training)
        if out is not None:
            return RNNOutput(out[0], tuple(out[1]), "cython", p, out[2] if training else None)
    y, states, tape = kernel.forward(p, training)
    return RNNOutput(y, tuple(states), kernel.name, p, tape if training else None)


def rnn_backward(output, d_outputs=None, d_states=None, check_finite=True):
    """Gradients of a scalar loss, given its gradients with respect to rnn_forward's outputs and final states.

    d_outputs: None or (batch, timesteps, units); d_states: None or a list like output.states (entries may be None).
    The forward must have run with training=True.
    """
    check_finite = _checks.boolean("check_finite", check_finite)
    if not isinstance(output, RNNOutput):
        raise TypeError(f"output must be the RNNOutput of rnn_forward; got {type(output).__name__}")
    if output.tape is None:
        raise ValueError("output has no saved state for backward: run rnn_forward with training=True")
    p = output.problem
    B, T, D, U = p.shape
    dt = p.x.dtype
    if d_outputs is None:
        dy = np.zeros((B, T, U), dt)
    else:
        dy = _as_array("d_outputs", d_outputs, dt, check_finite)
        _checks.check_shape("d_outputs", dy, (B, T, U), f"(batch={B}, timesteps={T}, units={U})")
    n = N_STATES[p.cell]
    if d_states is None:
        d_states = [None] * n
    elif isinstance(d_states, np.ndarray) or not isinstance(d_states, (list, tuple)):
        d_states = [d_states]
    if len(d_states) != n:
        raise ValueError(f"d_states must hold {n} array(s) for {p.cell}; got {len(d_states)}")
    ds = []
    for k, g in enumerate(d_states):
        if g is None:
            ds.append(np.zeros((B, U), dt))
        else:
            g = _as_array(f"d_states[{k}]", g, dt, check_finite)
            _checks.check_shape(f"d_states[{k}]", g, (B, U), f"(batch={B}, units={U})")
            ds.append(g)

    # A forward on the Cython backend (the column-split kernel's included) may go backward on the column-split
    # kernel too, where it pays: every backward reads the same workspaces (kernels/README.md).
    grads = None
    if output.backend == "cython":
        grads = _column_split.maybe_backward(p, output.tape, dy, tuple(ds), threads.get_num_threads())
    if grads is None:
        grads = KERNELS[(p.cell, output.backend, dt)].backward(p, output.tape, dy, tuple(ds))
    dx, d_init, dW, dR, db = grads
    d_weights = [dW, dR, db] if p.has_bias else [dW, dR]
    return RNNGradients(dx, tuple(d_init), d_weights)
