"""Layer backward passes against central finite differences in float64, and compiled backends against numpy.

Every check uses a scalar loss L = sum_k <P_k, output_k> with fixed random projections P_k (one per returned array:
output, final states, ...), so the gradient handed to backward is P itself. Finite differences perturb x, every
weight (the live arrays, in place) and the initial states one entry at a time.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import ops
from fastrnn.layers import activations
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, n_states, rel_err

EPS = 1e-6
FD_TOL = 1e-6        # relative (max abs error / max abs value) for central differences in float64
F64_TOL = 1e-10      # compiled backends vs numpy, float64
F32_TOL = 1e-4       # compiled float32 vs numpy float64 on the same rounded inputs
COMPILED = [b for b in ("numba", "cython") if ops.available_backends()[b] is None]

B, T, D, U = 3, 4, 2, 2
LENGTHS = np.array([4, 2, 0])   # a full row, a padded row, an empty row


def numeric_grad(f, arr):
    """d f() / d arr by central differences, perturbing arr in place (it must be what f reads)."""
    g = np.zeros(arr.shape)
    flat = arr.reshape(-1)
    assert np.shares_memory(flat, arr)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        g.flat[i] = (fp - fm) / (2 * EPS)
    return g


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_close(got, want, what, tol=FD_TOL):
    assert got.shape == want.shape, what
    err = rel_err(got, want)
    assert err < tol, f"{what}: relative error {err:.2e}"


def make_rnn(cell, options, **kw):
    kw.setdefault("backend", "numpy")
    kw.setdefault("dtype", "float64")
    cls = {"simple_rnn": fastrnn.SimpleRNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    return cls(U, **options, **kw)


def randomize(layer, rng, scale=0.6):
    layer.set_weights([rng.standard_normal(w.shape) * scale for w in layer.get_weights()])


def check_fd(layer, run, x, states=(), grad_list=False):
    """run(training) -> output(s) of layer on x (and `states`, arrays run reads). Checks dx, grads, d_states."""
    rng = np.random.default_rng(99)
    proj = [rng.standard_normal(o.shape) for o in as_list(run(False))]

    def loss():
        return sum(float((p * o).sum()) for p, o in zip(proj, as_list(run(False))))

    run(True)
    dx = layer.backward(proj if grad_list else proj[0])
    grads = [g.copy() for g in layer.grads]
    d_init = getattr(layer, "d_initial_states", None)
    if dx is not None:
        assert_close(dx, numeric_grad(loss, x), "dx")
    for k, (w, g) in enumerate(zip(layer.weights, grads)):
        assert_close(g, numeric_grad(loss, w), f"grad of weight {k}")
    for k, s in enumerate(states):
        assert_close(d_init[k], numeric_grad(loss, s), f"d_initial_state {k}")


# ---------------------------------------------------------------------------------------------------------------
# Recurrent layers through every option
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "back"])
@pytest.mark.parametrize("masking", ["none", "mask-carry", "mask-zeros"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_recurrent_backward_matches_finite_differences(cell, options, masking, go_backwards, return_sequences):
    rng = np.random.default_rng(1)
    layer = make_rnn(cell, options, return_sequences=return_sequences, return_state=True,
                     go_backwards=go_backwards, zero_output_for_mask=(masking == "mask-zeros"))
    layer.build((None, None, D))
    randomize(layer, rng)
    x = rng.standard_normal((B, T, D))
    h0 = [rng.standard_normal((B, U)) * 0.5 for _ in range(n_states(cell))]
    mask = None if masking == "none" else np.arange(T)[None, :] < LENGTHS[:, None]

    def run(training):
        return layer.forward(x, mask=mask, training=training, initial_state=h0)

    check_fd(layer, run, x, h0, grad_list=True)


@pytest.mark.parametrize("cell,options", [CELL_OPTIONS[0], CELL_OPTIONS[2], CELL_OPTIONS[3]],
                         ids=["rnn", "lstm", "gru"])
def test_recurrent_backward_without_bias_state_or_initial_state(cell, options):
    """The plain Sequential case: no return_state, zero initial states, use_bias=False, lengths instead of mask."""
    rng = np.random.default_rng(2)
    layer = make_rnn(cell, options, return_sequences=True, use_bias=False)
    layer.build((None, None, D))
    randomize(layer, rng)
    x = rng.standard_normal((B, T, D))

    def run(training):
        return layer(x, lengths=LENGTHS, training=training)

    check_fd(layer, run, x)
    assert len(layer.grads) == 2


def test_d_states_keyword_equals_list_form():
    rng = np.random.default_rng(3)
    layer = make_rnn("lstm", {}, return_sequences=True, return_state=True, seed=0)
    x = rng.standard_normal((B, T, D))
    out = layer.forward(x, lengths=LENGTHS, training=True)
    dy, dh, dc = (rng.standard_normal(o.shape) for o in out)
    a = layer.backward([dy, dh, dc])
    ga = layer.grads
    b = layer.backward(dy, d_states=[dh, dc])
    np.testing.assert_array_equal(a, b)
    for u, v in zip(ga, layer.grads):
        np.testing.assert_array_equal(u, v)
    # None entries are zeros
    c = layer.backward([dy, None, None])
    d = layer.backward(dy)
    np.testing.assert_array_equal(c, d)


def test_return_sequences_false_sends_no_gradient_through_empty_rows():
    layer = make_rnn("gru", {"reset_after": True}, seed=0)
    x = np.random.default_rng(4).standard_normal((B, T, D))
    y = layer.forward(x, lengths=LENGTHS, training=True)
    np.testing.assert_array_equal(y[2], 0)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx[2], 0)       # the empty row's output is the constant 0
    np.testing.assert_array_equal(dx[1, 2:], 0)   # padded steps are not read
    np.testing.assert_array_equal(layer.d_initial_states[0][2], 0)


@pytest.mark.parametrize("cell,options", [CELL_OPTIONS[1], CELL_OPTIONS[2], CELL_OPTIONS[4]],
                         ids=["rnn-relu", "lstm", "gru-rb"])
def test_stateful_backward_matches_finite_differences(cell, options):
    """Stateful: the initial states are the stored states; gradients stop at the call (d_initial_states)."""
    rng = np.random.default_rng(5)
    layer = make_rnn(cell, options, return_sequences=True, stateful=True, batch_input_shape=(B, None, D))
    layer.build((B, None, D))
    randomize(layer, rng)
    x = rng.standard_normal((B, T, D))
    s0 = [rng.standard_normal((B, U)) * 0.5 for _ in range(n_states(cell))]

    def run(training):
        layer.reset_states(s0)
        return layer(x, mask=np.arange(T)[None, :] < LENGTHS[:, None], training=training)

    check_fd(layer, run, x, s0)


# ---------------------------------------------------------------------------------------------------------------
# Bidirectional
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None], ids=str)
@pytest.mark.parametrize("cell,options", [CELL_OPTIONS[0], CELL_OPTIONS[2], CELL_OPTIONS[3]],
                         ids=["rnn", "lstm", "gru"])
def test_bidirectional_backward_matches_finite_differences(cell, options, merge_mode, return_sequences):
    rng = np.random.default_rng(6)
    layer = fastrnn.Bidirectional(make_rnn(cell, options, return_sequences=return_sequences, return_state=True),
                                  merge_mode=merge_mode)
    layer.build((None, None, D))
    randomize(layer, rng)
    x = rng.standard_normal((B, T, D))
    h0 = [rng.standard_normal((B, U)) * 0.5 for _ in range(2 * n_states(cell))]

    def run(training):  # [output, states...], or [y_forward, y_backward, states...] with merge_mode None
        return layer(x, initial_state=h0, lengths=LENGTHS, training=training)

    check_fd(layer, run, x, h0, grad_list=True)


@pytest.mark.parametrize("merge_mode", ["concat", "mul", None], ids=str)
def test_bidirectional_backward_plain(merge_mode):
    """No state outputs, no initial states, a mask: what a Sequential does."""
    rng = np.random.default_rng(7)
    layer = fastrnn.Bidirectional(make_rnn("lstm", {}, return_sequences=True), merge_mode=merge_mode)
    layer.build((None, None, D))
    randomize(layer, rng)
    x = rng.standard_normal((B, T, D))
    mask = np.arange(T)[None, :] < LENGTHS[:, None]

    def run(training):
        return layer.forward(x, mask=mask, training=training)

    check_fd(layer, run, x, grad_list=merge_mode is None)


# ---------------------------------------------------------------------------------------------------------------
# Core layers
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", sorted(activations.ACTIVATIONS))
def test_dense_backward_matches_finite_differences(activation):
    rng = np.random.default_rng(8)
    layer = fastrnn.Dense(3, activation=activation, dtype="float64", bias_initializer="random_normal", seed=1)
    for shape in ((4, 5), (2, 3, 5)):
        x = rng.standard_normal(shape)
        if activation in ("relu", "relu6", "leaky_relu", "hard_sigmoid", "elu", "selu"):
            x *= 2.0  # spread pre-activations; random values do not sit on a kink within EPS

        def run(training):
            return layer.forward(x, training=training)

        check_fd(layer, run, x)


def test_dense_without_bias_and_activation_layer():
    rng = np.random.default_rng(9)
    layer = fastrnn.Dense(4, use_bias=False, dtype="float64", seed=0)
    x = rng.standard_normal((3, 2, 5))
    check_fd(layer, lambda training: layer.forward(x, training=training), x)
    assert len(layer.grads) == 1
    for name in ("softmax", "tanh", "gelu"):
        act = fastrnn.Activation(name, dtype="float64")
        check_fd(act, lambda training: act.forward(x, training=training), x)


def test_embedding_backward_scatters_into_the_embedding_gradient():
    rng = np.random.default_rng(10)
    layer = fastrnn.Embedding(6, 3, dtype="float64", seed=0)
    idx = np.array([[1, 2, 2, 0], [5, 1, 0, 0]])  # repeated indices accumulate
    layer.build(idx.shape)

    def run(training):
        return layer.forward(idx, training=training)

    check_fd(layer, run, None)
    y = layer.forward(idx, training=True)
    assert layer.backward(np.ones_like(y)) is None  # indices are not differentiable
    counts = np.bincount(idx.ravel(), minlength=6)
    np.testing.assert_array_equal(layer.grads[0], np.repeat(counts[:, None], 3, axis=1))


def test_dropout_backward_with_a_fixed_mask():
    """The same seed gives the same drop pattern: finite differences through fresh layers."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 5))
    p = rng.standard_normal(x.shape)

    def loss():
        return float((p * fastrnn.Dropout(0.4, seed=3, dtype="float64").forward(x, training=True)).sum())

    layer = fastrnn.Dropout(0.4, seed=3, dtype="float64")
    y = layer.forward(x, training=True)
    dx = layer.backward(p)
    assert_close(dx, numeric_grad(loss, x), "dx")
    kept = y != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(dx[kept], p[kept] / 0.6, rtol=1e-14)
    np.testing.assert_array_equal(dx[~kept], 0)
    # inference: the identity, forward and backward
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(p), p)


