"""Column-split training (fastrnn._column_split.forward_training / backward, kernels/cython_threaded.pyx): the
forward keeps the workspaces of the kernel contract, the backward runs BPTT with each thread owning a slice of the
units, then shares dW, dR, dx and db.

Against the NumPy reference (outputs, final states and every gradient), for every cell and option, both dtypes,
ragged lengths (0 included), reverse, batch 1-32, units the thread count does not divide, fewer input features
than threads; thread counts 1, 2, 3 give the same bits. The workspaces are the contract's: the single-threaded
Cython kernels' backward takes the column split's workspaces and the other way round. Also: inputs never modified,
padded inputs and output gradients never reach a result, a thread that cannot be started, every instruction set,
and the dispatch from ops. No timed assertions.
"""
import importlib

import numpy as np
import pytest

import fastrnn
from fastrnn import _column_split as cs
from fastrnn import ops
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, contract_workspaces, random_problem, rel_err
from helpers import no_backoff, watchdog  # noqa: F401 (autouse fixtures)

ct = cs.kernel_module()
pytestmark = pytest.mark.skipif(ct is None, reason=f"column-split kernel not built: {cs.unavailable_reason()}")

FLOAT64_TOL = 1e-10
FLOAT32_TOL = 2e-4
FLOAT32_ATOL = 1e-5


def close(got, want, dtype):
    if dtype == np.float64:
        return rel_err(got, want) < FLOAT64_TOL
    return rel_err(got, want) < FLOAT32_TOL or np.max(np.abs(got - want), initial=0) < FLOAT32_ATOL


def problem(cell, options, B, T, D, U, dtype, seed=0, lengths="full", reverse=False, scale=0.5):
    """(ops.Problem, dy, d_states) with random numbers rounded to dtype."""
    r = random_problem(cell, B=B, T=T, D=D, U=U, seed=seed, lengths=lengths, scale=scale, **options)
    p = ops.make_problem(cell, r["x"].astype(dtype), [r["W"].astype(dtype), r["R"].astype(dtype),
                                                      r["b"].astype(dtype)],
                         [s.astype(dtype) for s in r["states"]], r["lengths"], reverse,
                         options.get("activation", "tanh"), options.get("reset_after", True), dtype)
    return p, r["dy"].astype(dtype), tuple(s.astype(dtype) for s in r["dstates"])


def reference(p, dy, ds):
    """Outputs, final states and gradients (dx, d_init, dW, dR, db) of the NumPy reference in float64."""
    q = ops.make_problem(p.cell, p.x, [p.W, p.R, p.b], list(p.initial_states), p.lengths, p.reverse, p.activation,
                         p.reset_after, np.float64)
    k = ops.ReferenceKernel(p.cell)
    y, states, tape = k.forward(q, True)
    grads = k.backward(q, tape, dy.astype(np.float64), tuple(s.astype(np.float64) for s in ds))
    return y, states, grads


def flat_grads(g):
    dx, d_init, dW, dR, db = g
    return (dx, *d_init, dW, dR, db)


def assert_close_grads(got, want, dtype, where=""):
    names = ["dx"] + [f"d_init{k}" for k in range(len(got[1]))] + ["dW", "dR", "db"]
    for name, a, b in zip(names, flat_grads(got), flat_grads(want)):
        assert a.shape == b.shape and a.dtype == dtype, (name, a.shape, b.shape, a.dtype)
        assert close(a, b, dtype), (where, name, rel_err(a, b))


def assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


def contract_ws(p, ws):
    return contract_workspaces(p.cell, p.reset_after, ws)


def cython_training_forward(p):
    """The single-threaded Cython kernel's training forward, called directly: (y, finals, ws)."""
    mod = importlib.import_module(f"fastrnn.kernels.cython_{p.cell}")
    B, T, D, U = p.shape
    y = np.empty((B, T, U), p.x.dtype)
    finals = tuple(np.empty((B, U), p.x.dtype) for _ in p.initial_states)
    ws = ops.training_workspaces(p.cell, B, T, U, p.x.dtype)
    ops._kernel_forward(mod, p, True, p.x, p.lengths, p.initial_states, (y, *finals), ws)
    return y, finals, ws


