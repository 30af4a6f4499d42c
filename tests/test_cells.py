"""PyTorch-style cells (RNNCell, LSTMCell, GRUCell): one step equals a one-step layer and the DESIGN.md equations,
on every backend; torch-like initialisation; weights validated once, when set; bad arguments rejected."""
import re

import numpy as np
import pytest

import fastrnn
from fastrnn import ops

BACKENDS = ["numpy"] + [b for b in ("numba", "cython") if ops.available_backends()[b] is None]
CELLS = {
    "rnn-tanh": (lambda **kw: fastrnn.RNNCell(3, 4, **kw), lambda **kw: fastrnn.SimpleRNN(4, **kw)),
    "rnn-relu": (lambda **kw: fastrnn.RNNCell(3, 4, nonlinearity="relu", **kw),
                 lambda **kw: fastrnn.SimpleRNN(4, activation="relu", **kw)),
    "lstm": (lambda **kw: fastrnn.LSTMCell(3, 4, **kw), lambda **kw: fastrnn.LSTM(4, **kw)),
    "gru": (lambda **kw: fastrnn.GRUCell(3, 4, **kw), lambda **kw: fastrnn.GRU(4, **kw)),
}


def esc(s):
    return re.escape(s)


def states_of(out):
    return list(out) if isinstance(out, tuple) else [out]


