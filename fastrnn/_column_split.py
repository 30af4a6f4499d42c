"""Small batches on several cores, each owning a slice of the units (kernels/cython_threaded.pyx).

At batch 1-4 a time step is a GEMV-like h @ R plus the gate math: too few rows to split the batch well
(fastrnn.threads splits rows from batch 4 up), but R's columns split well. With n threads, thread k owns units
[u0, u1) -- the columns of every gate that belong to them -- packs its part of W and R once per call, and runs the
whole time loop for its units; the threads meet at a spin barrier once per step (twice for GRU
reset_after=False), where each has written its part of the new h. Training: the forward also fills the
workspaces, and the backward runs BPTT the same way (thread k: the gate gradients of its units, then its units'
dh_{t-1} = dA_t R[u0:u1].T after a barrier), then the threads share dW, dR, dx and db. See the kernel module's
docstring for how.

    y, finals = forward(problem, n_threads)               # inference; problem from ops.make_problem
    y, finals, ws = forward_training(problem, n_threads)  # ws: the kernel contract's workspaces
    dx, d_init, dW, dR, db = backward(problem, ws, dy, d_states, n_threads)
    out = maybe_forward(problem, n_threads, training)     # the same, or None where it does not pay (ops calls
    grads = maybe_backward(problem, ws, dy, d_states, n_threads)   # these two)

With n_threads > 1 and a problem that qualifies (worthwhile: its shape, not timing), ops always runs this kernel,
on one thread when the cores are taken: results never depend on timing or on concurrent calls.

Results are the same bit for bit for every thread count (every column's sums run in the same order whatever
thread owns it), and equal to the single-threaded Cython kernel to float rounding (its BLAS sums in another order:
so fastrnn.set_num_threads(1) and (2) give results that differ in the last bits for the problems this takes).

When it pays (measured side by side on this 2-core VM, float32, T=100, against the single-threaded Cython kernel
and against fastrnn.threads' row split; the figures are in the report of issue 6). Handing a call to the kernel's
kept threads costs ~3 us back to back, ~40 us when they have gone to sleep (kernels/cython_threaded.pyx;
threads started per call cost 30-90 us until stop 18), and packing W's and R's columns costs about what a few
steps cost; every step then costs about half (each core streams half of R), plus a barrier (0.1-0.35 us). So:
- enough work per step: at least MIN_STEP_FLOPS_PER_THREAD of a step's matmul (2 * B * G * U^2) per thread.
  Measured at batch 1-2, T=100, 2 threads, over one thread (stop 18): LSTM 64 units 0.67x (33 KFLOP a step),
  GRU 64 0.92x (25 K), SimpleRNN 128 1.07x (33 K); GRU 96 1.22x (55 K), LSTM 96 1.38x (74 K), SimpleRNN 192
  1.36x (74 K), LSTM 64 at batch 2 1.18x (66 K); training alike (LSTM 64 0.89x, GRU 96 1.13x, LSTM 96 1.18x);
- enough steps: at least MIN_STEPS, and at least MIN_RECURRENT_FLOPS of per-step matmul work in total
  (2 * B * steps * G * U^2): with the kept threads (stop 18) GRU 128 units at T=20 (2.0 MFLOP) 1.08x, T=40 1.29x,
  LSTM 128 at T=20 (2.6 MFLOP) 1.22x (training 1.23x), SimpleRNN 256 at T=20 1.17x; earlier, threads started per
  call, break-even was at 5-10 MFLOP (batch 1: LSTM 1.3x at 128 units, 1.65-2.1x at 256-1024; GRU 1.4-2.0x;
  SimpleRNN 1.0-1.2x at 128-256, 1.9-2.0x at 512-1024);
- small batches: up to MAX_BATCH rows. At batch 4 this split beat the row split at every point measured (1.1-2.1x
  vs 1.0-1.6x over one thread, LSTM/GRU/SimpleRNN at 128-512 units). Up to LARGE_R_MAX_BATCH when R is large
  (LARGE_R_BYTES or more: each core streams half of R each step instead of all of it): at batch 8, 1.4-2.2x vs
  1.4-1.9x. With a smaller R at batch 8 the two were even (LSTM, GRU at 128 units) or the row split ahead
  (SimpleRNN at 256 units: 1.35x vs 1.6x).
- up to HUGE_R_MAX_BATCH rows when R has HUGE_R_BYTES or more (LSTM and GRU at 1024 units: 12-16 MB, which the
  row split makes each core stream whole every step). Measured with the packed products (issue 6, stop 11; T=100,
  2 threads, interleaved in one run): alone, batch 16, column split 1.83-1.95x over one thread vs row split
  1.56-1.79x at 1024 units, and 1.59-1.88x vs 1.42-1.80x at 128-512 units; batch 32 similar, batch 64 even. With
  onnxruntime's 2-thread session in the same round robin (its pool spins on the other core after each call, as
  in `fastrnn bench --peers`), the per-step barrier suffers and the row split does not: column / row speed at
  batch 16 0.79-0.90x at 128-256 units, 0.97-0.99x at 512, 1.07-1.08x at 1024; at batch 8 0.86-0.99x (256-512).
  So below HUGE_R_BYTES the limits above stand. Measured again (stop 14, `bench --peers` timing every runner
  after its own prewarm, so that the other pools sleep): batch 8-32 column / row 0.95-1.07x (LSTM, GRU,
  SimpleRNN at 256-512 units, alone and next to onnxruntime), LSTM 128 batch 16 1.15-1.26x: they still stand.
- training takes the same policy: its backward does the forward's recurrent products once more (with R.T) and its
  products over all positions split by rows and columns without a barrier. Measured (issue 6, stop 12; T=100,
  float32, forward + backward, 2 threads, interleaved in one run): batch 1, over one thread, LSTM 1.15x at 128 units,
  1.7-1.8x at 256-1024; GRU 1.2x, 1.5-2.0x; SimpleRNN 1.3-1.7x at 256-1024 (128: below MIN_STEP_FLOPS_PER_THREAD).
  Against the row split: batch 2 (which it does not split) 1.3-1.65x, batch 4 1.1-1.25x, batch 8 0.98-1.09x,
  batch 16 0.96-1.03x (LSTM, 128-512 units).

A per-step barrier needs every thread on a core of its own: a thread that the OS deschedules stalls all of them
at the next step. Measured with a busy-looping process on one of the 2 cores: column-split calls took 1.8-3x as
long as one thread (LSTM, units 128-512, batch 1, T=100). So
- while another column-split call is running, maybe_forward / maybe_backward run on the calling thread alone (no
  oversubscription by fastrnn itself; same kernel, same results);
- a call is contended when a thread spent more than CONTENDED_WAIT of it waiting in barriers (a partner was not
  running; on an idle machine the waits are 1-20% of a call). Sporadic ones happen on an idle machine too (here
  ~0.5% of calls, a partner stalled for ~0.5-1 ms: kernel threads, the hypervisor). A moving average of the
  contended calls (weight CONTENDED_WEIGHT for the newest) above CONTENDED_SHARE makes the calls of the next while
  run on one thread (BACKOFF_S, doubling while it recurs, up to BACKOFF_MAX_S); then it tries again. Sporadic
  stalls seldom get there (idle: 0-11% of calls ran alone); with the busy process, calls through ops then took
  about as long as one thread (LSTM at 128-512 units: 0.86-0.98x in the mean, 0.96-1.14x in the median).
"""
import threading
import time

