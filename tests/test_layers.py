"""Keras 3 semantics of the layers fastrnn.SimpleRNN / LSTM / GRU (backend="numpy").

Three kinds of oracle:
- a line-by-line transcription of Keras' own time loop (keras.src.backend.tensorflow.rnn.rnn, masked branch,
  unroll=False), whose cell step is fastrnn.reference run on one time step: it covers masks, go_backwards,
  zero_output_for_mask, initial states and return_state without going through fastrnn's lengths/reverse code;
- semantics by construction (a row with length L equals running it alone on x[:, :L]; go_backwards equals the
  forward layer on the flipped valid part) and the DESIGN.md equations evaluated by hand, scalar by scalar;
- Keras' parameter-count formulas and literal counts from Keras model summaries.
"""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import initializers, reference
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, GATES, bias_shape, n_states

TOL64 = dict(rtol=1e-12, atol=1e-12)
TOL32 = dict(rtol=1e-5, atol=1e-6)


def make_layer(cell, options, units, **kw):
    kw.setdefault("backend", "numpy")
    if cell == "simple_rnn":
        return fastrnn.SimpleRNN(units, **options, **kw)
    if cell == "lstm":
        return fastrnn.LSTM(units, **options, **kw)
    return fastrnn.GRU(units, **options, **kw)


def rand(rng, *shape, dtype=np.float64, scale=0.7):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def random_weights(cell, options, D, U, rng, dtype=np.float64, use_bias=True):
    g = GATES[cell]
    w = [rand(rng, D, g * U, dtype=dtype), rand(rng, U, g * U, dtype=dtype)]
    if use_bias:
        w.append(rand(rng, *bias_shape(cell, U, options.get("reset_after", True)), dtype=dtype))
    return w


def lengths_to_mask(lengths, T):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def ref_step(cell, options, x_t, weights, states):
    """One cell step through fastrnn.reference: x_t (B, D) -> (output (B, U), new states)."""
    W, R = weights[0], weights[1]
    U = R.shape[0]
    b = weights[2] if len(weights) == 3 else np.zeros(bias_shape(cell, U, options.get("reset_after", True)),
                                                       x_t.dtype)
    f = getattr(reference, cell + "_forward")
    y, new_states, _ = f(np.ascontiguousarray(x_t[:, None, :]), W, R, b, *states, **options)
    return y[:, 0], [np.array(s) for s in new_states]


def keras_rnn(cell, options, x, weights, initial_states, mask, go_backwards, zero_output_for_mask):
    """Keras' backend.rnn (TensorFlow backend, masked branch), transcribed: returns (last_output, outputs, states).

    Processing order is reversed with go_backwards and so is the mask; outputs are in processing order.
    A masked step keeps the states and outputs zeros (zero_output_for_mask) or the previous step's output
    (which starts as zeros).
    """
    B, T, _ = x.shape
    U = weights[1].shape[0]
    if mask is None:
        mask = np.ones((B, T), bool)
    order = range(T - 1, -1, -1) if go_backwards else range(T)
    states = [np.array(s, x.dtype) for s in initial_states]
    prev_output = np.zeros((B, U), x.dtype)
    outputs = []
    for t in order:
        m = mask[:, t][:, None]
        out, new_states = ref_step(cell, options, x[:, t], weights, states)
        out = np.where(m, out, 0.0 if zero_output_for_mask else prev_output)
        states = [np.where(m, ns, s) for ns, s in zip(new_states, states)]
        outputs.append(out)
        prev_output = out
    outputs = np.stack(outputs, axis=1)
    return outputs[:, -1], outputs, states


def sig(a):
    return 1.0 / (1.0 + math.exp(-a))