def test_flatten_backward():
    x = np.random.default_rng(12).standard_normal((2, 3, 4))
    layer = fastrnn.Flatten(dtype="float64")
    check_fd(layer, lambda training: layer.forward(x, training=training), x)


def test_backward_needs_a_training_forward():
    x = np.ones((2, 3, 4))
    for layer in (fastrnn.LSTM(2), fastrnn.Dense(2), fastrnn.Bidirectional(fastrnn.GRU(2)), fastrnn.Activation("relu"),
                  fastrnn.Flatten()):
        with pytest.raises(ValueError, match="backward needs a forward with training=True first"):
            layer.backward(np.ones(3))
        layer.forward(x, training=True)
        layer.forward(x)  # inference drops the tape
        with pytest.raises(ValueError, match="backward needs a forward with training=True first"):
            layer.backward(np.ones(3))
    emb = fastrnn.Embedding(3, 2)
    with pytest.raises(ValueError, match="backward needs a forward with training=True first"):
        emb.backward(np.ones((1, 2)))


def test_backward_rejects_a_gradient_of_the_wrong_shape():
    lstm = fastrnn.LSTM(2, return_sequences=True, backend="numpy")
    lstm.forward(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match=r"lstm: dy must have shape \(2, 3, 2\) \(the output's shape\); got shape \(2, 2\)"):
        lstm.backward(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"lstm: d_states\[1\] must have shape \(batch=2, units=2\)"):
        lstm.backward(np.ones((2, 3, 2)), d_states=[None, np.ones((3, 2))])
    dense = fastrnn.Dense(3)
    dense.forward(np.ones((2, 4)), training=True)
    with pytest.raises(ValueError, match=r"dense: dy must have shape \(2, 3\)"):
        dense.backward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dy must be finite"):
        dense.backward(np.full((2, 3), np.nan))