import numpy as np

# Policy, measured (see module docstring).
MAX_BATCH = 4
LARGE_R_MAX_BATCH = 8
LARGE_R_BYTES = 512 * 1024
HUGE_R_MAX_BATCH = 32
HUGE_R_BYTES = 8 * 1024 * 1024
MIN_STEPS = 20
MIN_RECURRENT_FLOPS = 2e6
MIN_STEP_FLOPS_PER_THREAD = 24e3
# Contention backoff (module docstring): a call is contended when a thread waited more than CONTENDED_WAIT of it;
# when the moving average of contended calls exceeds CONTENDED_SHARE, calls run on one thread for BACKOFF_S
# (doubling while it recurs, up to BACKOFF_MAX_S).
CONTENDED_WAIT = 0.4
CONTENDED_WEIGHT = 0.25
CONTENDED_SHARE = 0.3
BACKOFF_S = 0.1
BACKOFF_MAX_S = 5.0

_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}

_lock = threading.Lock()
_in_flight = 0            # column-split calls running now (threads > 1)
_backoff_until = 0.0      # time.monotonic() before which maybe_forward runs calls on one thread
_backoff = BACKOFF_S
_contended = 0.0          # moving average of contended calls (1) among column-split calls
_module = None
_module_error = None


def kernel_module():
    """fastrnn.kernels.cython_threaded, or None when it is not built (the reason: unavailable_reason())."""
    global _module, _module_error
    if _module is None and _module_error is None:
        try:
            from . import kernels
            _module = kernels.cython_module("cython_threaded")  # the instruction-set variant for this CPU
        except ImportError as exc:
            _module_error = f"fastrnn.kernels.cython_threaded: {exc}"
    return _module


