"""fastrnn's own threads: a batch is split into contiguous blocks of rows, one compiled-kernel call per block.

    fastrnn.set_num_threads(2)      # threads one layer call may use (default: the CPUs this process may run on)
    fastrnn.get_num_threads()

Why kernel-owned threads. The kernels are bound by many small GEMMs, one (batch, units) x (units, G*units)
product per time step. Letting the BLAS library thread each of them gave 1.2-1.85x (median 1.4x) from 2 threads
on the benchmark grid, and far less when the machine was busy: every step pays a fork/join inside BLAS. Rows of a batch are independent, and every array
of the kernel contract is batch-major (kernels/README.md), so rows [b0:b1] of every array form a smaller, valid
kernel problem. With n threads, ops.CompiledKernel runs such calls n at a time, each with one-thread BLAS and no
synchronisation until the end of the call: the threads meet once per call instead of once per step (2 threads:
median 1.9x over one on the grid; README "Threads").

The pool. One process-wide pool of n-1 worker threads (started on first use, daemon threads, named
"fastrnn-worker-k"). The calling thread runs block 0 itself; the workers and the caller claim the others as they
get free. A caller whose blocks no worker has picked up runs them itself, so a call never waits for a busy pool: concurrent callers (a service with many Python threads) share the same n-1 workers, never create more
threads, and degrade gracefully to running their blocks themselves. An exception in any block is raised in the
caller (the first block's, in block order) after every block has finished. Results do not depend on which thread
runs a block. The Cython inference forward is handed its block bounds instead and runs the blocks on the
column-split module's kept C threads (kernels/README.md, "Row blocks": a handoff through the GIL costs a sleeping
thread's wake-up, ~0.1 ms of a 0.7 ms call); this pool runs the Numba kernels' blocks and training calls'.

When a call is split (plan_blocks, called by ops.CompiledKernel.blocks): batch >= 2 * MIN_ROWS_PER_BLOCK and
enough matmul work (MIN_FLOPS_PER_BLOCK per block); n blocks for n threads, 2n for large batches; rows are balanced
by their active steps (split_rows). Smaller calls run whole in the calling thread. Forward results equal the
unsplit call's (see MIN_ROWS_PER_BLOCK); weight gradients are sums of per-block sums, equal to rounding and the
same on every run at a given thread count.

Side effect on SciPy's BLAS. The kernels' BLAS is SciPy's (scipy.linalg.cython_blas; with pip wheels its own
OpenBLAS in scipy.libs, a different library from NumPy's). While fastrnn's thread count is above 1, that BLAS is
kept at 1 thread, so that its threads never compete with fastrnn's: fastrnn sets it when it first runs a compiled
kernel with more than one thread and checks it again (a ~1 us call) before every call that splits a batch, which
also undoes an enclosing `threadpoolctl.threadpool_limits` that restored it. This also limits other users of
SciPy's BLAS in the process (scipy.linalg); NumPy's matmul is not affected. `set_num_threads(1)` gives SciPy's
BLAS back the thread count it had before fastrnn changed it, and fastrnn then leaves it alone (it is whatever
OpenBLAS, OPENBLAS_NUM_THREADS or threadpoolctl make it). Where SciPy links a BLAS outside its own package
(conda, distribution packages), fastrnn limits the BLAS libraries that are not NumPy's own; if NumPy and SciPy
share one, that one.

Default. FASTRNN_NUM_THREADS from the environment when set, else the number of CPUs this process may run on
(os.sched_getaffinity), like PyTorch and TensorFlow use the machine by default. A service that already runs one
call per core in its own threads gains nothing from splitting each call: call fastrnn.set_num_threads(1) there
(concurrent callers are safe either way; measured on 2 cores with 2-8 callers: 0.90-1.07x the throughput of one
thread, 95th-percentile latency up to 1.6x).
"""
import atexit
import operator
import os
import threading
from collections import deque

import numpy as np

__all__ = ["set_num_threads", "get_num_threads", "blas_thread_counts"]

ENV_VAR = "FASTRNN_NUM_THREADS"

