"""Column-split inference (fastrnn._column_split, kernels/cython_threaded.pyx): threads that own slices of the units.

Against the NumPy reference and the single-threaded Cython kernel for every cell and option, both dtypes, ragged
lengths (0 included), reverse, batch 1-4, units that the thread count does not divide (1, 3, 67); thread counts
1, 2, 3 give the same bits. Also: repeated calls, concurrent Python callers, a thread that cannot be started,
each instruction set of the matmul, subnormal inputs, and the dispatch from ops. No timed assertions; a hang
(a barrier nobody leaves) fails the module with every thread's traceback.
"""
import os
import threading
import time

import numpy as np
import pytest

import fastrnn
from fastrnn import _column_split as cs
from fastrnn import ops
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, random_problem, rel_err
from helpers import no_backoff, watchdog  # noqa: F401 (autouse fixtures)

ct = cs.kernel_module()
pytestmark = pytest.mark.skipif(ct is None, reason=f"column-split kernel not built: {cs.unavailable_reason()}")

FLOAT64_TOL = 1e-10   # as tests/test_kernel_conformance.py
FLOAT32_TOL = 1e-4
FLOAT32_ATOL = 1e-6


def close(got, want, dtype):
    if dtype == np.float64:
        return rel_err(got, want) < FLOAT64_TOL
    return rel_err(got, want) < FLOAT32_TOL or np.max(np.abs(got - want), initial=0) < FLOAT32_ATOL


def problem(cell, options, B, T, D, U, dtype, seed=0, lengths="full", reverse=False, scale=0.5):
    p = random_problem(cell, B=B, T=T, D=D, U=U, seed=seed, lengths=lengths, scale=scale, **options)
    return ops.make_problem(cell, p["x"].astype(dtype), [p["W"].astype(dtype), p["R"].astype(dtype),
                                                        p["b"].astype(dtype)],
                            [s.astype(dtype) for s in p["states"]], p["lengths"], reverse,
                            options.get("activation", "tanh"), options.get("reset_after", True), dtype)


def reference(p, backend="numpy", dtype=np.float64):
    """ops.rnn_forward on the problem's own (already rounded) numbers, in dtype."""
    out = ops.rnn_forward(p.cell, p.x, [p.W, p.R, p.b], list(p.initial_states), p.lengths, reverse=p.reverse,
                          activation=p.activation, reset_after=p.reset_after, backend=backend, dtype=dtype)
    return out.outputs, out.states


def cython_kernel(p):
    """The single-threaded Cython kernel (fastrnn.kernels.cython_<cell>), called directly: ops would run
    column-split inference for these problems."""
    import importlib
    mod = importlib.import_module(f"fastrnn.kernels.cython_{p.cell}")
    B, T, D, U = p.shape
    y = np.empty((B, T, U), p.x.dtype)
    finals = tuple(np.empty((B, U), p.x.dtype) for _ in p.initial_states)
    ws = np.zeros((0, 0, 0), p.x.dtype)
    if p.cell == "simple_rnn":
        mod.simple_rnn_forward(p.x, p.W, p.R, p.b, p.initial_states[0], p.lengths, p.reverse,
                               p.activation == "relu", False, y, finals[0], ws, ws)
    elif p.cell == "lstm":
        mod.lstm_forward(p.x, p.W, p.R, p.b, *p.initial_states, p.lengths, p.reverse, False, y, *finals,
                         ws, ws, ws, ws)
    else:
        b_in, b_rec = (p.b[0], p.b[1]) if p.reset_after else (p.b, np.zeros_like(p.b))
        mod.gru_forward(p.x, p.W, p.R, b_in, b_rec, p.initial_states[0], p.lengths, p.reverse, p.reset_after,
                        False, y, finals[0], ws, ws, ws)
    return y, finals