# ---------------------------------------------------------------------------------------------------------------
# Output structure, shapes and dtypes
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_output_structure_and_shapes(cell, options, return_sequences, return_state):
    B, T, D, U = 3, 5, 4, 6
    layer = make_layer(cell, options, U, return_sequences=return_sequences, return_state=return_state)
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    out = layer(x)
    want = (B, T, U) if return_sequences else (B, U)
    if return_state:
        assert isinstance(out, list)
        assert len(out) == 1 + n_states(cell)
        assert out[0].shape == want
        for s in out[1:]:
            assert s.shape == (B, U)
        arrays = out
    else:
        assert isinstance(out, np.ndarray)
        assert out.shape == want
        arrays = [out]
    for a in arrays:
        assert a.dtype == np.float32
        assert np.isfinite(a).all()


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_float32_is_the_default_dtype(cell, options):
    layer = make_layer(cell, options, 3, return_sequences=True, return_state=True)
    assert layer.dtype == np.float32
    # float64 (and int) inputs are computed in the layer's dtype
    out = layer(np.ones((2, 4, 5), np.float64))
    assert all(a.dtype == np.float32 for a in out)
    assert all(w.dtype == np.float32 for w in layer.get_weights())
    out = layer(np.ones((2, 4, 5), np.int64))
    assert all(a.dtype == np.float32 for a in out)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_float64_end_to_end(cell, options):
    B, T, D, U = 3, 6, 4, 5
    rng = np.random.default_rng(1)
    layer = make_layer(cell, options, U, return_sequences=True, return_state=True, dtype="float64", seed=3)
    x = rand(rng, B, T, D, dtype=np.float32)  # float32 data is upcast, not computed in float32
    h0 = [rand(rng, B, U, dtype=np.float32) for _ in range(n_states(cell))]
    out = layer(x, initial_state=h0, lengths=[6, 0, 3])
    assert layer.dtype == np.float64
    assert all(w.dtype == np.float64 for w in layer.get_weights())
    assert all(a.dtype == np.float64 for a in out)
    # identical to the float64 reference on the float64 copies of the same inputs
    W, R, *rest = layer.get_weights()
    b = rest[0]
    f = getattr(reference, cell + "_forward")
    y, states, _ = f(x.astype(np.float64), W, R, b, *[s.astype(np.float64) for s in h0],
                     lengths=np.array([6, 0, 3]), **options)
    np.testing.assert_allclose(out[1], states[0], **TOL64)
    np.testing.assert_allclose(out[0][0], y[0], **TOL64)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_degenerate_batch_and_timesteps(cell, options):
    layer = make_layer(cell, options, 3, return_sequences=True, return_state=True, seed=0)
    out = layer(np.zeros((0, 4, 2)))
    assert out[0].shape == (0, 4, 3) and all(s.shape == (0, 3) for s in out[1:])
    out = layer(np.zeros((2, 0, 2)))
    assert out[0].shape == (2, 0, 3)
    for s in out[1:]:
        np.testing.assert_array_equal(s, 0)  # no step: the final state is the (zero) initial state


# ---------------------------------------------------------------------------------------------------------------
# Equal to the reference / to Keras' time loop
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_layer_equals_reference_on_its_weights(cell, options):
    """No mask: the layer is reference.<cell>_forward on layer.get_weights() (go_backwards: flipped outputs)."""
    B, T, D, U = 3, 5, 4, 6
    rng = np.random.default_rng(2)
    x = rand(rng, B, T, D)
    h0 = [rand(rng, B, U) for _ in range(n_states(cell))]
    f = getattr(reference, cell + "_forward")
    for go_backwards in (False, True):
        layer = make_layer(cell, options, U, return_sequences=True, return_state=True, go_backwards=go_backwards,
                           dtype="float64", seed=5)
        out = layer(x, initial_state=h0)
        y, states, _ = f(x, *layer.get_weights(), *h0, reverse=go_backwards, **options)
        np.testing.assert_allclose(out[0], y[:, ::-1] if go_backwards else y, **TOL64)
        for got, want in zip(out[1:], states):
            np.testing.assert_allclose(got, want, **TOL64)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("zero_output_for_mask", [False, True], ids=["carry", "zeros"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "back"])