# Splitting pays only when each block has enough work to hide what a split costs: ~100-150 us per call on this
# 2-core VM (waking a worker, the caller's wait at the end, each block's own fixed kernel costs), more on a loaded
# machine. Work is counted as the call's matmul flops, 2 * B * T * (D + U) * G * U (backward: twice that), and a
# call gets at most flops / MIN_FLOPS_PER_BLOCK blocks. Measured (forced splits, 2 threads vs 1): break-even at
# 13-20 MFLOP per call (~0.3-0.4 ms at one thread), 1.1-1.4x at 40-50 MFLOP, >= 1.6x from ~150 MFLOP.
MIN_FLOPS_PER_BLOCK = 16e6
# A block of one row turns the Numba kernels' per-step GEMM into a GEMV (other code, other rounding): every block
# gets at least this many rows, so their split forward results equal unsplit ones bit for bit. The Cython kernels'
# packed product sums a row in an order that depends on its place in a block of 4 rows (fused_blas.packed_matmul):
# split and unsplit results are equal to rounding (the same on every run at a given thread count).
MIN_ROWS_PER_BLOCK = 2
# Large batches go in BLOCKS_PER_THREAD blocks per thread, none under ROWS_PER_EXTRA_BLOCK rows. The threads claim
# blocks as they get free, which also evens out a thread that started late or was slowed by another process.
# Measured at batch 64, 2 threads: 4 blocks of 16 rows 1.8-2.6x vs 2 blocks of 32 rows 1.6-2.5x (the kernels run
# fewer rows at a better rate per row at units 512); equal within noise elsewhere.
BLOCKS_PER_THREAD = 2
ROWS_PER_EXTRA_BLOCK = 16