def unavailable_reason():
    kernel_module()
    return _module_error


def recurrent_flops(p, steps=None):
    """Matmul flops of the time loop: 2 * B * steps * G * U^2 (steps: by default the longest row's length)."""
    B, T, D, U = p.shape
    if steps is None:
        steps = int(p.lengths.max()) if B else 0
    return 2.0 * B * steps * _GATES[p.cell] * U * U


def worthwhile(p, n_threads):
    """Whether column splitting is expected to beat the alternatives on this problem (inference; module docstring).
    Depends only on the problem's shape, lengths and dtype, and on n_threads."""
    B, T, D, U = p.shape
    if n_threads <= 1 or B < 1 or U < 2 or T < MIN_STEPS:
        return False
    r_bytes = _GATES[p.cell] * U * U * p.x.dtype.itemsize
    max_batch = HUGE_R_MAX_BATCH if r_bytes >= HUGE_R_BYTES else LARGE_R_MAX_BATCH if r_bytes >= LARGE_R_BYTES \
        else MAX_BATCH
    if B > max_batch or 2.0 * B * _GATES[p.cell] * U * U / min(n_threads, U) < MIN_STEP_FLOPS_PER_THREAD:
        return False
    if recurrent_flops(p, T) < MIN_RECURRENT_FLOPS:  # too little work even with no padding: no need for the lengths
        return False
    steps = int(p.lengths.max())
    return steps >= MIN_STEPS and recurrent_flops(p, steps) >= MIN_RECURRENT_FLOPS


def maybe_forward(p, n_threads, training=False):
    """forward(p, n_threads) (training: forward_training) where it pays (worthwhile), else None: the caller runs
    its usual kernel (also when the kernel is not built).

    While another column-split call is running (the cores are taken) or after contention (module docstring), it
    runs on this thread alone: the same kernel, so the same bits -- results never depend on timing."""
    if not worthwhile(p, n_threads) or kernel_module() is None:
        return None
    return _run_split(lambda n: forward_training(p, n) if training else forward(p, n), n_threads)


def maybe_backward(p, ws, dy, d_states, n_threads):
    """backward(p, ws, dy, d_states, n_threads) where it pays (worthwhile: the backward's steps do the forward's
    recurrent products with R.T), else None; on one thread while the cores are taken, as maybe_forward."""
    if not worthwhile(p, n_threads) or kernel_module() is None:
        return None
    return _run_split(lambda n: backward(p, ws, dy, d_states, n), n_threads)


def _run_split(run, n_threads):
    """run(n_threads), or run(1) while another column-split call is running or after contention."""
    global _in_flight
    with _lock:
        alone = _in_flight > 0 or time.monotonic() < _backoff_until
        if not alone:
            _in_flight += 1
    if alone:
        return run(1)
    try:
        return run(n_threads)
    finally:
        with _lock:
            _in_flight -= 1


def _kernel():
    mod = kernel_module()
    if mod is None:
        raise RuntimeError(f"column-split kernel not available: {_module_error}")
    return mod


def _outputs(p):
    B, T, D, U = p.shape
    dt = p.x.dtype
    y = np.empty((B, T, U), dt)
    finals = tuple(np.empty((B, U), dt) for _ in range(2 if p.cell == "lstm" else 1))
    return y, finals


def _call(run, n, st):
    """run(n, st) -> threads used; on the calling thread alone if the system refused a thread (nothing usable was
    written then); notes contention."""
    t0 = time.perf_counter()
    used = run(n, st)
    if used < 0:
        used = run(1, st)
    if used > 1:
        _note_contention(st, time.perf_counter() - t0)


def forward(p, n_threads, stats=None):
    """Inference of problem p (ops.Problem) on min(n_threads, units) threads: (y, finals).

    y (B, T, U); finals (hT,) or (hT, cT). If a thread cannot be started, runs on the calling thread alone (same
    results). `stats`: None, or a dict that receives the kernel's counters (threads, unit bounds, barrier waits,
    PAUSE rounds, yields, sleeps per thread)."""
    mod = _kernel()
    y, finals = _outputs(p)
    _call(lambda n, st: _run(mod, p, y, finals, n, st, None), max(1, int(n_threads)), {} if stats is None else stats)
    return y, finals


