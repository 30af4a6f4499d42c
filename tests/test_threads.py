"""fastrnn's own threads (fastrnn/threads.py, ops.CompiledKernel): a batch split into blocks of rows, one kernel call
per block on the pool, gives the results of the unsplit call (forward bit for bit, gradients to rounding: the weight
gradients are sums over blocks); thread count validation; the pool (exceptions, concurrent callers, size); the limit
on SciPy's BLAS. Nothing here is timed (speed: README "Threads")."""
import os
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastrnn
from fastrnn import ops, threads
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, contract_workspaces, random_problem, rel_err

COMPILED = [b for b, why in ops.available_backends().items() if b != "numpy" and why is None]
DTYPES = [np.float32, np.float64]
# weight-gradient sums over blocks vs one sum over all rows: a few ulp of the result's scale
GRAD_RTOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test leaves fastrnn's thread count (and so SciPy's BLAS) as it found it."""
    before = threads.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.fixture
def split_small(monkeypatch):
    """Split even the tiny test problems (the real threshold keeps them whole)."""
    monkeypatch.setattr(threads, "MIN_FLOPS_PER_BLOCK", 1.0)


def run(cell, p, backend, training, reverse, opts):
    w = [p["W"], p["R"], p["b"]]
    out = ops.rnn_forward(cell, p["x"], w, list(p["states"]), p["lengths"], reverse=reverse, training=training,
                          backend=backend, **opts)
    assert out.backend == backend
    g = ops.rnn_backward(out, p["dy"], list(p["dstates"])) if training else None
    return out, g


def n_blocks(cell, p, backend, passes=1, **opts):
    """How many blocks ops would run this problem in at the current thread count."""
    prob = ops.make_problem(cell, p["x"], [p["W"], p["R"], p["b"]], lengths=p["lengths"], **opts)
    bounds = ops.KERNELS[(cell, backend, prob.x.dtype)].blocks(prob, passes)
    return 1 if bounds is None else len(bounds) - 1


def bit_identical(backend, lengths):
    """Whether split forward results equal unsplit ones bit for bit. Numba always runs GEMM over all rows of the
    call, and blocks have >= 2 rows (threads.MIN_ROWS_PER_BLOCK). The Cython kernels' packed product
    (fused_blas.packed_matmul) runs rows in blocks of 4 and the remainder in blocks of 1-3 rows that sum in another
    order, so a row's last bits depend on where its block starts: they equal the unsplit call to rounding."""
    return backend != "cython"


def contract_tape(out):
    return contract_workspaces(out.problem.cell, out.problem.reset_after, out.tape or ())


def assert_same_forward(a, b, exact=True):
    pairs = [(a.outputs, b.outputs), *zip(a.states, b.states), *zip(contract_tape(a), contract_tape(b))]
    for s, t in pairs:
        if exact:
            np.testing.assert_array_equal(s, t)
        else:
            assert s.dtype == t.dtype and rel_err(s, t) <= 8 * np.finfo(s.dtype).eps


def assert_close_grads(g, h, dtype):
    tol = GRAD_RTOL[dtype]
    assert rel_err(h.dx, g.dx) <= tol
    for s, t in zip(h.d_initial_states, g.d_initial_states):
        assert rel_err(s, t) <= tol
    for s, t in zip(h.d_weights, g.d_weights):
        assert s.shape == t.shape and s.dtype == t.dtype
        assert rel_err(s, t) <= tol