def plan_blocks(n_threads, batch, flops):
    """How many blocks to split a call of `batch` rows and `flops` matmul flops into on n_threads threads (1: run it
    whole). See MIN_FLOPS_PER_BLOCK, MIN_ROWS_PER_BLOCK, BLOCKS_PER_THREAD."""
    if n_threads <= 1 or batch < 2 * MIN_ROWS_PER_BLOCK:
        return 1
    n = n_threads * BLOCKS_PER_THREAD if batch >= n_threads * BLOCKS_PER_THREAD * ROWS_PER_EXTRA_BLOCK else n_threads
    return max(1, min(n, batch // MIN_ROWS_PER_BLOCK, int(flops // MIN_FLOPS_PER_BLOCK)))


def _default_num_threads():
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n
        import warnings
        warnings.warn(f"{ENV_VAR} must be a positive integer; got {env!r}: using the CPU count", RuntimeWarning)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_state_lock = threading.RLock()
_num_threads = None   # None until first asked: then the default


def get_num_threads():
    """The number of threads one compiled-kernel call may use (its caller's thread included)."""
    global _num_threads
    if _num_threads is None:
        with _state_lock:
            if _num_threads is None:
                _num_threads = _default_num_threads()
    return _num_threads


def kernel_threads():
    """get_num_threads(), for a compiled-kernel call about to run: when it is above 1, SciPy's BLAS is limited to 1
    thread before the first such call (the default thread count takes effect without set_num_threads)."""
    n = _num_threads or get_num_threads()
    if n > 1 and not _blas.limited():
        with _state_lock:
            if _num_threads > 1 and not _blas.limited():
                _blas.limit()
    return n


def set_num_threads(n):
    """Let one compiled-kernel call use up to n threads (the calling thread and n-1 pool workers).

    n > 1 keeps SciPy's BLAS (the kernels' BLAS) at 1 thread; n == 1 gives it back the thread count it had before
    fastrnn limited it (module docstring, "Side effect on SciPy's BLAS"). Returns None.
    """
    global _num_threads
    try:
        if isinstance(n, (bool, np.bool_)):
            raise TypeError
        n = operator.index(n)  # int, numpy integers; not float, str, None
    except TypeError:
        raise TypeError(f"set_num_threads: n must be a positive integer; got {type(n).__name__} {n!r}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer (>= 1); got {n}")
    with _state_lock:
        _num_threads = n
        _pool.resize(n - 1)
        if n == 1:
            _blas.restore()
        else:
            _blas.limit()


# ---------------------------------------------------------------------------------------------------------------
# SciPy's BLAS
# ---------------------------------------------------------------------------------------------------------------

def _package_dirs(module_name):
    """The directories a wheel puts a package's shared libraries in: the package, <name>.libs, <name>/.dylibs."""
    import importlib
    mod = importlib.import_module(module_name)
    pkg = os.path.dirname(os.path.realpath(mod.__file__))
    return (pkg + os.sep, pkg + ".libs" + os.sep)


def _kernel_blas_controllers():
    """threadpoolctl controllers of the BLAS the kernels call: SciPy's own; else the loaded BLAS libraries that are
    not NumPy's; else all loaded BLAS libraries (NumPy and SciPy share one)."""
    import scipy.linalg.cython_blas  # noqa: F401  (threadpoolctl sees only loaded libraries)
    from threadpoolctl import ThreadpoolController
    blas = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
    in_dirs = lambda lc, dirs: os.path.realpath(lc.filepath).startswith(dirs)  # noqa: E731
    scipy_dirs, numpy_dirs = _package_dirs("scipy"), _package_dirs("numpy")
    return ([lc for lc in blas if in_dirs(lc, scipy_dirs)] or [lc for lc in blas if not in_dirs(lc, numpy_dirs)]
            or blas)


class _BlasLimit:
    """Keeps the kernels' BLAS at 1 thread while fastrnn's threads run; remembers what it was before."""

    def __init__(self):
        self._controllers = None
        self._saved = None      # {filepath: thread count before fastrnn first limited it}, None when not limited
        self._lock = threading.Lock()

    def controllers(self):
        if self._controllers is None:
            with self._lock:
                if self._controllers is None:
                    try:
                        self._controllers = _kernel_blas_controllers()
                    except Exception:  # no threadpoolctl support for this platform's BLAS: nothing to limit
                        self._controllers = []
        return self._controllers

    def limit(self):
        """Set the kernels' BLAS to 1 thread. Remembers the count each library had before: the first time, and again
        whenever someone else (a threadpoolctl limit exiting, say) has changed it since."""
        ctrls = self.controllers()
        with self._lock:
            saved = dict(self._saved or {})
            for lc in ctrls:
                n = lc.get_num_threads()
                if n != 1 or lc.filepath not in saved:
                    saved[lc.filepath] = n
                if n != 1:
                    lc.set_num_threads(1)
            self._saved = saved

    def ensure(self):
        """limit() unless it is in force (cheap when it is: one get_num_threads call per library)."""
        ctrls = self._controllers
        if self._saved is None or ctrls is None or any(lc.get_num_threads() != 1 for lc in ctrls):
            self.limit()

    def restore(self):
        with self._lock:
            if self._saved is None:
                return
            for lc in self._controllers or ():
                old = self._saved.get(lc.filepath)
                if old is not None and lc.get_num_threads() != old:
                    lc.set_num_threads(old)
            self._saved = None

    def limited(self):
        return self._saved is not None


_blas = _BlasLimit()


def blas_thread_counts():
    """{library path: current thread count} of the BLAS the kernels call (what set_num_threads limits)."""
    return {lc.filepath: lc.get_num_threads() for lc in _blas.controllers()}


# ---------------------------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------------------------

class _Job:
    """One call's blocks 1..n-1 (block 0 is the caller's): claimed one at a time by workers or by the caller."""
    __slots__ = ("fn", "n", "next", "unfinished", "lock", "done", "errors")

    def __init__(self, fn, n):
        self.fn, self.n = fn, n
        self.next = 1                # the next unclaimed block
        self.unfinished = n - 1      # blocks 1..n-1 not finished yet
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.errors = {}

    def claim(self):
        with self.lock:
            k = self.next
            if k >= self.n:
                return None
            self.next = k + 1
            return k

    def run(self, k):
        try:
            self.fn(k)
        except BaseException as exc:  # noqa: B902  (re-raised in the caller)
            self.errors[k] = exc
        finally:
            with self.lock:
                self.unfinished -= 1
                last = self.unfinished == 0
            if last:
                self.done.set()


class _Worker:
    __slots__ = ("thread", "stop")

    def __init__(self):
        self.thread, self.stop = None, False


class _Pool:
    def __init__(self):
        self._cv = threading.Condition(threading.Lock())
        self._queue = deque()        # jobs, one entry per block offered
        self._workers = []
        self._size = 0               # workers wanted; started lazily by run()

    def resize(self, size):
        with self._cv:
            self._size = size
            while len(self._workers) > size:
                self._workers.pop().stop = True
            self._cv.notify_all()

    def _start_workers(self):
        # called with self._cv held
        while len(self._workers) < self._size:
            w = _Worker()
            w.thread = threading.Thread(target=self._work, args=(w,), daemon=True,
                                        name=f"fastrnn-worker-{len(self._workers) + 1}")
            self._workers.append(w)
            w.thread.start()

    def _work(self, me):
        cv, queue = self._cv, self._queue
        while True:
            with cv:
                while not queue and not me.stop:
                    cv.wait()
                if me.stop:
                    return
                job = queue.popleft()
            while True:  # this job's blocks until none is left unclaimed
                k = job.claim()
                if k is None:
                    break
                job.run(k)
            job = None

    def workers(self):
        with self._cv:
            return [w.thread for w in self._workers]

    def run(self, fn, n):
        """fn(0), ..., fn(n-1), block 0 in this thread and the others in the pool (or here, when the pool is busy);
        returns after all have finished; re-raises the first block's exception."""
        if n <= 1:
            fn(0)
            return
        job = _Job(fn, n)
        with self._cv:
            if len(self._workers) < self._size:
                self._start_workers()
            offers = min(n - 1, len(self._workers))
            self._queue.extend([job] * offers)
            if offers == 1:
                self._cv.notify()
            elif offers:
                self._cv.notify(offers)
        error = None
        try:
            fn(0)
        except BaseException as exc:  # noqa: B902
            error = exc
        while True:  # the blocks no worker has started yet
            k = job.claim()
            if k is None:
                break
            job.run(k)
        job.done.wait()
        # Let go of fn (and the arrays it holds) now: a worker that has not woken yet still holds the job, and a
        # recycled block is only reused once nothing refers to its arrays (fastrnn._recycle).
        job.fn = None
        if error is None and job.errors:
            error = job.errors[min(job.errors)]
        if error is not None:
            raise error

    def _after_fork(self):
        # The child has only the thread that forked: forget the parent's workers (start new ones when needed).
        self._cv = threading.Condition(threading.Lock())
        self._queue = deque()
        self._workers = []


_pool = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool._after_fork)


@atexit.register
def _stop_workers():
    _pool.resize(0)


def run_blocks(fn, n):
    """Run fn(k) for k in range(n) on fastrnn's threads (block 0 in the calling thread); see _Pool.run.
    Keeps the kernels' BLAS at 1 thread while it runs blocks in parallel."""
    if n > 1:
        _blas.ensure()
    _pool.run(fn, n)


# ---------------------------------------------------------------------------------------------------------------
# How to split a batch
# ---------------------------------------------------------------------------------------------------------------

def split_rows(lengths, timesteps, n_blocks, min_rows=MIN_ROWS_PER_BLOCK):
    """Boundaries [0, b1, ..., B] of at most n_blocks contiguous blocks of rows with about equal work.

    A row's work: its active steps (its length: gate math, and the per-step GEMM rows) plus a quarter of the
    timesteps for its share of the input projection, which covers every position. Equal lengths give blocks of
    equal rows (+-1); every block has at least min_rows rows, so there may be fewer blocks than asked for.
    """
    B = int(lengths.shape[0])
    n = max(1, min(int(n_blocks), B // max(1, min_rows)))
    if n <= 1:
        return [0, B]
    L0 = int(lengths[0])
    if int(lengths.min()) == L0 == int(lengths.max()):
        bounds = [(k * B) // n for k in range(n + 1)]  # equal rows: sizes differ by at most one
        return bounds
    w = lengths.astype(np.float64) + 0.25 * timesteps
    cum = np.concatenate(([0.0], np.cumsum(w)))
    targets = cum[-1] * np.arange(1, n) / n
    idx = np.searchsorted(cum, targets)            # first boundary with cumulative work >= the target
    nearer = (idx > 0) & (targets - cum[np.maximum(idx - 1, 0)] < cum[idx] - targets)
    idx = np.where(nearer, idx - 1, idx)
    bounds = [0]
    for k, b in enumerate(idx.tolist()):
        after = n - 1 - k                          # blocks after this boundary, min_rows rows each
        bounds.append(min(max(b, bounds[-1] + min_rows), B - after * min_rows))
    bounds.append(B)
    return bounds