def forward_training(p, n_threads, stats=None):
    """forward, keeping what backward needs: (y, finals, ws), ws the cell's workspaces (ops.training_outputs,
    the kernel contract's), which every backward takes (this module's, and the whole-batch kernels')."""
    from .ops import training_outputs   # ops imports this module
    mod = _kernel()
    B, T, D, U = p.shape
    y, finals, ws = training_outputs(p.cell, B, T, U, p.x.dtype)
    _call(lambda n, st: _run(mod, p, y, finals, n, st, ws), max(1, int(n_threads)), {} if stats is None else stats)
    return y, finals, ws


def backward(p, ws, dy, d_states, n_threads, stats=None):
    """Gradients of problem p given the training forward's workspaces ws, dy (B, T, U) and the final states'
    gradients d_states ((dhT,) or (dhT, dcT)), on min(n_threads, units) threads: (dx, d_initial_states, dW, dR, db)
    as ops.CompiledKernel.backward (db (2, 3U) for GRU reset_after=True)."""
    from .ops import gradient_arrays
    mod = _kernel()
    dx, d_init, ((dW, dR, *db),) = gradient_arrays(p)

    def run(n, st):
        if p.cell == "lstm":
            return mod.lstm_backward(p.x, p.W, p.R, p.lengths, p.reverse, *ws, dy, *d_states, dx, *d_init, dW, dR,
                                     db[0], n, st)
        if p.cell == "simple_rnn":
            return mod.simple_rnn_backward(p.x, p.W, p.R, p.lengths, p.reverse, p.activation == "relu", *ws, dy,
                                           d_states[0], dx, d_init[0], dW, dR, db[0], n, st)
        return mod.gru_backward(p.x, p.W, p.R, p.lengths, p.reverse, p.reset_after, *ws, dy, d_states[0], dx,
                                d_init[0], dW, dR, db[0], db[1], n, st)

    _call(run, max(1, int(n_threads)), {} if stats is None else stats)
    if p.cell == "gru":
        db = np.stack(db) if p.reset_after else db[0]
    else:
        db = db[0]
    return dx, d_init, dW, dR, db


def pack(cell, W, R, n_threads, reset_after=True):
    """W and R packed once for forward calls on n_threads threads (the kernel's pack_split): what
    ops.PackedWeights.for_threads holds for a frozen layer."""
    return _kernel().pack_split(W, R, n_threads, cell == "gru" and not reset_after)


def _run(mod, p, y, finals, n, st, ws=None):
    h0 = p.initial_states[0]
    packed = p.packed.for_threads(n) if p.packed is not None else None
    if p.cell == "simple_rnn":
        return mod.simple_rnn_forward(p.x, p.W, p.R, p.b, h0, p.lengths, p.reverse, p.activation == "relu",
                                      y, finals[0], n, st, ws, packed)
    if p.cell == "lstm":
        return mod.lstm_forward(p.x, p.W, p.R, p.b, h0, p.initial_states[1], p.lengths, p.reverse,
                                y, finals[0], finals[1], n, st, ws, packed)
    b_in, b_rec = (p.b[0], p.b[1]) if p.reset_after else (p.b, p.b)  # b_rec unused without reset_after
    return mod.gru_forward(p.x, p.W, p.R, b_in, b_rec, h0, p.lengths, p.reverse, p.reset_after, y, finals[0], n, st,
                           ws, packed)


def _note_contention(st, seconds):
    """Note whether a call was contended: some thread waited in barriers for more than CONTENDED_WAIT of its time
    (kernel stats: wait_ns per thread, the first wait excluded, as it also waits for the threads to start); back
    off when the moving average passes CONTENDED_SHARE."""
    global _backoff_until, _backoff, _contended
    hit = max(st.get("wait_ns", ()), default=0) * 1e-9 > CONTENDED_WAIT * seconds
    _contended += CONTENDED_WEIGHT * (hit - _contended)
    if _contended > CONTENDED_SHARE:
        _contended = 0.0
        _backoff_until = time.monotonic() + _backoff
        _backoff = min(2 * _backoff, BACKOFF_MAX_S)
    elif _contended < 0.01:
        _backoff = BACKOFF_S   # a run of clean calls: the next backoff starts small again


def reset_backoff():
    """Forget any contention backoff (tests, benchmarks)."""
    global _backoff_until, _backoff, _contended
    _backoff_until, _backoff, _contended = 0.0, BACKOFF_S, 0.0