# ---------------------------------------------------------------------------------------------------------------
# Split == unsplit
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell,opts", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_split_equals_unsplit(split_small, cell, opts, backend, dtype, lengths, reverse):
    """Odd batch, 2 and 3 threads, training (forward + BPTT) and inference, lengths incl. 0 and T: forward bit for bit
    (see bit_identical), gradients to rounding."""
    p = random_problem(cell, 11, 7, 5, 6, dtype=dtype, seed=3, lengths=lengths, **opts)
    fastrnn.set_num_threads(1)
    assert n_blocks(cell, p, backend, **opts) == 1
    want = {training: run(cell, p, backend, training, reverse, opts) for training in (False, True)}
    for n in (2, 3):
        fastrnn.set_num_threads(n)
        assert n_blocks(cell, p, backend, **opts) == n
        for training in (False, True):
            out, g = run(cell, p, backend, training, reverse, opts)
            assert_same_forward(out, want[training][0], bit_identical(backend, p["lengths"]))
            if training:
                assert_close_grads(g, want[training][1], dtype)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell,opts", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_split_with_many_threads_and_extreme_lengths(split_small, cell, opts, backend):
    """More threads than rows allow (blocks of >= 2 rows), all-empty and one-long-row batches, batch sizes 2-9."""
    for B in range(2, 10):
        for lens in (np.zeros(B), np.r_[np.zeros(B - 1), 9], np.r_[9, np.zeros(B - 1)], np.arange(B) % 10):
            p = random_problem(cell, B, 9, 4, 5, dtype=np.float32, seed=B, lengths=list(lens.astype(int)), **opts)
            fastrnn.set_num_threads(1)
            want = run(cell, p, backend, True, False, opts)
            fastrnn.set_num_threads(8)
            assert n_blocks(cell, p, backend, **opts) == max(1, min(8, B // threads.MIN_ROWS_PER_BLOCK))
            got = run(cell, p, backend, True, False, opts)
            assert_same_forward(got[0], want[0], bit_identical(backend, p["lengths"]))
            assert_close_grads(got[1], want[1], np.float32)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell,opts", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_split_in_more_blocks_than_threads(split_small, cell, opts, backend):
    """A large batch goes in 2 blocks per thread, claimed by whichever thread is free."""
    for B, lengths in ((64, "full"), (67, "mixed")):
        p = random_problem(cell, B, 5, 3, 4, dtype=np.float64, seed=B, lengths=lengths, **opts)
        fastrnn.set_num_threads(1)
        want = run(cell, p, backend, True, True, opts)
        fastrnn.set_num_threads(2)
        assert n_blocks(cell, p, backend, **opts) == 4
        got = run(cell, p, backend, True, True, opts)
        assert_same_forward(got[0], want[0], bit_identical(backend, p["lengths"]))
        assert_close_grads(got[1], want[1], np.float64)


def test_plan_blocks():
    big, m = 1e12, threads.MIN_FLOPS_PER_BLOCK
    assert threads.plan_blocks(1, 64, big) == 1
    assert threads.plan_blocks(2, 3, big) == 1            # blocks of >= 2 rows
    assert threads.plan_blocks(2, 4, big) == 2
    assert threads.plan_blocks(3, 5, big) == 2
    assert threads.plan_blocks(2, 63, big) == 2
    assert threads.plan_blocks(2, 64, big) == 4           # 2 blocks per thread from 16 rows per block
    assert threads.plan_blocks(4, 127, big) == 4
    assert threads.plan_blocks(4, 128, big) == 8
    assert threads.plan_blocks(2, 64, 3.5 * m) == 3       # >= MIN_FLOPS_PER_BLOCK each
    assert threads.plan_blocks(2, 64, 1.9 * m) == 1


@pytest.mark.parametrize("backend", COMPILED)
def test_layer_training_step_is_the_same_with_threads(split_small, backend):
    """Through the layer API (Bidirectional LSTM over a masked batch), forward and backward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 6, 4)).astype(np.float32)
    lengths = np.array([6, 0, 3, 6, 1, 2, 6, 5, 4])
    results = []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        layer = fastrnn.Bidirectional(fastrnn.LSTM(5, return_sequences=True, backend=backend, seed=1))
        y = layer.forward(x, lengths=lengths, training=True)
        dx = layer.backward(np.ones_like(y))
        results.append((y, dx, [g.copy() for g in layer.grads]))
    (y1, dx1, g1), (y2, dx2, g2) = results
    if bit_identical(backend, lengths):
        np.testing.assert_array_equal(y1, y2)
    else:
        assert rel_err(y2, y1) <= 8 * np.finfo(np.float32).eps
    assert rel_err(dx2, dx1) < 2e-5
    for a, b in zip(g2, g1):
        assert rel_err(a, b) < 2e-5


def test_no_split_below_the_crossover_or_at_batch_one():
    fastrnn.set_num_threads(2)
    p = random_problem("lstm", 64, 3, 4, 4)
    assert n_blocks("lstm", p, COMPILED[0]) == 1  # tiny: the handoff would cost more than the work
    big = random_problem("lstm", 1, 200, 256, 256, dtype=np.float32)
    assert n_blocks("lstm", big, COMPILED[0]) == 1  # batch 1 is never split into rows
    big = random_problem("lstm", 16, 100, 128, 128, dtype=np.float32)
    assert n_blocks("lstm", big, COMPILED[0]) == 2


# ---------------------------------------------------------------------------------------------------------------
# How a batch is split
# ---------------------------------------------------------------------------------------------------------------

def check_bounds(bounds, B, n, min_rows=threads.MIN_ROWS_PER_BLOCK):
    assert bounds[0] == 0 and bounds[-1] == B
    assert len(bounds) - 1 <= n
    assert all(b1 - b0 >= min_rows for b0, b1 in zip(bounds, bounds[1:])) or len(bounds) == 2


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 16, 17, 63, 64, 1000])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_split_rows_equal_lengths_balances_rows(B, n):
    bounds = threads.split_rows(np.full(B, 10, np.int64), 10, n)
    check_bounds(bounds, B, n)
    assert len(bounds) - 1 == max(1, min(n, B // threads.MIN_ROWS_PER_BLOCK))
    sizes = np.diff(bounds)
    assert sizes.max() - sizes.min() <= 1


def test_split_rows_balances_active_steps():
    T = 100
    lengths = np.r_[np.full(8, T), np.full(24, 10)].astype(np.int64)  # sorted longest first, as bucketing does
    bounds = threads.split_rows(lengths, T, 2)
    check_bounds(bounds, 32, 2)
    assert bounds[1] < 16  # the long rows' block has fewer rows
    work = [np.sum(lengths[a:b] + 0.25 * T) for a, b in zip(bounds, bounds[1:])]
    assert max(work) / min(work) < 1.3
    rng = np.random.default_rng(0)
    for _ in range(200):
        B, n = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        check_bounds(threads.split_rows(rng.integers(0, T + 1, B), T, n), B, n)


# ---------------------------------------------------------------------------------------------------------------
# set_num_threads / get_num_threads
# ---------------------------------------------------------------------------------------------------------------

def test_set_get_num_threads():
    fastrnn.set_num_threads(3)
    assert fastrnn.get_num_threads() == 3
    fastrnn.set_num_threads(np.int64(2))
    assert fastrnn.get_num_threads() == 2 and type(fastrnn.get_num_threads()) is int
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    assert fastrnn.set_num_threads is threads.set_num_threads and "set_num_threads" in fastrnn.__all__


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (2.0, TypeError),
                                     ("2", TypeError), (None, TypeError), (True, TypeError), ([2], TypeError)])
def test_set_num_threads_validates(bad, exc):
    before = fastrnn.get_num_threads()
    with pytest.raises(exc, match="n must be a positive integer"):
        fastrnn.set_num_threads(bad)
    assert fastrnn.get_num_threads() == before


def test_default_num_threads(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads._default_num_threads() == 3
    monkeypatch.delenv(threads.ENV_VAR)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads._default_num_threads() == cpus
    monkeypatch.setenv(threads.ENV_VAR, "zero")
    with pytest.warns(RuntimeWarning, match=threads.ENV_VAR):
        assert threads._default_num_threads() == cpus


# ---------------------------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------------------------

def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("fastrnn-worker")]


def test_blocks_run_in_parallel_on_a_worker():
    """Block 0 (the caller's) waits for block 1: it can only finish if a worker runs block 1 meanwhile."""
    fastrnn.set_num_threads(2)
    started = threading.Event()
    ran_in = {}

    def fn(k):
        ran_in[k] = threading.current_thread()
        if k == 1:
            started.set()
        else:
            assert started.wait(30), "block 1 never started while block 0 ran"

    threads.run_blocks(fn, 2)
    assert ran_in[0] is threading.current_thread() and ran_in[1].name.startswith("fastrnn-worker")


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_exception_in_a_block_reaches_the_caller(failing):
    fastrnn.set_num_threads(3)
    done = []

    def fn(k):
        time.sleep(0.01)
        if k == failing:
            raise KeyError(f"block {k}")
        done.append(k)

    with pytest.raises(KeyError, match=f"block {failing}"):
        threads.run_blocks(fn, 3)
    assert sorted(done) == [k for k in range(3) if k != failing]  # the other blocks all finished first
    threads.run_blocks(lambda k: None, 3)  # the pool still works


def test_exception_in_a_kernel_block_reaches_the_caller(split_small, monkeypatch):
    """A kernel failing in a worker's block (here: a stand-in module) raises from rnn_forward."""
    backend = COMPILED[0]
    kernel = ops.KERNELS[("gru", backend, np.dtype(np.float64))]
    real = kernel._load()

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def gru_forward(self, x, *args):
            if x.shape[0] != 4:  # 14 rows in 3 blocks: 4, 5, 5; the workers' blocks fail
                raise MemoryError("kernel block failed")
            real.gru_forward(x, *args)

    monkeypatch.setattr(kernel, "_module", Failing())
    fastrnn.set_num_threads(3)
    p = random_problem("gru", 14, 5, 3, 4)
    with pytest.raises(MemoryError, match="kernel block failed"):
        ops.rnn_forward("gru", p["x"], [p["W"], p["R"], p["b"]], backend=backend)


def test_concurrent_callers_get_serial_results(split_small):
    """8 Python threads call split kernels at once (3 fastrnn threads): every result equals the serial one, and
    the pool never has more than 2 workers."""
    fastrnn.set_num_threads(3)
    problems = [(cell, opts, random_problem(cell, 7 + k, 6, 5, 8, dtype=np.float32, seed=k, lengths="mixed",
                                            **opts), COMPILED[k % len(COMPILED)])
                for k, (cell, opts) in enumerate(CELL_OPTIONS * 2)]
    serial = [run(cell, p, b, True, False, opts) for cell, opts, p, b in problems]
    errors, peak = [], [0]

    def caller(k):
        try:
            rng = np.random.default_rng(k)
            for i in rng.integers(0, len(problems), 40):
                cell, opts, p, b = problems[i]
                out, g = run(cell, p, b, True, False, opts)
                assert_same_forward(out, serial[i][0])
                for s, t in zip([g.dx, *g.d_initial_states, *g.d_weights],
                                [serial[i][1].dx, *serial[i][1].d_initial_states, *serial[i][1].d_weights]):
                    np.testing.assert_array_equal(s, t)  # the same split every time: deterministic sums
                peak[0] = max(peak[0], len(worker_threads()))
        except BaseException as exc:  # noqa: B902
            errors.append(exc)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not any(t.is_alive() for t in ts), "a caller hung"
    if errors:
        raise errors[0]
    assert 1 <= peak[0] <= 2


def wait_for_workers(n, timeout=10):
    """Workers stop asynchronously (when they next wake): the number left after they have."""
    deadline = time.perf_counter() + timeout
    while len(worker_threads()) != n and time.perf_counter() < deadline:
        time.sleep(0.01)
    return len(worker_threads())


def test_pool_resizes():
    fastrnn.set_num_threads(4)
    threads.run_blocks(lambda k: None, 4)
    assert wait_for_workers(3) == 3
    fastrnn.set_num_threads(2)
    threads.run_blocks(lambda k: None, 2)
    assert wait_for_workers(1) == 1
    fastrnn.set_num_threads(1)
    assert wait_for_workers(0) == 0
    ran = []
    threads.run_blocks(ran.append, 3)  # more blocks than threads: the caller runs them all
    assert sorted(ran) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------
# SciPy's BLAS
# ---------------------------------------------------------------------------------------------------------------

def other_blas_threads():
    """{path: threads} of the loaded BLAS libraries fastrnn does not limit (NumPy's, with pip wheels)."""
    mine = threads.blas_thread_counts()
    return {p["filepath"]: p["num_threads"] for p in threadpool_info()
            if p["user_api"] == "blas" and p["filepath"] not in mine}


def test_scipy_blas_limited_while_threads_above_one_and_restored():
    counts = threads.blas_thread_counts()
    assert counts, "threadpoolctl does not see the kernels' BLAS"
    fastrnn.set_num_threads(1)
    original = threads.blas_thread_counts()
    others = other_blas_threads()
    fastrnn.set_num_threads(2)
    assert set(threads.blas_thread_counts().values()) == {1}
    assert other_blas_threads() == others  # NumPy's own BLAS is left alone
    fastrnn.set_num_threads(3)
    assert set(threads.blas_thread_counts().values()) == {1}
    fastrnn.set_num_threads(1)
    assert threads.blas_thread_counts() == original
    fastrnn.set_num_threads(1)  # idempotent
    assert threads.blas_thread_counts() == original


def test_kernel_blas_is_numpys_other_library_when_wheels():
    """With pip wheels SciPy and NumPy each bundle an OpenBLAS: only SciPy's (the kernels') is limited."""
    import scipy
    paths = list(threads.blas_thread_counts())
    scipy_pkg = os.path.dirname(os.path.realpath(scipy.__file__))
    if not all(os.path.realpath(p).startswith((scipy_pkg + os.sep, scipy_pkg + ".libs" + os.sep)) for p in paths):
        pytest.skip("SciPy does not bundle its own BLAS here")
    assert not any("numpy" in os.path.basename(os.path.dirname(p)) for p in paths)


def test_split_call_limits_blas_again_after_a_threadpool_limits_restore(split_small):
    """A threadpoolctl limit entered before fastrnn limited SciPy's BLAS restores its old count on exit; the next
    split call limits it again."""
    fastrnn.set_num_threads(1)
    original = threads.blas_thread_counts()
    p = random_problem("lstm", 6, 4, 3, 4)
    with threadpool_limits(limits=1):
        fastrnn.set_num_threads(2)
        run("lstm", p, COMPILED[0], False, False, {})
    assert threads.blas_thread_counts() == original  # threadpoolctl put back what it found
    run("lstm", p, COMPILED[0], False, False, {})
    assert set(threads.blas_thread_counts().values()) == {1}
    fastrnn.set_num_threads(1)
    assert threads.blas_thread_counts() == original  # the count it had just before fastrnn limited it again