def test_grads_are_zeros_before_backward_and_replaced_by_it():
    layer = fastrnn.Dense(2, seed=0)
    layer.build((None, 3))
    assert [g.shape for g in layer.grads] == [(3, 2), (2,)]
    assert all(not g.any() for g in layer.grads)
    layer.forward(np.ones((4, 3)), training=True)
    layer.backward(np.ones((4, 2)))
    first = layer.grads
    np.testing.assert_array_equal(first[1], [4.0, 4.0])
    layer.backward(np.ones((4, 2)))  # overwrites, never accumulates
    np.testing.assert_array_equal(layer.grads[1], [4.0, 4.0])


# ---------------------------------------------------------------------------------------------------------------
# Compiled backends equal numpy through the layers (forward and backward)
# ---------------------------------------------------------------------------------------------------------------

def _run_layer(make, backend, dtype, x, kwargs, seed=0):
    layer = make(backend, dtype)
    layer.build((None,) + x.shape[1:])
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape) * 0.5 for w in layer.get_weights()])
    out = as_list(layer.forward(x.astype(dtype), training=True, **kwargs))
    proj = [np.random.default_rng(seed + 1).standard_normal(o.shape) for o in out]
    dx = layer.backward(proj if len(out) > 1 else proj[0])
    return out, dx, layer.grads, layer