@pytest.mark.parametrize("masking", ["none", "mask", "lengths"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_layer_equals_keras_time_loop(cell, options, masking, go_backwards, zero_output_for_mask,
                                      return_sequences):
    B, T, D, U = 5, 6, 3, 4
    lengths = np.array([6, 0, 2, 5, 1])
    rng = np.random.default_rng(7)
    x = rand(rng, B, T, D)
    h0 = [rand(rng, B, U) for _ in range(n_states(cell))]  # non-zero initial states
    weights = random_weights(cell, options, D, U, rng)
    layer = make_layer(cell, options, U, return_sequences=return_sequences, return_state=True,
                       go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask, dtype="float64")
    layer.set_weights(weights)
    mask = None if masking == "none" else lengths_to_mask(lengths, T)
    kwargs = {"none": {}, "mask": {"mask": mask}, "lengths": {"lengths": lengths}}[masking]
    out = layer(x, initial_state=h0, **kwargs)

    last, outputs, states = keras_rnn(cell, options, x, weights, h0, mask, go_backwards, zero_output_for_mask)
    assert len(out) == 1 + n_states(cell)
    for got, want in zip(out[1:], states):
        np.testing.assert_allclose(got, want, **TOL64)
    if return_sequences:
        np.testing.assert_allclose(out[0], outputs, **TOL64)
    else:
        np.testing.assert_allclose(out[0], last, **TOL64)


def test_zero_output_for_mask_without_sequences():
    layer = fastrnn.LSTM(3, zero_output_for_mask=True, backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    y = layer(x, lengths=[5, 2])
    assert np.any(y[0] != 0)
    np.testing.assert_array_equal(y[1], 0)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_mask_and_lengths_are_the_same(cell, options):
    B, T, D, U = 4, 5, 3, 2
    lengths = np.array([5, 3, 0, 1])
    x = rand(np.random.default_rng(8), B, T, D, dtype=np.float32)
    for go_backwards in (False, True):
        for zero_output_for_mask in (False, True):
            layer = make_layer(cell, options, U, return_sequences=True, return_state=True, seed=1,
                               go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask)
            a = layer(x, mask=lengths_to_mask(lengths, T))
            b = layer(x, lengths=lengths)
            c = layer(x, lengths=list(lengths.astype(np.int32)))
            d = layer(x, mask=lengths_to_mask(lengths, T).astype(np.uint8))  # 0/1 masks work as well
            for got in (b, c, d):
                for u, v in zip(a, got):
                    np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------------------------------------------
# Semantics by construction (no reference involved)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_row_with_length_equals_running_it_alone(cell, options):
    B, T, D, U = 4, 6, 3, 5
    lengths = [6, 0, 3, 1]
    rng = np.random.default_rng(9)
    x = rand(rng, B, T, D)
    h0 = [rand(rng, B, U) for _ in range(n_states(cell))]
    layer = make_layer(cell, options, U, return_sequences=True, return_state=True, zero_output_for_mask=True,
                       dtype="float64", seed=2)
    out = layer(x, initial_state=h0, lengths=lengths)
    for b, L in enumerate(lengths):
        alone = layer(x[b:b + 1, :L], initial_state=[s[b:b + 1] for s in h0])
        for got, want in zip(out[1:], alone[1:]):
            np.testing.assert_allclose(got[b], want[0], **TOL64)
        np.testing.assert_allclose(out[0][b, :L], alone[0][0], **TOL64)
        np.testing.assert_array_equal(out[0][b, L:], 0)
    # Keras default (zero_output_for_mask=False): padded steps repeat the last valid output; empty rows give 0
    layer.zero_output_for_mask = False
    carried = layer(x, initial_state=h0, lengths=lengths)
    for b, L in enumerate(lengths):
        np.testing.assert_array_equal(carried[0][b, :L], out[0][b, :L])
        want = out[0][b, L - 1] if L > 0 else np.zeros(U)
        np.testing.assert_array_equal(carried[0][b, L:], np.broadcast_to(want, (T - L, U)))
    # return_sequences=False gives the output at each row's own last step (zeros for an empty row)
    layer.return_sequences = False
    last = layer(x, initial_state=h0, lengths=lengths)
    for b, L in enumerate(lengths):
        np.testing.assert_array_equal(last[0][b], out[0][b, L - 1] if L > 0 else np.zeros(U))
        np.testing.assert_array_equal(last[1][b], out[1][b])  # the state itself is h0 for an empty row
    np.testing.assert_array_equal(out[1][1], h0[0][1])


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_go_backwards_equals_forward_on_flipped_valid_part(cell, options):
    B, T, D, U = 4, 6, 3, 5
    lengths = [6, 0, 4, 1]
    rng = np.random.default_rng(10)
    x = rand(rng, B, T, D)
    h0 = [rand(rng, B, U) for _ in range(n_states(cell))]
    fwd = make_layer(cell, options, U, return_sequences=True, return_state=True, dtype="float64", seed=4)
    for zero_output_for_mask in (False, True):
        back = make_layer(cell, options, U, return_sequences=True, return_state=True, go_backwards=True,
                          zero_output_for_mask=zero_output_for_mask, dtype="float64", seed=4)
        out = back(x, initial_state=h0, lengths=lengths)
        fwd.set_weights(back.get_weights())
        for b, L in enumerate(lengths):
            flipped = x[b:b + 1, :L][:, ::-1]
            want = fwd(flipped, initial_state=[s[b:b + 1] for s in h0])
            for got, w in zip(out[1:], want[1:]):
                np.testing.assert_allclose(got[b], w[0], **TOL64)
            # Keras order: output step s is processing step s over the flipped (padding-first) sequence
            np.testing.assert_array_equal(out[0][b, :T - L], 0)
            np.testing.assert_allclose(out[0][b, T - L:], want[0][0], **TOL64)
    # without lengths, go_backwards is the forward layer on x[:, ::-1]
    back = make_layer(cell, options, U, return_sequences=True, go_backwards=True, dtype="float64", seed=4)
    fwd.return_state = False
    np.testing.assert_allclose(back(x), fwd(x[:, ::-1]), **TOL64)


def test_simple_rnn_one_step_by_hand():
    x = np.array([[[0.5, -1.0]]])
    W = np.array([[0.1, -0.2], [0.3, 0.4]])
    R = np.array([[0.5, 0.6], [-0.7, 0.8]])
    b = np.array([0.05, -0.1])
    h0 = np.array([[0.2, -0.3]])
    for act, fn in (("tanh", math.tanh), ("relu", lambda a: max(a, 0.0))):
        layer = fastrnn.SimpleRNN(2, activation=act, dtype="float64", backend="numpy")
        layer.set_weights([W, R, b])
        h = layer(x, initial_state=h0)
        want = [fn(x[0, 0, 0] * W[0, j] + x[0, 0, 1] * W[1, j] + h0[0, 0] * R[0, j] + h0[0, 1] * R[1, j] + b[j])
                for j in range(2)]
        np.testing.assert_allclose(h[0], want, rtol=1e-14)


def test_lstm_one_step_by_hand():
    """DESIGN.md: a = xW + hR + b split i, f, c, o; c = f c0 + i tanh(a_c); h = o tanh(c)."""
    D, U = 2, 2
    W = np.arange(D * 4 * U).reshape(D, 4 * U) / 10.0 - 0.7
    R = (np.arange(U * 4 * U).reshape(U, 4 * U)[:, ::-1] / 15.0 - 0.4).copy()
    b = np.linspace(-0.5, 0.6, 4 * U)
    x = np.array([[[0.3, -0.8]]])
    h0, c0 = np.array([[0.1, -0.2]]), np.array([[0.7, -0.4]])
    layer = fastrnn.LSTM(U, return_state=True, dtype="float64", backend="numpy")
    layer.set_weights([W, R, b])
    y, h, c = layer(x, initial_state=[h0, c0])
    for j in range(U):
        def a(gate):
            k = gate * U + j
            return x[0, 0, 0] * W[0, k] + x[0, 0, 1] * W[1, k] + h0[0, 0] * R[0, k] + h0[0, 1] * R[1, k] + b[k]
        i, f, g, o = sig(a(0)), sig(a(1)), math.tanh(a(2)), sig(a(3))
        c_j = f * c0[0, j] + i * g
        h_j = o * math.tanh(c_j)
        assert c[0, j] == pytest.approx(c_j, rel=1e-13)
        assert h[0, j] == pytest.approx(h_j, rel=1e-13)
        assert y[0, j] == pytest.approx(h_j, rel=1e-13)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_one_step_by_hand(reset_after):
    """DESIGN.md: z = σ(u_z+v_z), r = σ(u_r+v_r), ĥ = tanh(u_h + r v_h) (reset_after) or
    tanh(u_h + (r h0) R_h); h = z h0 + (1-z) ĥ."""
    D, U = 2, 2
    W = np.arange(D * 3 * U).reshape(D, 3 * U) / 8.0 - 0.6
    R = (np.arange(U * 3 * U).reshape(U, 3 * U)[::-1] / 9.0 - 0.5).copy()
    b_in = np.linspace(-0.3, 0.4, 3 * U)
    b_rec = np.linspace(0.2, -0.5, 3 * U)
    x = np.array([[[0.9, -0.4]]])
    h0 = np.array([[0.3, -0.6]])
    layer = fastrnn.GRU(U, reset_after=reset_after, dtype="float64", backend="numpy")
    layer.set_weights([W, R, np.stack([b_in, b_rec]) if reset_after else b_in])
    h = layer(x, initial_state=h0)

    def u(k):
        return x[0, 0, 0] * W[0, k] + x[0, 0, 1] * W[1, k] + b_in[k]

    def hR(vec, k):
        return vec[0] * R[0, k] + vec[1] * R[1, k]

    r = [sig(u(U + j) + hR(h0[0], U + j) + (b_rec[U + j] if reset_after else 0.0)) for j in range(U)]
    for j in range(U):
        z = sig(u(j) + hR(h0[0], j) + (b_rec[j] if reset_after else 0.0))
        k = 2 * U + j
        if reset_after:
            hh = math.tanh(u(k) + r[j] * (hR(h0[0], k) + b_rec[k]))
        else:
            hh = math.tanh(u(k) + hR([r[0] * h0[0, 0], r[1] * h0[0, 1]], k))
        assert h[0, j] == pytest.approx(z * h0[0, j] + (1 - z) * hh, rel=1e-13)


def test_lstm_gate_order_is_i_f_c_o():
    """With W = R = 0, only the biases act: forget bias huge keeps c0, input gate closed ignores the candidate."""
    U = 3
    layer = fastrnn.LSTM(U, return_state=True, dtype="float64", backend="numpy")
    b = np.concatenate([np.full(U, -50.0), np.full(U, 50.0), np.full(U, 5.0), np.full(U, 50.0)])
    layer.set_weights([np.zeros((2, 4 * U)), np.zeros((U, 4 * U)), b])
    c0 = np.array([[0.3, -0.2, 0.9]])
    _, h, c = layer(np.ones((1, 3, 2)), initial_state=[np.zeros((1, U)), c0])
    np.testing.assert_allclose(c, c0, rtol=1e-12)
    np.testing.assert_allclose(h, np.tanh(c0), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# count_params
# ---------------------------------------------------------------------------------------------------------------

def keras_count(cell, D, U, use_bias=True, reset_after=True):
    """Keras' formulas: G*(D*U + U*U + U) (+ 3U for GRU's second, recurrent bias with reset_after)."""
    g = GATES[cell]
    n = g * (D * U + U * U)
    if use_bias:
        n += g * U
        if cell == "gru" and reset_after:
            n += g * U
    return n


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("D,U", [(1, 1), (3, 7), (10, 64), (8, 32)])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_count_params_follows_keras_formula(cell, options, D, U, use_bias):
    layer = make_layer(cell, options, U, use_bias=use_bias)
    layer.build((None, None, D))
    want = keras_count(cell, D, U, use_bias, options.get("reset_after", True))
    assert layer.count_params() == want
    assert sum(w.size for w in layer.get_weights()) == want


@pytest.mark.parametrize("make,D,want", [
    # 4 * (10*64 + 64*64 + 64) = 4 * 4800
    (lambda: fastrnn.LSTM(64), 10, 19200),
    # 3 * (8*32 + 32*32) + 2 * 3*32 = 3840 + 192
    (lambda: fastrnn.GRU(32), 8, 4032),
    # 3840 + 96
    (lambda: fastrnn.GRU(32, reset_after=False), 8, 3936),
    # 4*16 + 16*16 + 16 = 336  (352 is SimpleRNN(16) on 5 features: 80 + 256 + 16)
    (lambda: fastrnn.SimpleRNN(16), 4, 336),
    (lambda: fastrnn.SimpleRNN(16), 5, 352),
    # 4 * (1*4 + 4*4 + 4): the classic LSTM(4) on one feature from Keras tutorials
    (lambda: fastrnn.LSTM(4), 1, 96),
    # 4 * (10*64 + 64*64)
    (lambda: fastrnn.LSTM(64, use_bias=False), 10, 18944),
    # 3 * (8*32 + 32*32), no bias at all whatever reset_after says
    (lambda: fastrnn.GRU(32, use_bias=False), 8, 3840),
    (lambda: fastrnn.GRU(32, use_bias=False, reset_after=False), 8, 3840),
    # 4*16 + 16*16
    (lambda: fastrnn.SimpleRNN(16, use_bias=False), 4, 320),
], ids=["lstm64", "gru32", "gru32-rb", "rnn16-4", "rnn16-5", "lstm4", "lstm64-nobias", "gru32-nobias",
        "gru32-rb-nobias", "rnn16-nobias"])
def test_count_params_literal_values(make, D, want):
    layer = make()
    layer(np.zeros((1, 2, D), np.float32))
    assert layer.count_params() == want


def test_count_params_needs_a_built_layer():
    with pytest.raises(ValueError, match="count_params needs a built layer"):
        fastrnn.LSTM(4).count_params()


# ---------------------------------------------------------------------------------------------------------------
# get_weights / set_weights
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_weight_shapes_are_keras_shapes(cell, options, use_bias):
    D, U = 5, 3
    g = GATES[cell]
    layer = make_layer(cell, options, U, use_bias=use_bias)
    assert layer.get_weights() == [] and not layer.built
    layer(np.zeros((2, 4, D)))
    shapes = [w.shape for w in layer.get_weights()]
    want = [(D, g * U), (U, g * U)]
    if use_bias:
        want.append((2, 3 * U) if cell == "gru" and options["reset_after"] else (g * U,))
    assert shapes == want
    assert layer.input_dim == D and layer.built


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_set_weights_round_trip(cell, options):
    D, U = 4, 3
    rng = np.random.default_rng(11)
    x = rand(rng, 2, 5, D, dtype=np.float32)
    a = make_layer(cell, options, U, return_sequences=True, seed=1)
    ya = a(x)
    b = make_layer(cell, options, U, return_sequences=True, seed=2)
    assert not b.built
    b.set_weights(a.get_weights())  # set_weights on an unbuilt layer builds it
    assert b.built and b.input_dim == D and b.count_params() == a.count_params()
    for u, v in zip(a.get_weights(), b.get_weights()):
        assert u.dtype == v.dtype == np.float32
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(b(x), ya)

    # a built layer takes new weights too; a tuple works as well as a list
    new = random_weights(cell, options, D, U, rng)
    b.set_weights(tuple(new))
    for u, v in zip(b.get_weights(), new):
        assert u.dtype == np.float32  # cast to the layer's dtype
        np.testing.assert_array_equal(u, v.astype(np.float32))


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_weights_are_copies(cell, options):
    D, U = 3, 2
    rng = np.random.default_rng(12)
    x = rand(rng, 2, 4, D, dtype=np.float32)
    layer = make_layer(cell, options, U, return_sequences=True, seed=0)
    y = layer(x)
    # get_weights returns copies: mutating them changes nothing
    got = layer.get_weights()
    kept = [w.copy() for w in got]
    for w in got:
        w[...] = 99.0
    for u, v in zip(layer.get_weights(), kept):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(layer(x), y)
    # set_weights copies too (even arrays already of the layer's dtype), and leaves its arguments alone
    src = random_weights(cell, options, D, U, rng, dtype=np.float32)
    src_before = [w.copy() for w in src]
    layer.set_weights(src)
    y2 = layer(x)
    for w, w0 in zip(src, src_before):
        np.testing.assert_array_equal(w, w0)
        w[...] = -5.0
    np.testing.assert_array_equal(layer(x), y2)
    for u, v in zip(layer.get_weights(), src_before):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_call_never_modifies_its_inputs(cell, options):
    B, T, D, U = 3, 5, 4, 2
    rng = np.random.default_rng(13)
    for dtype in ("float32", "float64"):
        x = rand(rng, B, T, D, dtype=np.dtype(dtype))  # the layer's own dtype: no conversion copy on the way
        h0 = [rand(rng, B, U, dtype=np.dtype(dtype)) for _ in range(n_states(cell))]
        lengths = np.array([5, 0, 3])
        mask = lengths_to_mask(lengths, T)
        before = [a.copy() for a in (x, *h0, lengths, mask)]
        for go_backwards in (False, True):
            layer = make_layer(cell, options, U, return_sequences=True, return_state=True,
                               go_backwards=go_backwards, dtype=dtype, seed=0)
            out = layer(x, initial_state=h0, lengths=lengths)
            out[0][...] = 7.0  # writing to the results does not write through to the inputs either
            for s in out[1:]:
                s[...] = 7.0
            layer(x, initial_state=h0, mask=mask)
            layer(x[:, ::2], initial_state=h0)  # non-contiguous input
            for a, b in zip(before, (x, *h0, lengths, mask)):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Initializers
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_default_initializers(cell, options):
    D, U = 7, 6
    g = GATES[cell]
    layer = make_layer(cell, options, U, seed=123)
    layer.build((None, None, D))
    W, R, b = layer.get_weights()
    # glorot_uniform on the fused (D, G*U) kernel
    limit = math.sqrt(6.0 / (D + g * U))
    assert np.abs(W).max() <= limit
    assert np.abs(W).max() > 0.8 * limit and abs(W.mean()) < 0.25 * limit  # spread over the whole range
    # orthogonal recurrent kernel: the U rows of (U, G*U) are orthonormal
    np.testing.assert_allclose(R @ R.T, np.eye(U), atol=1e-6)
    if g == 1:
        np.testing.assert_allclose(R.T @ R, np.eye(U), atol=1e-6)
    # biases: zeros, except the LSTM forget gate (unit_forget_bias=True by default)
    want = np.zeros(b.shape, np.float32)
    if cell == "lstm":
        want[U:2 * U] = 1.0
    np.testing.assert_array_equal(b, want)


def test_lstm_unit_forget_bias():
    U = 4
    off = fastrnn.LSTM(U, unit_forget_bias=False, seed=0)
    off.build((None, None, 3))
    np.testing.assert_array_equal(off.bias, np.zeros(4 * U))
    on = fastrnn.LSTM(U, bias_initializer="random_uniform", seed=0)
    on.build((None, None, 3))
    np.testing.assert_array_equal(on.bias[U:2 * U], 1.0)
    others = np.concatenate([on.bias[:U], on.bias[2 * U:]])
    assert np.all(np.abs(others) <= 0.05) and np.any(others != 0)  # bias_initializer for i, c, o
    ones = fastrnn.LSTM(U, bias_initializer="ones", unit_forget_bias=False)
    ones.build((None, None, 3))
    np.testing.assert_array_equal(ones.bias, 1.0)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_seed_gives_reproducible_weights(cell, options):
    def weights(seed):
        layer = make_layer(cell, options, 4, seed=seed, bias_initializer="random_normal")
        layer.build((None, None, 3))
        return layer.get_weights()

    for u, v in zip(weights(7), weights(7)):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(weights(7)[0], weights(8)[0])
    assert not np.array_equal(weights(None)[1], weights(None)[1])


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_callable_initializers(cell, options):
    D, U = 3, 2
    g = GATES[cell]
    calls = []

    def init(value):
        def f(shape, dtype, rng):
            calls.append((value, tuple(shape), np.dtype(dtype), type(rng)))
            return np.full(shape, value)
        return f

    layer = make_layer(cell, options, U, kernel_initializer=init(0.25), recurrent_initializer=init(-0.5),
                       bias_initializer=init(0.125), dtype="float64")
    layer(np.ones((1, 2, D)))
    W, R, b = layer.get_weights()
    np.testing.assert_array_equal(W, np.full((D, g * U), 0.25))
    np.testing.assert_array_equal(R, np.full((U, g * U), -0.5))
    want_b = np.full(b.shape, 0.125)
    if cell == "lstm":
        want_b[U:2 * U] = 1.0
    np.testing.assert_array_equal(b, want_b)
    assert (0.25, (D, g * U), np.dtype(np.float64), np.random.Generator) in calls
    assert (-0.5, (U, g * U), np.dtype(np.float64), np.random.Generator) in calls
    assert all(c[2] == np.float64 and c[3] is np.random.Generator for c in calls)


@pytest.mark.parametrize("name", sorted(initializers.INITIALIZERS))
def test_every_named_initializer_builds(name):
    layer = fastrnn.GRU(3, kernel_initializer=name, recurrent_initializer=name, bias_initializer=name, seed=0)
    layer.build((None, None, 2))
    assert [w.shape for w in layer.get_weights()] == [(2, 9), (3, 9), (2, 9)]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in layer.get_weights())


# ---------------------------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_backend_used_is_set_after_a_call(cell, options):
    layer = make_layer(cell, options, 2)
    assert layer.backend_used is None
    layer(np.ones((2, 3, 4), np.float32))
    assert layer.backend_used == "numpy"
    # "auto" on an empty batch runs no compiled code (nothing to compile for) and says so
    auto = make_layer(cell, options, 2, backend="auto")
    auto(np.ones((0, 3, 4), np.float32))
    assert auto.backend_used == "numpy"


def test_lstm_initial_state_accepts_list_and_tuple():
    layer = fastrnn.LSTM(2, return_state=True, backend="numpy", seed=0)
    x = np.ones((1, 3, 2), np.float32)
    h0, c0 = np.full((1, 2), 0.5, np.float32), np.full((1, 2), -0.5, np.float32)
    a = layer(x, initial_state=[h0, c0])
    b = layer(x, initial_state=(h0, c0))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = layer(x)  # default zeros
    d = layer(x, initial_state=[np.zeros((1, 2)), np.zeros((1, 2))])
    for u, v in zip(c, d):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[2], c[2])
