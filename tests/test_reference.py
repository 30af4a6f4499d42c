"""The NumPy reference against finite differences (float64) and against its own semantics by construction."""
import numpy as np
import pytest

from fastrnn import reference as ref
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, n_states, random_problem, rel_err

# Central differences with step 1e-6 in float64 reach ~1e-9 relative on these sizes; 1e-7 leaves headroom
# while still catching any wrong term (those give errors of order 1e-1).
FD_STEP = 1e-6
FD_TOL = 1e-7


def run_forward(cell, p, options, training=False, states=None, lengths="from-p"):
    f = getattr(ref, cell + "_forward")
    states = p["states"] if states is None else states
    lengths = p["lengths"] if lengths == "from-p" else lengths
    return f(p["x"], p["W"], p["R"], p["b"], *states, lengths=lengths, training=training, **options)


def loss(cell, p, options):
    """A scalar whose gradient w.r.t. y and the final states is p['dy'] and p['dstates']."""
    y, finals, _ = run_forward(cell, p, options)
    return np.sum(y * p["dy"]) + sum(np.sum(s * d) for s, d in zip(finals, p["dstates"]))


def numeric_grad(cell, p, options, arr):
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + FD_STEP
        up = loss(cell, p, options)
        arr[idx] = old - FD_STEP
        down = loss(cell, p, options)
        arr[idx] = old
        grad[idx] = (up - down) / (2 * FD_STEP)
    return grad


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", ["full", "mixed"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_gradients_match_finite_differences(cell, options, lengths, reverse):
    p = random_problem(cell, B=3, T=4, D=2, U=3, seed=7, lengths=lengths, **options)
    opts = dict(options, reverse=reverse)
    _, _, cache = run_forward(cell, p, opts, training=True)
    grads = getattr(ref, cell + "_backward")(cache, p["dy"], p["dstates"])

    targets = {"dx": p["x"], "dW": p["W"], "dR": p["R"], "db": p["b"], "dh0": p["states"][0]}
    if n_states(cell) == 2:
        targets["dc0"] = p["states"][1]
    assert set(grads) == set(targets)
    for name, arr in targets.items():
        assert grads[name].shape == arr.shape, name
        err = rel_err(grads[name], numeric_grad(cell, p, opts, arr))
        assert err < FD_TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_lengths_equal_running_each_row_alone(cell, options):
    """Row b with length L gives the outputs and final state of running x[b, :L] alone; padded outputs are 0."""
    p = random_problem(cell, B=4, T=5, D=3, U=2, seed=3, lengths=[5, 0, 2, 4], **options)
    for reverse in (False, True):
        y, finals, _ = run_forward(cell, p, dict(options, reverse=reverse))
        for b, L in enumerate(p["lengths"]):
            row = dict(p, x=p["x"][b:b + 1, :L])
            states = [s[b:b + 1] for s in p["states"]]
            y_b, finals_b, _ = run_forward(cell, row, dict(options, reverse=reverse), states=states, lengths=None)
            np.testing.assert_allclose(y[b, :L], y_b[0], rtol=1e-12, atol=1e-12)
            assert not y[b, L:].any()
            for s, s_b in zip(finals, finals_b):
                np.testing.assert_allclose(s[b], s_b[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_reverse_equals_forward_on_flipped_sequence(cell, options):
    p = random_problem(cell, B=2, T=6, D=3, U=4, seed=5, **options)
    y_rev, finals_rev, _ = run_forward(cell, p, dict(options, reverse=True))
    y_fwd, finals_fwd, _ = run_forward(cell, dict(p, x=p["x"][:, ::-1]), dict(options, reverse=False))
    np.testing.assert_allclose(y_rev, y_fwd[:, ::-1], rtol=1e-12, atol=1e-12)
    for a, b in zip(finals_rev, finals_fwd):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_training_and_inference_give_the_same_outputs(cell, options):
    p = random_problem(cell, B=3, T=4, D=2, U=3, seed=1, lengths="mixed", **options)
    y0, f0, cache0 = run_forward(cell, p, options, training=False)
    y1, f1, cache1 = run_forward(cell, p, options, training=True)
    assert cache0 is None and cache1 is not None
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(f0, f1):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_float32_follows_float64(cell, options):
    p64 = random_problem(cell, B=3, T=20, D=4, U=5, seed=2, lengths="mixed", **options)
    p32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64
               else tuple(s.astype(np.float32) for s in v) if isinstance(v, tuple) else v) for k, v in p64.items()}
    y64, f64, c64 = run_forward(cell, p64, options, training=True)
    y32, f32, c32 = run_forward(cell, p32, options, training=True)
    assert y32.dtype == np.float32 and all(s.dtype == np.float32 for s in f32)
    assert rel_err(y32, y64) < 1e-5
    g64 = getattr(ref, cell + "_backward")(c64, p64["dy"], p64["dstates"])
    g32 = getattr(ref, cell + "_backward")(c32, p32["dy"], p32["dstates"])
    for name in g64:
        assert g32[name].dtype == np.float32, name
        assert rel_err(g32[name], g64[name]) < 1e-4, name


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_reference_does_not_modify_its_inputs(cell, options):
    p = random_problem(cell, B=3, T=4, D=2, U=3, seed=4, lengths="mixed", **options)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else tuple(s.copy() for s in v))
              for k, v in p.items() if v is not None}
    _, _, cache = run_forward(cell, p, options, training=True)
    getattr(ref, cell + "_backward")(cache, p["dy"], p["dstates"])
    for k, v in before.items():
        for a, b in zip(v if isinstance(v, tuple) else (v,), p[k] if isinstance(p[k], tuple) else (p[k],)):
            np.testing.assert_array_equal(a, b)


def test_sigmoid_is_stable_and_propagates_nan():
    a = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ref.sigmoid(np.nan_to_num(a, nan=0.0))
    np.testing.assert_allclose(s, [0.0, 1.9287e-22, 0.5, 1.0, 1.0, 0.5], rtol=1e-4, atol=0)
    assert np.isnan(ref.sigmoid(a)[-1])
    assert ref.sigmoid(a).dtype == np.float32