LAYER_CASES = {
    "lstm-seq-mask": lambda be, dt: fastrnn.LSTM(U + 3, return_sequences=True, return_state=True, backend=be, dtype=dt),
    "gru-back-last": lambda be, dt: fastrnn.GRU(U + 3, go_backwards=True, return_state=True, backend=be, dtype=dt),
    "gru-rb-seq-carry": lambda be, dt: fastrnn.GRU(U + 3, reset_after=False, return_sequences=True, backend=be,
                                                   dtype=dt),
    "rnn-relu-back-seq": lambda be, dt: fastrnn.SimpleRNN(U + 3, activation="relu", go_backwards=True,
                                                         return_sequences=True, zero_output_for_mask=True,
                                                         backend=be, dtype=dt),
    "bi-lstm-concat": lambda be, dt: fastrnn.Bidirectional(
        fastrnn.LSTM(U + 3, return_sequences=True, backend=be, dtype=dt)),
    "bi-gru-mul-state": lambda be, dt: fastrnn.Bidirectional(
        fastrnn.GRU(U + 3, return_state=True, backend=be, dtype=dt), merge_mode="mul"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_compiled_backends_equal_numpy_through_layers(case, backend, dtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 7, 4)).astype(dtype)
    lengths = np.array([7, 0, 3, 6, 1])
    kwargs = {"mask": np.arange(7)[None, :] < lengths[:, None]}
    got, dx, grads, layer = _run_layer(LAYER_CASES[case], backend, dtype, x, kwargs)
    assert layer.backend_used == backend
    want, dx_ref, grads_ref, _ = _run_layer(LAYER_CASES[case], "numpy", "float64", x, kwargs)
    tol = F64_TOL if dtype == "float64" else F32_TOL
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert rel_err(g, w) < tol
    assert rel_err(dx, dx_ref) < tol
    for g, w in zip(grads, grads_ref):
        assert g.dtype == dtype
        assert rel_err(g, w) < tol