def random_state(cell, rng, B, dtype=np.float64):
    s = [(rng.standard_normal((B, 4)) * 0.5).astype(dtype) for _ in range(2 if isinstance(cell, fastrnn.LSTMCell) else 1)]
    return tuple(s) if len(s) == 2 else s[0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_equals_a_one_step_layer(name, backend, dtype):
    make_cell, make_layer = CELLS[name]
    rng = np.random.default_rng(0)
    cell = make_cell(dtype=dtype, backend=backend, seed=1)
    layer = make_layer(return_state=True, dtype=dtype, backend="numpy")
    layer.set_weights(cell.get_weights())  # the canonical (Keras) layout: loads unchanged
    x = rng.standard_normal((5, 3)).astype(dtype)
    state = random_state(cell, rng, 5, dtype)
    got = states_of(cell(x, state))
    assert cell.backend_used == backend
    want = layer(x[:, None, :], initial_state=states_of(state))[1:]
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=2e-5, atol=1e-6)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == (5, 4)
        np.testing.assert_allclose(g, w, **tol)
    # no state means zeros
    for g, w in zip(states_of(cell(x)), layer(x[:, None, :])[1:]):
        np.testing.assert_allclose(g, w, **tol)


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cells_follow_the_design_equations(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3))
    h = rng.standard_normal((2, 4)) * 0.5
    c = rng.standard_normal((2, 4)) * 0.5
    U = 4

    for nonlinearity, act in (("tanh", np.tanh), ("relu", lambda a: np.maximum(a, 0))):
        cell = fastrnn.RNNCell(3, 4, nonlinearity=nonlinearity, dtype="float64", backend=backend, seed=0)
        W, R, b = cell.get_weights()
        np.testing.assert_allclose(cell(x, h), act(x @ W + h @ R + b), rtol=1e-12)

    cell = fastrnn.LSTMCell(3, 4, dtype="float64", backend=backend, seed=0)
    W, R, b = cell.get_weights()
    a = x @ W + h @ R + b
    i, f, g, o = sig(a[:, :U]), sig(a[:, U:2 * U]), np.tanh(a[:, 2 * U:3 * U]), sig(a[:, 3 * U:])
    c1 = f * c + i * g
    h1, c1_got = cell(x, (h, c))
    np.testing.assert_allclose(c1_got, c1, rtol=1e-12)
    np.testing.assert_allclose(h1, o * np.tanh(c1), rtol=1e-12)

    cell = fastrnn.GRUCell(3, 4, dtype="float64", backend=backend, seed=0)
    W, R, b = cell.get_weights()
    assert b.shape == (2, 12)  # reset_after=True: input bias, recurrent bias
    u, v = x @ W + b[0], h @ R + b[1]
    z, r = sig(u[:, :U] + v[:, :U]), sig(u[:, U:2 * U] + v[:, U:2 * U])
    hh = np.tanh(u[:, 2 * U:] + r * v[:, 2 * U:])
    np.testing.assert_allclose(cell(x, h), z * h + (1 - z) * hh, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_stepping_a_cell_equals_the_layer_over_a_sequence(name):
    make_cell, make_layer = CELLS[name]
    rng = np.random.default_rng(3)
    cell = make_cell(dtype="float64", seed=4)
    layer = make_layer(return_sequences=True, return_state=True, dtype="float64", backend="numpy")
    layer.set_weights(cell.get_weights())
    x = rng.standard_normal((2, 6, 3))
    state, outputs = None, []
    for t in range(6):
        state = cell(x[:, t], state)
        outputs.append(states_of(state)[0])
    want = layer(x)
    np.testing.assert_allclose(np.stack(outputs, axis=1), want[0], rtol=1e-12)
    for g, w in zip(states_of(state), want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_unbatched_input_and_empty_batch():
    cell = fastrnn.LSTMCell(3, 4, dtype="float64", seed=0)
    x = np.random.default_rng(4).standard_normal(3)
    h, c = cell(x)
    assert h.shape == c.shape == (4,)
    h2, c2 = cell(x, (h, c))
    hb, cb = cell(x[None], (h[None], c[None]))
    np.testing.assert_array_equal(h2, hb[0])
    np.testing.assert_array_equal(c2, cb[0])
    assert fastrnn.GRUCell(3, 4)(np.zeros((0, 3))).shape == (0, 4)


def test_torch_like_initialisation_and_layout():
    for cls, g in ((fastrnn.RNNCell, 1), (fastrnn.LSTMCell, 4), (fastrnn.GRUCell, 3)):
        cell = cls(10, 16, seed=0)
        shapes = [w.shape for w in cell.get_weights()]
        bias = (2, 3 * 16) if cls is fastrnn.GRUCell else (g * 16,)
        assert shapes == [(10, g * 16), (16, g * 16), bias]
        assert cell.count_params() == sum(int(np.prod(s)) for s in shapes)
        for w in cell.get_weights():
            assert w.dtype == np.float32
            assert np.abs(w).max() <= 0.25 and np.abs(w).max() > (0.2 if w.size > 100 else 0.1)  # U(-1/4, 1/4)
        for u, v in zip(cell.get_weights(), cls(10, 16, seed=0).get_weights()):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(cell.kernel, cls(10, 16, seed=1).kernel)
        nobias = cls(10, 16, bias=False)
        assert nobias.bias is None and len(nobias.get_weights()) == 2
        x = np.ones((1, 10), np.float32)
        layer = {fastrnn.RNNCell: fastrnn.SimpleRNN, fastrnn.LSTMCell: fastrnn.LSTM,
                 fastrnn.GRUCell: fastrnn.GRU}[cls](16, use_bias=False, backend="numpy")
        layer.set_weights(nobias.get_weights())
        np.testing.assert_allclose(states_of(nobias(x))[0], layer(x[:, None]), rtol=1e-5, atol=1e-7)


def test_weights_are_validated_when_set_and_copied():
    cell = fastrnn.GRUCell(3, 2, dtype="float64")
    W, R, b = cell.get_weights()
    src = [W + 1, R, b]
    cell.set_weights(src)
    src[0][...] = 0  # set_weights copied
    np.testing.assert_array_equal(cell.kernel, W + 1)
    for weights, exc, match in [
        ([W, R], ValueError, esc("GRUCell: set_weights needs 3 arrays [kernel, recurrent_kernel, bias]; got 2")),
        ([W, R, b[0]], ValueError, esc("GRUCell: bias must have shape (2, 6); got shape (6,)")),
        ([W.T, R, b], ValueError, esc("GRUCell: kernel must have shape (3, 6); got shape (6, 3)")),
        ([W, np.full(R.shape, np.nan), b], ValueError, "recurrent_kernel must be finite"),
        ([W, R, b.astype(complex)], TypeError, "bias must be a real numeric array"),
        (W, TypeError, "GRUCell: weights must be a list of arrays; got ndarray"),
    ]:
        with pytest.raises(exc, match=match) as info:
            cell.set_weights(weights)
        assert type(info.value) is exc
    np.testing.assert_array_equal(cell.kernel, W + 1)  # unchanged by the rejected calls
    with pytest.raises(AttributeError):
        cell.kernel = W  # the parameters go through set_weights


@pytest.mark.parametrize("make,exc,match", [
    (lambda: fastrnn.RNNCell(0, 4), ValueError, "input_size must be a positive integer; got 0"),
    (lambda: fastrnn.LSTMCell(3, "4"), TypeError, "hidden_size must be a positive integer; got '4'"),
    (lambda: fastrnn.GRUCell(3, 4, bias=1), TypeError, "bias must be True or False; got 1"),
    (lambda: fastrnn.RNNCell(3, 4, nonlinearity="sigmoid"), ValueError,
     esc("nonlinearity must be one of ['relu', 'tanh']; got 'sigmoid'")),
    (lambda: fastrnn.LSTMCell(3, 4, dtype="float16"), TypeError, "dtype must be float32 or float64; got float16"),
    (lambda: fastrnn.GRUCell(3, 4, backend="gpu"), ValueError, "backend must be one of"),
    (lambda: fastrnn.GRUCell(3, 4, seed=1.5), TypeError, "seed must be a non-negative integer or None"),
], ids=["input_size", "hidden_size", "bias", "nonlinearity", "dtype", "backend", "seed"])
def test_cell_constructor_rejects(make, exc, match):
    with pytest.raises(exc, match=match) as info:
        make()
    assert type(info.value) is exc


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_call_rejects(backend):
    gru = fastrnn.GRUCell(3, 4, backend=backend)
    lstm = fastrnn.LSTMCell(3, 4, backend=backend)
    x = np.ones((2, 3), np.float32)
    h = np.zeros((2, 4), np.float32)
    for call, exc, match in [
        (lambda: gru(np.ones((2, 5))), ValueError,
         esc("x must have shape (batch, input_size=3) or (input_size=3,); got shape (2, 5)")),
        (lambda: gru(np.ones((2, 1, 3))), ValueError, esc("got shape (2, 1, 3)")),
        (lambda: gru(np.float32(1.0)), ValueError, esc("got shape ()")),
        (lambda: gru(np.full((2, 3), np.nan, np.float32)), ValueError, "x must be finite"),
        (lambda: gru(np.full((2, 3), np.inf)), ValueError, "x must be finite"),
        (lambda: gru(np.full((2, 3), "a")), TypeError, "x must be a real numeric array"),
        (lambda: gru(x, np.zeros((3, 4))), ValueError, esc("state must have shape (batch=2, hidden_size=4); got shape (3, 4)")),
        (lambda: gru(x, np.full((2, 4), np.nan, np.float32)), ValueError, "state must be finite"),
        (lambda: gru(x[0], h), ValueError, esc("state must have shape (hidden_size=4,); got shape (2, 4)")),
        (lambda: lstm(x, h), ValueError, "state must be a pair \\(h, c\\) for LSTMCell; got ndarray"),
        (lambda: lstm(x, (h,)), ValueError, "state must be a pair \\(h, c\\) for LSTMCell; got tuple of length 1"),
        (lambda: lstm(x, (h, h[:1])), ValueError, esc("state c must have shape (batch=2, hidden_size=4); got shape (1, 4)")),
    ]:
        with pytest.raises(exc, match=match) as info:
            call()
        assert type(info.value) is exc


def test_cell_never_modifies_or_returns_its_inputs():
    for cell in (fastrnn.RNNCell(3, 4), fastrnn.LSTMCell(3, 4), fastrnn.GRUCell(3, 4)):
        rng = np.random.default_rng(5)
        x = rng.standard_normal((2, 6)).astype(np.float32)[:, ::2]  # non-contiguous: the slow path converts it
        state = random_state(cell, rng, 2, np.float32)
        before = [a.copy() for a in [x] + states_of(state)]
        out = states_of(cell(x, state))
        for o in out:
            assert not any(np.shares_memory(o, a) for a in [x] + states_of(state))
            o[...] = 9.0
        for a, b in zip(before, [x] + states_of(state)):
            np.testing.assert_array_equal(a, b)
        # the cached zero default state is never handed out: writing to a result does not change the next call
        zeros = tuple(np.zeros((2, 4), np.float32) for _ in out)
        want = states_of(cell(x, zeros if len(out) == 2 else zeros[0]))
        for o in states_of(cell(x)):
            o[...] = 5.0
        for g, w in zip(states_of(cell(x)), want):
            np.testing.assert_array_equal(g, w)