def cython_backward(p, ws, dy, ds):
    """The single-threaded Cython kernel's backward (ops.CompiledKernel on one thread)."""
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        return ops.KERNELS[(p.cell, "cython", p.x.dtype)].backward(p, ws, dy, ds)
    finally:
        fastrnn.set_num_threads(old)


def check(p, dy, ds, threads=(1, 2, 3)):
    """Forward and backward on each thread count against the reference; the same bits for every count."""
    dtype = p.x.dtype
    want_y, want_states, want_grads = reference(p, dy, ds)
    first = None
    for n in threads:
        stats = {}
        y, finals, ws = cs.forward_training(p, n)
        assert close(y, want_y, dtype), (n, rel_err(y, want_y))
        for s, w in zip(finals, want_states):
            assert close(s, w, dtype), (n, rel_err(s, w))
        grads = cs.backward(p, ws, dy, ds, n, stats)
        assert stats["threads"] == min(n, p.shape[3])
        assert_close_grads(grads, want_grads, dtype, f"{n} threads")
        everything = (y, *finals, *contract_ws(p, ws), *flat_grads(grads))
        if first is None:
            first = everything
        else:
            assert_same_bits(everything, first)
    return first


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_training_matches_reference_every_thread_count(cell, options, lengths, reverse, dtype):
    for B in (1, 2, 4):
        for U in (1, 3, 67):
            p, dy, ds = problem(cell, options, B, 7, 5, U, dtype, seed=B * 100 + U, lengths=lengths,
                                reverse=reverse)
            check(p, dy, ds)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_training_larger_shapes(cell, options, dtype):
    """Several panels of columns and a partial one, row blocks of 4 with a tail, D above and below U, one input
    feature for three threads (a thread with no dx columns), batch up to HUGE_R_MAX_BATCH with ragged lengths."""
    for B, T, D, U, lengths, reverse in ((1, 30, 33, 130, "full", False), (3, 25, 70, 41, "mixed", True),
                                         (4, 9, 1, 64, "mixed", False), (cs.HUGE_R_MAX_BATCH, 6, 10, 37, "mixed",
                                                                         True)):
        # weights ~ 1/sqrt(U): a recurrence that does not amplify rounding differences
        p, dy, ds = problem(cell, options, B, T, D, U, dtype, seed=U, lengths=lengths, reverse=reverse,
                            scale=1 / np.sqrt(U))
        check(p, dy, ds)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_workspaces_are_the_contracts(cell, options, dtype):
    """The column split's workspaces equal the Cython kernel's (to rounding; zeros at padded positions), and each
    backward takes the other forward's workspaces: a forward and a backward may each pick its kernel."""
    p, dy, ds = problem(cell, options, 3, 12, 9, 50, dtype, seed=7, lengths=[12, 5, 0], reverse=True,
                        scale=1 / np.sqrt(50))
    _, _, want = reference(p, dy, ds)
    y, finals, ws = cs.forward_training(p, 2)
    y1, finals1, ws1 = cython_training_forward(p)
    assert close(y, y1, dtype)
    for a, b in zip(contract_ws(p, ws), contract_ws(p, ws1)):
        assert close(a, b, dtype)
        for row, L in enumerate(p.lengths):
            assert not np.any(a[row, L:]), "padded positions of the workspaces are zero"
    assert_close_grads(cython_backward(p, ws, dy, ds), want, dtype, "cython backward, column-split forward")
    assert_close_grads(cs.backward(p, ws1, dy, ds, 2), want, dtype, "column-split backward, cython forward")


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_zero_lengths(cell, options):
    """Rows of length 0: their initial states' gradients are the final states', no other gradient from them."""
    for B, lengths in ((1, [0]), (3, [0, 0, 0]), (4, [0, 5, 0, 2])):
        p, dy, ds = problem(cell, options, B, 5, 4, 20, np.float64, lengths=lengths)
        check(p, dy, ds, threads=(1, 2))
        dx, d_init, dW, dR, db = cs.backward(p, cs.forward_training(p, 2)[2], dy, ds, 2)
        for b, L in enumerate(lengths):
            assert not np.any(dx[b, L:]), "padded inputs get no gradient"
            if L == 0:
                for g, g0 in zip(d_init, ds):
                    assert np.array_equal(g[b], g0[b])
        if not any(lengths):
            assert not np.any(dW) and not np.any(dR) and not np.any(db)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_padded_values_never_reach_results_and_inputs_stay(cell, options):
    p, dy, ds = problem(cell, options, 3, 6, 4, 19, np.float32, lengths=[6, 2, 0])
    y, finals, ws = cs.forward_training(p, 2)
    clean = (y, *finals, *contract_ws(p, ws), *flat_grads(cs.backward(p, ws, dy, ds, 2)))
    x, dy = p.x.copy(), dy.copy()
    x[1, 2:] = np.nan
    x[2, :] = np.inf
    dy[1, 2:] = np.nan
    dy[2, :] = -np.inf
    p.x = x
    before = [a.copy() for a in (p.x, p.W, p.R, p.b, *p.initial_states, p.lengths, dy, *ds)]
    y, finals, ws = cs.forward_training(p, 2)
    ws_before = [a.copy() for a in ws]
    assert_same_bits((y, *finals, *contract_ws(p, ws), *flat_grads(cs.backward(p, ws, dy, ds, 2))), clean)
    for a, b in zip(before + ws_before, (p.x, p.W, p.R, p.b, *p.initial_states, p.lengths, dy, *ds, *ws)):
        assert np.array_equal(a, b, equal_nan=True), "inputs are never modified"


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_training_degenerate_shapes(cell, options):
    """No timesteps, no input features, no rows: the kernels cope (ops sends these to the reference)."""
    for B, T, D in ((2, 0, 3), (2, 4, 0), (0, 4, 3)):
        p, dy, ds = problem(cell, options, B, T, D, 9, np.float64)
        _, _, want = reference(p, dy, ds)
        y, finals, ws = cs.forward_training(p, 2)
        for a, b in zip(flat_grads(cs.backward(p, ws, dy, ds, 2)), flat_grads(want)):
            assert a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_row_split_of_weight_gradients():
    assert ct.split_rows(10, 20, 1) == [0, 30]
    assert ct.split_rows(10, 20, 2) == [0, 14, 30]      # dR from its row 4 (a multiple of 4 of dR)
    assert ct.split_rows(30, 10, 2) == [0, 20, 40]
    assert ct.split_rows(1, 2, 3) == [0, 1, 1, 3]
    for D, U, n in ((7, 5, 2), (300, 1024, 2), (33, 130, 3), (0, 9, 2), (5, 1, 3)):
        b = ct.split_rows(D, U, n)
        assert b[0] == 0 and b[-1] == D + U and len(b) == n + 1 and b == sorted(b)
        for m in b[1:-1]:
            assert (m % 4 == 0) if m < D else (m == D or (m - D) % 4 == 0 or m == D + U)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_thread_that_cannot_start(cell, options):
    """The system refuses a thread: the backward kernel returns -1 without hanging, and backward runs on the
    calling thread alone with the same results."""
    p, dy, ds = problem(cell, options, 2, 9, 5, 40, np.float32, lengths=[9, 4])
    ws = cs.forward_training(p, 3)[2]
    good = flat_grads(cs.backward(p, ws, dy, ds, 3))
    for fail in (1, 2):
        old = ct._set_fail_thread(fail)
        try:
            stats = {}
            assert_same_bits(flat_grads(cs.backward(p, ws, dy, ds, 3, stats)), good)
            assert stats["threads"] == 1
            y, finals, ws2 = cs.forward_training(p, 3)
            assert_same_bits(contract_ws(p, ws2), contract_ws(p, ws))
        finally:
            ct._set_fail_thread(old)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_every_instruction_set_gives_reference_gradients(cell, options):
    p, dy, ds = problem(cell, options, 2, 8, 20, 45, np.float32, lengths=[8, 5], scale=1 / np.sqrt(45))
    _, _, want = reference(p, dy, ds)
    old = ct.set_isa_cap(2)
    try:
        for level in (2, 1, 0):
            ct.set_isa_cap(level)
            ws = cs.forward_training(p, 2)[2]
            assert_close_grads(cs.backward(p, ws, dy, ds, 2), want, np.float32, f"isa {level}")
    finally:
        ct.set_isa_cap(old)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_ops_dispatches_small_batch_training(monkeypatch):
    """With 2 threads, training at batch 1 runs the column-split forward and backward (layers and models call
    ops too); with 1 thread, or a batch the policy leaves to the row split, never."""
    if ops.available_backends()["cython"] is not None:
        pytest.skip("cython backend not built")
    calls = []
    real_forward, real_backward = cs.forward_training, cs.backward

    def spy_forward(p, n, stats=None):
        calls.append(("forward", p.shape, n))
        return real_forward(p, n, stats)

    def spy_backward(p, ws, dy, ds, n, stats=None):
        calls.append(("backward", p.shape, n))
        return real_backward(p, ws, dy, ds, n, stats)

    monkeypatch.setattr(cs, "forward_training", spy_forward)
    monkeypatch.setattr(cs, "backward", spy_backward)
    monkeypatch.setattr(cs, "CONTENDED_WAIT", float("inf"))  # a busy machine must not turn it off mid-test
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(2)
        for cell, options in CELL_OPTIONS:
            p, dy, ds = problem(cell, options, 1, 100, 32, 256, np.float32, scale=0.06)
            assert cs.worthwhile(p, 2)
            want_y, want_states, want = reference(p, dy, ds)
            for backend in ("cython", "auto"):
                calls.clear()
                out = ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], list(p.initial_states), backend=backend,
                                      training=True, **options)
                assert out.backend == "cython"
                assert close(out.outputs, want_y, np.float32)
                g = ops.rnn_backward(out, dy, list(ds))
                assert calls == [("forward", (1, 100, 32, 256), 2), ("backward", (1, 100, 32, 256), 2)]
                assert_close_grads((g.dx, g.d_initial_states, *g.d_weights), want, np.float32, backend)
            calls.clear()
            out = ops.rnn_forward(cell, p.x, [p.W, p.R, p.b], backend="numba", training=True, **options)
            ops.rnn_backward(out, dy)
            assert calls == [], "another backend never does"
        p, dy, ds = problem("lstm", {}, 64, 100, 128, 128, np.float32)
        out = ops.rnn_forward("lstm", p.x, [p.W, p.R, p.b], backend="cython", training=True)
        ops.rnn_backward(out, dy)
        assert calls == [], "batch 64: the row split"
        fastrnn.set_num_threads(1)
        p, dy, ds = problem("lstm", {}, 1, 100, 128, 128, np.float32)
        out = ops.rnn_forward("lstm", p.x, [p.W, p.R, p.b], backend="cython", training=True)
        ops.rnn_backward(out, dy)
        assert calls == [], "one thread: never"
    finally:
        fastrnn.set_num_threads(old)


def test_layer_training_step_same_on_one_and_two_threads():
    """A Keras-style LSTM layer's forward and backward at batch 1 with 2 threads (column split) equal 1 thread
    (the Cython kernel) to float rounding."""
    from fastrnn.layers import LSTM
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 60, 24)).astype(np.float32)
    dy = rng.standard_normal((1, 60, 200)).astype(np.float32)
    old = fastrnn.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            layer = LSTM(200, return_sequences=True, seed=5)
            y = layer.forward(x, training=True)
            dx = layer.backward(dy)
            results.append((y, dx, *layer.grads))
    finally:
        fastrnn.set_num_threads(old)
    for a, b in zip(*results):
        assert close(a, b, np.float32), rel_err(a, b)