def assert_same_bits(a, b):
    y1, f1 = a
    y2, f2 = b
    assert y1.tobytes() == y2.tobytes()
    for s1, s2 in zip(f1, f2):
        assert s1.tobytes() == s2.tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_matches_reference_every_thread_count(cell, options, lengths, reverse, dtype):
    for B in (1, 2, 3, 4):
        for U in (1, 3, 67):
            p = problem(cell, options, B, 7, 5, U, dtype, seed=B * 100 + U, lengths=lengths, reverse=reverse)
            want_y, want_states = reference(p)
            first = None
            for n in (1, 2, 3):
                stats = {}
                got = cs.forward(p, n, stats)
                assert stats["threads"] == min(n, U)
                y, finals = got
                assert y.dtype == dtype and y.shape == (B, 7, U)
                assert close(y, want_y, dtype), (B, U, n, rel_err(y, want_y))
                assert len(finals) == len(want_states)
                for s, w in zip(finals, want_states):
                    assert s.dtype == dtype
                    assert close(s, w, dtype), (B, U, n, rel_err(s, w))
                # every column's sums run in the same order whichever thread owns it: the same bits
                if first is None:
                    first = got
                else:
                    assert_same_bits(got, first)


def test_large_shares_packed_in_panel_groups_match_reference():
    """Each thread packs its units' columns of R (and of W): from 4 MB (fused_blas.PACK_TILE_BYTES) in groups of
    panels. LSTM 1024 float32 on 2 threads: each share of R and W is 8 MB, its panels spanning gate boundaries."""
    p = problem("lstm", {}, 1, 3, 1024, 1024, np.float32, seed=5, scale=0.03)
    want_y, want_states = reference(p)
    first = None
    for n in (1, 2):
        got = cs.forward(p, n)
        assert close(got[0], want_y, np.float32)
        for s, w in zip(got[1], want_states):
            assert close(s, w, np.float32)
        if first is None:
            first = got
        else:
            assert_same_bits(got, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_larger_batches_match_reference(cell, options, reverse, dtype):
    """Batches up to HUGE_R_MAX_BATCH (taken when R is huge): row blocks of 4 with a tail, ragged lengths."""
    for B in (9, cs.HUGE_R_MAX_BATCH):
        p = problem(cell, options, B, 11, 6, 67, dtype, seed=B, lengths="mixed", reverse=reverse,
                    scale=1 / np.sqrt(67))
        want_y, want_states = reference(p)
        first = None
        for n in (1, 2, 3):
            got = cs.forward(p, n)
            assert close(got[0], want_y, dtype), (B, n, rel_err(got[0], want_y))
            for s, w in zip(got[1], want_states):
                assert close(s, w, dtype), (B, n, rel_err(s, w))
            if first is None:
                first = got
            else:
                assert_same_bits(got, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_matches_single_threaded_cython_kernel(cell, options, dtype):
    """Larger shapes (several panels of columns, a partial one; input projection in blocks of rows with a tail)
    against the Cython kernel, which sums in BLAS's order: equal to float rounding."""
    if ops.available_backends()["cython"] is not None:
        pytest.skip("cython backend not built")
    for B, T, D, U, lengths in ((1, 30, 33, 130, "full"), (3, 25, 40, 97, "mixed"), (4, 9, 1, 64, "mixed")):
        # weights ~ 1/sqrt(U): a recurrence that does not amplify rounding differences
        p = problem(cell, options, B, T, D, U, dtype, seed=U, lengths=lengths, scale=1 / np.sqrt(U))
        want_y, want_states = cython_kernel(p)
        ref_y, ref_states = reference(p)
        for n in (2, 3):
            y, finals = cs.forward(p, n)
            assert close(y, want_y, dtype), rel_err(y, want_y)
            assert close(y, ref_y, dtype), rel_err(y, ref_y)
            for s, w, r in zip(finals, want_states, ref_states):
                assert close(s, w, dtype) and close(s, r, dtype)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_zero_lengths_keep_initial_states(cell, options):
    for B, lengths in ((1, [0]), (3, [0, 0, 0]), (4, [0, 5, 0, 2])):
        p = problem(cell, options, B, 5, 4, 20, np.float64, lengths=lengths)
        y, finals = cs.forward(p, 2)
        want_y, want_states = reference(p)
        for b, L in enumerate(lengths):
            assert not np.any(y[b, L:]), "outputs past a row's length are zero"
            if L == 0:
                for s, s0 in zip(finals, p.initial_states):
                    assert np.array_equal(s[b], s0[b]), "a row of length 0 keeps its initial state"
        assert close(y, want_y, np.float64)
        for s, w in zip(finals, want_states):
            assert close(s, w, np.float64)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_padded_inputs_never_reach_results_and_inputs_stay(cell, options):
    p = problem(cell, options, 3, 6, 4, 19, np.float32, lengths=[6, 2, 0])
    clean = cs.forward(p, 2)
    x = p.x.copy()
    x[1, 2:] = np.nan
    x[2, :] = np.inf
    p.x = x
    before = [a.copy() for a in (p.x, p.W, p.R, p.b, *p.initial_states, p.lengths)]
    assert_same_bits(cs.forward(p, 2), clean)
    for a, b in zip(before, (p.x, p.W, p.R, p.b, *p.initial_states, p.lengths)):
        assert np.array_equal(a, b, equal_nan=True), "inputs are never modified"


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_degenerate_shapes(cell, options):
    """No timesteps, no input features, no rows: the kernel copes (ops never sends them, but forward may get them)."""
    for B, T, D in ((2, 0, 3), (2, 4, 0), (0, 4, 3)):
        p = problem(cell, options, B, T, D, 9, np.float64)
        y, finals = cs.forward(p, 2)
        want_y, want_states = reference(p)
        assert y.shape == want_y.shape and np.allclose(y, want_y, rtol=1e-12, atol=1e-14)
        for s, w in zip(finals, want_states):
            assert np.allclose(s, w, rtol=1e-12, atol=1e-14)


def test_unit_split():
    assert ct.split_units(1, 2) == [0, 1]
    assert ct.split_units(3, 3) == [0, 1, 2, 3]
    assert ct.split_units(67, 3) == [0, 22, 45, 67]
    assert ct.split_units(256, 2) == [0, 128, 256]
    assert ct.split_units(100, 2) == [0, 48, 100]          # boundaries on 64-byte lines of float32
    assert ct.split_units(100, 2, 8) == [0, 48, 100]
    for U in range(1, 300, 7):
        for n in (1, 2, 3, 4, 7):
            b = ct.split_units(U, n)
            assert b[0] == 0 and b[-1] == U and len(b) == min(n, U) + 1
            assert all(b[k] < b[k + 1] for k in range(len(b) - 1)), (U, n, b)


# ---------------------------------------------------------------------------------------------------------------
# Machinery: instruction sets, subnormals, failures to start a thread
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matmul_every_instruction_set(dtype):
    rng = np.random.default_rng(3)
    best = {"avx512": 2, "avx2": 1, "baseline": 0}[ct.isa()]
    for level in range(best + 1):
        for M, K, N in ((1, 1, 1), (1, 37, 70), (2, 64, 32), (3, 5, 33), (4, 129, 64), (7, 200, 97), (9, 0, 5)):
            A = rng.standard_normal((M, K)).astype(dtype)
            Bm = rng.standard_normal((K, N)).astype(dtype)
            C, _ = ct._matmul_check(A, Bm, 1, level)
            want = A.astype(np.float64) @ Bm.astype(np.float64)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            assert np.allclose(C, want, rtol=tol, atol=tol * max(1, K)), (level, M, K, N)
            # the panels last to first (every other step of a time loop at batch 1): the same sums, the same bits
            C_back, _ = ct._matmul_check(A, Bm, 1, level, True)
            np.testing.assert_array_equal(C_back, C)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_weight_grads_every_instruction_set(dtype):
    """fused_blas.weight_grads (dW = x^T dA, dR = h^T dA in the backward kernels): chunks of k (512) with a tail,
    blocks of A's columns (256 float32 / 128 float64) with a tail, partial panels, one or two A's, k = 0; A read
    in place (AVX-512: fr_matmul_at) or copied transposed (AVX2, baseline)."""
    rng = np.random.default_rng(4)
    best = {"avx512": 2, "avx2": 1, "baseline": 0}[ct.isa()]
    for level in range(best + 1):
        for K, M1, M2, N in ((1, 1, 0, 1), (3, 5, 4, 33), (512, 7, 2, 64), (513, 30, 0, 97), (1100, 270, 9, 40),
                             (40, 3, 600, 17), (0, 4, 3, 5)):
            A1 = rng.standard_normal((K, M1)).astype(dtype)
            A2 = rng.standard_normal((K, M2)).astype(dtype) if M2 else None
            dZ = rng.standard_normal((K, N)).astype(dtype)
            C1, C2 = ct._weight_grads_check(A1, dZ, A2, level)
            tol = 1e-12 if dtype == np.float64 else 1e-5
            for C, A in ((C1, A1), (C2, A2)):
                if A is None:
                    assert C is None
                    continue
                want = A.astype(np.float64).T @ dZ.astype(np.float64)
                assert C.shape == want.shape
                assert np.allclose(C, want, rtol=tol, atol=tol * max(1, K)), (level, K, M1, M2, N)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_every_instruction_set_gives_reference_results(cell, options):
    best = {"avx512": 2, "avx2": 1, "baseline": 0}[ct.isa()]
    p = problem(cell, options, 2, 6, 11, 45, np.float64, lengths=[6, 3])
    want_y, want_states = reference(p)
    old = ct.set_isa_cap(2)
    try:
        for level in range(best + 1):
            ct.set_isa_cap(level)
            y, finals = cs.forward(p, 2)
            assert close(y, want_y, np.float64)
            for s, w in zip(finals, want_states):
                assert close(s, w, np.float64)
    finally:
        ct.set_isa_cap(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_subnormal_inputs_flush_and_caller_mode_restored(dtype):
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(0)
    for cell, options in CELL_OPTIONS:
        p = problem(cell, options, 2, 8, 16, 33, dtype, scale=0.05)
        p.x = (rng.uniform(0.01, 0.9, p.x.shape) * tiny * rng.choice([-1, 1], p.x.shape)).astype(dtype)
        p.initial_states = tuple((rng.uniform(0.01, 0.9, s.shape) * tiny).astype(dtype) for s in p.initial_states)
        p.b = p.b * 0
        y, _ = cs.forward(p, 2)
        want_y, _ = reference(p)
        assert np.max(np.abs(y - want_y)) <= 4 * tiny
    # the calling thread's MXCSR is back as it was: Python's own subnormal arithmetic still works
    assert 5e-324 * 1.0 != 0 and float(np.float32(1e-40)) * 1.0 != 0


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_thread_that_cannot_start(cell, options):
    """The system refuses a thread: the kernel returns -1 without hanging (the pool hands out no work before all
    its workers run), and forward runs on the calling thread alone with the same results."""
    p = problem(cell, options, 2, 9, 5, 40, np.float32, lengths=[9, 4])
    good = cs.forward(p, 3)
    for fail in (1, 2):
        old = ct._set_fail_thread(fail)
        try:
            stats = {}
            assert_same_bits(cs.forward(p, 3, stats), good)
            assert stats["threads"] == 1
            B, T, D, U = p.shape
            y = np.empty((B, T, U), np.float32)
            hT = np.empty((B, U), np.float32)
            assert cs._run(ct, p, y, (hT, np.empty_like(hT)), 3, {}) == -1
        finally:
            ct._set_fail_thread(old)


def test_barrier_passes_many_rounds():
    for n in (1, 2, 3, 5):
        _, stats = ct._barrier_bench(n, 2000)
        assert stats["waits"] == [2000 if n > 1 else 0] * n


# ---------------------------------------------------------------------------------------------------------------
# Repeated and concurrent calls
# ---------------------------------------------------------------------------------------------------------------

def test_many_repeated_calls_same_bits():
    p = problem("lstm", {}, 1, 12, 8, 48, np.float32)
    first = cs.forward(p, 2)
    for k in range(1500):
        assert_same_bits(cs.forward(p, 2 + k % 2), first)


def test_pool_workers_woken_from_sleep_and_after_fork():
    """The pool's workers wait on the CPU for ~200 us after a call, then sleep: calls after a pause wake them (same
    bits, both threads used); a forked child has no workers and starts its own."""
    p = problem("gru", {}, 1, 12, 8, 48, np.float32)
    first = cs.forward(p, 1)
    for pause in (0, 0.005, 0.02):
        time.sleep(pause)
        stats = {}
        assert_same_bits(cs.forward(p, 2, stats), first)
        assert stats["threads"] == 2
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 if its split call gives the same bits on 2 threads
        code = 1
        try:
            stats = {}
            y, finals = cs.forward(p, 2, stats)
            same = np.array_equal(y.view(np.uint32), first[0].view(np.uint32))
            code = 0 if same and stats["threads"] == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_concurrent_python_callers():
    """8 Python threads, each running column-split calls (2 threads each: 16 threads on this machine's cores):
    every result equals the serial one, nothing hangs."""
    problems = [problem(cell, options, 1 + k % 3, 10, 6, 35, np.float32, seed=k)
                for k, (cell, options) in enumerate(CELL_OPTIONS * 2)][:8]
    serial = [cs.forward(p, 1) for p in problems]
    errors = []
    start = threading.Barrier(len(problems))

    def body(k):
        try:
            start.wait()
            for _ in range(40):
                assert_same_bits(cs.forward(problems[k], 2), serial[k])
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a column-split call hung"
    assert not errors, errors[0]


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_policy():
    big = problem("lstm", {}, 1, 100, 8, 128, np.float32)
    assert cs.recurrent_flops(big) >= cs.MIN_RECURRENT_FLOPS
    assert cs.worthwhile(big, 2)
    assert not cs.worthwhile(big, 1)
    assert not cs.worthwhile(problem("lstm", {}, 1, 5, 8, 16, np.float32), 2), "too little work"
    assert not cs.worthwhile(problem("lstm", {}, 1, 100, 8, 64, np.float32), 2), "too little work per step"
    assert cs.worthwhile(problem("lstm", {}, 2, 100, 8, 64, np.float32), 2), "twice the rows: enough per step"
    assert cs.worthwhile(problem("gru", {}, 1, 100, 8, 96, np.float32), 2)
    assert cs.worthwhile(problem("lstm", {}, 1, cs.MIN_STEPS, 8, 128, np.float32), 2), "few steps, enough work"
    assert not cs.worthwhile(problem("lstm", {}, 2, 100, 8, 64, np.float32), 4), "a quarter of a step each"
    assert not cs.worthwhile(problem("lstm", {}, 1, cs.MIN_STEPS - 1, 8, 1024, np.float32), 2), "too few steps"
    short = problem("lstm", {}, 1, 100, 8, 128, np.float32, lengths=[cs.MIN_STEPS - 1])
    assert not cs.worthwhile(short, 2), "steps are the longest row's length"
    small_r = problem("simple_rnn", {}, cs.MAX_BATCH + 1, 100, 8, 256, np.float32)
    assert not cs.worthwhile(small_r, 2), "SimpleRNN from batch 5: only a large R"
    large_r = problem("simple_rnn", {}, cs.LARGE_R_MAX_BATCH, 40, 8, 512, np.float32)   # R: 1 MB
    assert cs.worthwhile(large_r, 2)
    assert not cs.worthwhile(problem("simple_rnn", {}, cs.LARGE_R_MAX_BATCH + 1, 40, 8, 512, np.float32), 2)
    huge_r = problem("lstm", {}, cs.HUGE_R_MAX_BATCH, 40, 8, 1024, np.float32)   # R: 16 MB
    assert cs.worthwhile(huge_r, 2)
    assert not cs.worthwhile(problem("lstm", {}, cs.HUGE_R_MAX_BATCH + 1, 40, 8, 1024, np.float32), 2)
    assert not cs.worthwhile(problem("lstm", {}, cs.LARGE_R_MAX_BATCH + 1, 40, 8, 512, np.float32), 2), "R: 4 MB"


def test_contention_backoff_and_concurrent_calls_run_alone(monkeypatch):
    """After a contended call, and while another call runs, maybe_forward uses one thread: the same bits."""
    big = problem("lstm", {}, 1, 100, 8, 128, np.float32)
    assert cs.worthwhile(big, 2)
    threads_used = []
    real = cs.forward
    monkeypatch.setattr(cs, "forward", lambda p, n, stats=None: threads_used.append(n) or real(p, n, stats))
    want = real(big, 1)
    contended, clean = {"wait_ns": [1_000, 600_000]}, {"wait_ns": [20_000, 10_000]}   # of a 1 ms call
    for _ in range(5):
        cs._note_contention(contended, 1e-3)                      # sporadic: no backoff
        for _ in range(10):
            cs._note_contention(clean, 1e-3)
    assert_same_bits(cs.maybe_forward(big, 2), want)
    for _ in range(3):
        cs._note_contention(contended, 1e-3)                      # several in a few calls: backoff
    assert_same_bits(cs.maybe_forward(big, 2), want)
    cs.reset_backoff()
    cs._note_contention(clean, 1e-3)
    assert_same_bits(cs.maybe_forward(big, 2), want)
    monkeypatch.setattr(cs, "_in_flight", 1)                      # another column-split call is running
    assert_same_bits(cs.maybe_forward(big, 2), want)
    assert threads_used == [2, 1, 2, 1]


def test_ops_dispatches_small_batch_inference(monkeypatch):
    if ops.available_backends()["cython"] is not None:
        pytest.skip("cython backend not built")
    calls = []
    real = cs.forward

    def spy(p, n, stats=None):
        calls.append((p.shape, n))
        return real(p, n, stats)

    monkeypatch.setattr(cs, "forward", spy)
    monkeypatch.setattr(cs, "CONTENDED_WAIT", float("inf"))  # a busy machine must not turn it off mid-test
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        for cell, options in CELL_OPTIONS:
            p = problem(cell, options, 1, 100, 32, 256, np.float32, scale=0.06)
            assert cs.worthwhile(p, 2)
            want_y, want_states = reference(p)
            calls.clear()
            out = ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], list(p.initial_states), backend="cython", **options)
            assert calls == [((1, 100, 32, 256), 2)], "inference at batch 1 runs column-split"
            assert out.backend == "cython"
            assert close(out.outputs, want_y, np.float32)
            for s, w in zip(out.states, want_states):
                assert close(s, w, np.float32)
            calls.clear()
            ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], backend="cython", training=True, **options)
            ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], backend="numba", **options)
            assert calls == [], "training (forward_training: tests/test_column_split_training.py) and other " \
                                "backends do not call forward"
            # "auto" takes it too (RNNOutput.backend and the layers' backend_used say "cython")
            out = ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], list(p.initial_states), **options)
            assert calls == [((1, 100, 32, 256), 2)] and out.backend == "cython"
            assert close(out.outputs, want_y, np.float32)
        calls.clear()
        fastrnn.set_num_threads(1)
        p = problem("lstm", {}, 1, 100, 128, 128, np.float32)
        ops.rnn_forward("lstm", p.x, [p.W, p.R, p.b], backend="cython")
        assert ops.rnn_forward("lstm", p.x, [p.W, p.R, p.b]).backend == ops.select_kernel("lstm", "auto", p.x.dtype,
                                                                                         p.shape).name
        assert calls == [], "one thread: never"
    finally:
        fastrnn.set_num_threads(old)
