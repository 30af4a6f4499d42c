"""Every compiled backend against the NumPy reference: forward outputs, final states and every gradient.

float64 must match to 1e-10 relative (max abs difference over max abs value). float32 kernels are compared with
the float64 reference run on the same (float32-rounded) inputs, within FLOAT32_TOL.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastrnn import ops
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, contract_workspaces, random_problem, rel_err

COMPILED = ["numba", "cython"]
FLOAT64_TOL = 1e-10
# float32 has a 6e-8 unit roundoff; errors grow with the length of the sums (D, U) and of the recurrence (T).
# On the sizes below the worst seen is a few 1e-6; 1e-4 leaves room for BLAS summation orders. Results that are
# tiny through cancellation (e.g. a GRU output z*h + (1-z)*hh near 0) are judged by an absolute 1e-6 instead.
FLOAT32_TOL = 1e-4
FLOAT32_ATOL = 1e-6


def close(got, want, dtype):
    if dtype == np.float64:
        return rel_err(got, want) < FLOAT64_TOL
    return rel_err(got, want) < FLOAT32_TOL or np.max(np.abs(got - want), initial=0) < FLOAT32_ATOL


def run(backend, cell, p, options, dtype, reverse, training=True):
    weights = [p["W"], p["R"], p["b"]]
    out = ops.rnn_forward(cell, p["x"], weights, list(p["states"]), p["lengths"], reverse=reverse,
                          training=training, backend=backend, dtype=dtype, **options)
    grads = ops.rnn_backward(out, p["dy"], list(p["dstates"])) if training else None
    return out, grads


def as_dtype(p, dtype):
    """The problem rounded to dtype, so reference and kernel see exactly the same numbers."""
    def cast(v):
        if isinstance(v, tuple):
            return tuple(cast(s) for s in v)
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            return v.astype(dtype)
        return v
    return {k: cast(v) for k, v in p.items()}


def assert_conforms(backend, cell, options, p, dtype, reverse):
    p = as_dtype(p, dtype)
    out, grads = run(backend, cell, p, options, dtype, reverse)
    assert out.backend == backend
    want_out, want_grads = run("numpy", cell, as_dtype(p, np.float64), options, np.float64, reverse)
    assert out.outputs.dtype == dtype
    assert close(out.outputs, want_out.outputs, dtype), "outputs"
    for k, (got, want) in enumerate(zip(out.states, want_out.states)):
        assert got.dtype == dtype
        assert close(got, want, dtype), f"final state {k}"
    assert grads.dx.dtype == dtype
    assert close(grads.dx, want_grads.dx, dtype), "dx"
    for k, (got, want) in enumerate(zip(grads.d_initial_states, want_grads.d_initial_states)):
        assert close(got, want, dtype), f"d_initial_state {k}"
    for name, got, want in zip(("dW", "dR", "db"), grads.d_weights, want_grads.d_weights):
        assert got.shape == want.shape, name
        assert got.dtype == dtype, name
        assert close(got, want, dtype), name


@pytest.fixture(params=COMPILED, scope="module")
def backend(request):
    reason = ops.available_backends()[request.param]
    assert reason is None, f"compiled backend {request.param} must be available: {reason}"
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference(backend, cell, options, lengths, reverse, dtype):
    p = random_problem(cell, B=5, T=7, D=6, U=8, seed=11, lengths=lengths, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_blas_sized(backend, cell, options, dtype):
    """Sizes where BLAS takes its blocked paths."""
    p = random_problem(cell, B=16, T=12, D=40, U=67, seed=12, lengths="mixed", scale=0.2, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_in_column_blocks(backend, cell, options, dtype):
    """Per-step products above SMALL_GEMM_MNK (batch x units x gates*units > 1e6, also GRU's h @ R[:, :2U] and
    backward's dA @ R.T) run in column blocks of a multiple of 16 plus a remainder: every block must land."""
    from fastrnn.kernels.numba_common import MIN_BLOCK, SMALL_GEMM_MNK
    B, U = 17, 200
    assert B * U * U > SMALL_GEMM_MNK / 2 and B * U * 4 * MIN_BLOCK <= SMALL_GEMM_MNK
    p = random_problem(cell, B=B, T=5, D=8, U=U, seed=13, lengths="mixed", scale=0.1, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse=False)


@pytest.mark.parametrize("T", [1, 3, 4, 9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_packed_and_blas_products(backend, cell, options, dtype, T):
    """The Cython kernels pack W and R into panels when enough products use them (fused_blas.pack_pays: steps for
    R, blocks of 4 rows of x for W), else call BLAS: T = 1, 3 below the limit, 4, 9 above. Units and features not
    a multiple of a panel's columns (zero-padded last panel), batch 6 = a block of 4 rows + a block of 2."""
    p = random_problem(cell, B=6, T=T, D=19, U=37, seed=14, lengths="mixed", scale=0.3, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse=False)


@pytest.mark.parametrize("lengths", ["full", "mixed", "equal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_with_the_input_projection_per_step(backend, cell, options, dtype, lengths):
    """From 8 rows (fused_blas.step_projection_pays) the Cython kernels project x per step (LSTM and SimpleRNN in
    one product with h @ R, GRU in a product of its own): the step's inputs read in place from x when every row is
    at the same position (forward in time, or reverse with equal lengths), else gathered (reverse, ragged).
    Batch 9 = blocks of 4, 4 and 1 rows; features and units not a multiple of a panel's columns."""
    B, T = 9, 7
    lens = {"full": "full", "mixed": "mixed", "equal": [5] * B}[lengths]
    p = random_problem(cell, B=B, T=T, D=19, U=37, seed=18, lengths=lens, scale=0.3, **options)
    for reverse in (False, True):
        assert_conforms(backend, cell, options, p, dtype, reverse=reverse)


@pytest.mark.parametrize("T", [15, 16])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_at_batch_1_around_the_gemv_packing_limit(backend, cell, options, T):
    """At batch 1 the Cython kernels pack R only from fused_blas.PACK_MIN_GEMV_STEPS = 16 steps (pack_pays_steps):
    15 steps run BLAS's gemv on R and R.T, 16 the packed product; reverse and a forward from h0."""
    p = random_problem(cell, B=1, T=T, D=19, U=37, seed=16, scale=0.3, **options)
    for reverse in (False, True):
        assert_conforms(backend, cell, options, p, np.float64, reverse=reverse)


@pytest.mark.parametrize("cell,options,U,dtype", [("lstm", {}, 512, np.float32), ("gru", dict(reset_after=True), 512,
                                                                                      np.float64)],
                         ids=["lstm-512-f32", "gru-512-f64"])
def test_kernel_matches_reference_with_large_packed_matrices(backend, cell, options, U, dtype):
    """Matrices of fused_blas.PACK_TILE_BYTES (4 MB) and more are packed in groups of panels with prefetching:
    W and R of LSTM 512 float32 are 4 MB exactly, GRU 512 float64 6.3 MB (16 rows of x: W packed too)."""
    p = random_problem(cell, B=4, T=4, D=U, U=U, seed=17, lengths="mixed", scale=0.05, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_kernel_matches_reference_packed_in_row_chunks(backend, dtype):
    """The packed input projection and dx run in chunks of rows (fused_blas.PACKED_CHUNK_BYTES = 1 MB of x): here
    40 * 60 = 2400 rows of 64 features is 1-2 chunks' worth at both dtypes, and dx's rows (4 * 16 columns) too."""
    p = random_problem("lstm", B=40, T=60, D=64, U=16, seed=15, lengths="mixed", scale=0.3)
    assert_conforms(backend, "lstm", {}, p, dtype, reverse=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_weight_gradients_in_chunks(backend, cell, options, dtype):
    """The Cython backward sums dW = x^T dA and dR = h^T dA over chunks of 512 positions (fused_blas.weight_grads),
    in blocks of 256 (float32) / 128 (float64) of x's features: 3 * 200 = 600 positions (a chunk and a tail) and
    300 features."""
    p = random_problem(cell, B=3, T=200, D=300, U=6, seed=16, lengths="mixed", scale=0.05, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse=False)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernel_matches_reference_random_shapes(backend, cell, options, data):
    B = data.draw(st.integers(1, 4), "batch")
    T = data.draw(st.integers(1, 5), "timesteps")
    D = data.draw(st.integers(1, 4), "features")
    U = data.draw(st.integers(1, 4), "units")
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B) | st.just("full"), "lengths")
    reverse = data.draw(st.booleans(), "reverse")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), "dtype")
    seed = data.draw(st.integers(0, 2**16), "seed")
    p = random_problem(cell, B, T, D, U, seed=seed, lengths=lengths, **options)
    assert_conforms(backend, cell, options, p, dtype, reverse)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_inference_mode_equals_training_mode(backend, cell, options):
    p = random_problem(cell, B=4, T=6, D=3, U=5, seed=2, lengths="mixed", **options)
    infer, _ = run(backend, cell, p, options, np.float64, reverse=True, training=False)
    train, _ = run(backend, cell, p, options, np.float64, reverse=True, training=True)
    assert infer.tape is None
    np.testing.assert_array_equal(infer.outputs, train.outputs)
    for a, b in zip(infer.states, train.states):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_kernels_accept_read_only_inputs_and_never_modify_them(backend, cell, options):
    p = random_problem(cell, B=3, T=5, D=4, U=3, seed=9, lengths="mixed", **options)
    originals = {k: (tuple(s.copy() for s in v) if isinstance(v, tuple) else v.copy())
                 for k, v in p.items() if v is not None}
    for v in p.values():
        for a in (v if isinstance(v, tuple) else (v,)):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
    out, grads = run(backend, cell, p, options, np.float64, reverse=False)
    run(backend, cell, p, options, np.float64, reverse=True)
    for k, v in originals.items():
        for a, b in zip(v if isinstance(v, tuple) else (v,), p[k] if isinstance(p[k], tuple) else (p[k],)):
            np.testing.assert_array_equal(a, b)
    # backward twice from one forward gives the same gradients: the saved workspaces are not consumed
    again = ops.rnn_backward(out, p["dy"], list(p["dstates"]))
    np.testing.assert_array_equal(grads.dx, again.dx)
    for a, b in zip(grads.d_weights, again.d_weights):
        np.testing.assert_array_equal(a, b)


def test_auto_picks_a_compiled_backend():
    p = random_problem("lstm", B=2, T=3, D=2, U=2, seed=0)
    out = ops.rnn_forward("lstm", p["x"], [p["W"], p["R"], p["b"]])
    assert out.backend in COMPILED


def test_auto_picks_cython_then_numba_and_layers_follow_their_backend(monkeypatch):
    """ops.COMPILED_PREFERENCE: Cython at every size and mode, Numba where Cython does not load; an explicit backend
    is kept; layers and cells re-select when their backend changes."""
    import fastrnn
    dt = np.dtype(np.float32)
    for shape in ((1, 1, 8, 8), (1, 2, 8, 8), (4, 40, 64, 64)):
        assert ops.select_kernel("lstm", "auto", dt, shape).name == "cython"
        assert ops.select_kernel("lstm", "numba", dt, shape).name == "numba"
    assert ops.select_kernel("lstm", "auto", dt, (0, 2, 8, 8)).name == "numpy"   # nothing to compile for
    x = np.ones((1, 2, 8), np.float32)
    for training in (False, True):
        assert ops.rnn_forward("lstm", x, [np.ones((8, 32), np.float32)] * 2, training=training).backend == "cython"
    layer = fastrnn.LSTM(64, return_sequences=True, seed=0)
    cell = fastrnn.LSTMCell(64, 64, seed=0)
    rng = np.random.default_rng(0)
    for B, T, training in ((1, 2, False), (1, 2, True), (4, 40, True), (0, 3, False), (8, 20, False)):
        xb = rng.standard_normal((B, T, 64)).astype(np.float32)
        y = layer(xb, training=training)
        assert layer.backend_used == ("cython" if B else "numpy")
        want = ops.rnn_forward("lstm", xb, layer.get_weights(), backend="numpy").outputs
        assert rel_err(y, want) < FLOAT32_TOL
        h, c = cell(xb[:, 0], (np.zeros((B, 64), np.float32),) * 2)
        assert cell.backend_used == ("cython" if B else "numpy")
        assert rel_err(h, ops.rnn_forward("lstm", xb[:, :1], cell.weights, backend="numpy").states[0]) < FLOAT32_TOL
    layer.backend = "numba"
    assert layer(xb).shape == y.shape and layer.backend_used == "numba"
    # without the Cython kernels "auto" runs Numba
    cython = ops.KERNELS[("lstm", "cython", dt)]
    monkeypatch.setattr(cython, "available", lambda: False)
    assert ops.select_kernel("lstm", "auto", dt, (4, 40, 64, 64)).name == "numba"


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_no_bias_gives_no_bias_gradient(backend, cell, options):
    p = random_problem(cell, B=2, T=3, D=2, U=3, seed=0, **options)
    out = ops.rnn_forward(cell, p["x"], [p["W"], p["R"]], training=True, backend=backend, **options)
    ref = ops.rnn_forward(cell, p["x"], [p["W"], p["R"]], training=True, backend="numpy", **options)
    assert rel_err(out.outputs, ref.outputs) < FLOAT64_TOL
    grads = ops.rnn_backward(out, p["dy"])
    assert len(grads.d_weights) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numba_step_matmul_in_column_blocks(dtype):
    """numba_common.matmul (the per-step product, in column blocks through BLAS directly) equals a @ b for
    shapes below, above and far above SMALL_GEMM_MNK, with a remainder block, read-only operands included."""
    nc = pytest.importorskip("fastrnn.kernels.numba_common")
    rng = np.random.default_rng(5)
    for m, k, n in [(1, 300, 1200), (3, 5, 7), (16, 128, 512), (17, 200, 800), (64, 128, 520), (16, 1000, 4000),
                    (2, 1000, 1000)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        b.flags.writeable = False
        out = np.full((m, n), np.nan, dtype)
        nc.matmul(a, b, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-3 if dtype == np.float32 else 1e-10)



def results_with_workspaces(fill, path, cell, options, reverse, monkeypatch):
    """(results, workspaces) of a training forward + backward whose workspaces come filled with `fill`: path
    "numba" or "cython" (ops, on fastrnn's current thread count; with more than one thread the batch must split
    into row blocks) or "columns" (the column split on 2 threads). The workspaces listed are those the contract
    defines."""
    from fastrnn import _column_split, threads
    B = 3 if path == "columns" else 8
    r = random_problem(cell, B=B, T=6, D=5, U=7, seed=21, lengths="mixed", **options)
    reset_after = options.get("reset_after", True)
    p = ops.make_problem(cell, r["x"], [r["W"], r["R"], r["b"]], list(r["states"]), r["lengths"], reverse,
                         options.get("activation", "tanh"), reset_after, np.float64)

    def workspaces(cell_, B_, T_, U_, dtype):
        return tuple(np.full((B_, T_, w * U_), fill, dtype) for _, w in ops.WORKSPACES[cell_])
    monkeypatch.setattr(ops, "training_workspaces", workspaces)
    if path == "columns":
        y, finals, ws = _column_split.forward_training(p, 2)
        dx, d_init, dW, dR, db = _column_split.backward(p, ws, r["dy"], r["dstates"], 2)
        results = (y, *finals, dx, *d_init, dW, dR, db)
    else:
        if threads.get_num_threads() > 1:
            assert ops.KERNELS[(cell, path, p.x.dtype)].blocks(p, 1) is not None
        out = ops.rnn_forward(cell, r["x"], [r["W"], r["R"], r["b"]], list(r["states"]), r["lengths"],
                              reverse=reverse, training=True, backend=path, **options)
        assert out.backend == path
        ws = out.tape
        g = ops.rnn_backward(out, r["dy"], list(r["dstates"]))
        results = (out.outputs, *out.states, g.dx, *g.d_initial_states, *g.d_weights)
    return results, list(contract_workspaces(cell, reset_after, ws))


def assert_workspaces_fully_written(path, cell, options, reverse, monkeypatch):
    """ops hands a training forward uninitialized workspaces (a recycled block holds what its last user left), so
    every forward path must write each element the backward reads, zeros at padded positions: workspaces filled
    with NaN beforehand give the same bits as workspaces filled with zeros (outputs, workspaces, gradients)."""
    want, want_ws = results_with_workspaces(0.0, path, cell, options, reverse, monkeypatch)
    got, got_ws = results_with_workspaces(np.nan, path, cell, options, reverse, monkeypatch)
    for a, b in zip(got_ws + list(got), want_ws + list(want)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("n_threads", [1, 2], ids=["whole", "rows"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_forward_writes_every_workspace_element(backend, cell, options, n_threads, reverse, monkeypatch):
    """The whole batch on one thread, and blocks of rows on fastrnn's threads (2)."""
    from fastrnn import threads
    old = threads.get_num_threads()
    try:
        threads.set_num_threads(n_threads)
        monkeypatch.setattr(threads, "MIN_FLOPS_PER_BLOCK", 1.0)  # split even this small problem
        assert_workspaces_fully_written(backend, cell, options, reverse, monkeypatch)
    finally:
        threads.set_num_threads(old)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_column_split_forward_writes_every_workspace_element(cell, options, reverse, monkeypatch):
    from fastrnn import _column_split
    if _column_split.kernel_module() is None:
        pytest.skip(f"column-split kernel not built: {_column_split.unavailable_reason()}")
    assert_workspaces_fully_written("columns", cell, options, reverse, monkeypatch)
