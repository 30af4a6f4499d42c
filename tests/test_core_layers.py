"""The Layer protocol, the core layers (Input, Dense, Embedding, Dropout, Activation, Flatten), Bidirectional and
stateful recurrent layers: Keras semantics, shapes, masks, weights and bad arguments (forward only; backward passes
are tests/test_layer_backward.py)."""
import math
import re

import numpy as np
import pytest

import fastrnn
from fastrnn.layers import activations
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, n_states
from test_layers import keras_rnn, lengths_to_mask, make_layer

TOL64 = dict(rtol=1e-12, atol=1e-12)


def esc(s):
    return re.escape(s)


# ---------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------

def test_input_spec():
    spec = fastrnn.Input((None, 8))
    assert spec.shape == spec.batch_input_shape == (None, None, 8)
    assert spec.input_shape == (None, 8) and spec.batch_size is None and spec.dtype == np.float32
    spec = fastrnn.Input(shape=(5,), batch_size=4, dtype="int32", name="tokens")
    assert spec.shape == (4, 5) and spec.dtype == np.int32 and spec.name == "tokens"
    assert fastrnn.layers.Input is fastrnn.Input


@pytest.mark.parametrize("kw,exc,match", [
    (dict(shape="abc"), TypeError, "shape must be a tuple of positive integers or None; got 'abc'"),
    (dict(shape=(0, 3)), ValueError, "shape entries must be positive integers or None; got 0"),
    (dict(shape=(2.5,)), ValueError, "shape entries must be positive integers or None; got 2.5"),
    (dict(shape=(3,), batch_size=0), ValueError, "batch_size must be a positive integer; got 0"),
    (dict(shape=(3,), dtype="complex64"), TypeError, "dtype must be a real numeric dtype"),
    (dict(shape=(3,), dtype="nope"), TypeError, "dtype must be a numpy dtype or its name; got 'nope'"),
], ids=["shape-str", "shape-0", "shape-float", "batch-0", "dtype-complex", "dtype-name"])
def test_input_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.Input(**kw)


# ---------------------------------------------------------------------------------------------------------------
# The Layer protocol, for every layer
# ---------------------------------------------------------------------------------------------------------------

PROTOCOL_CASES = {
    # name: (make, input (numpy), expected output shape, expected mask out given a mask in: "same" | None)
    "dense-2d": (lambda: fastrnn.Dense(3, seed=0), np.ones((4, 5)), (4, 3), "same"),
    "dense-3d": (lambda: fastrnn.Dense(3, activation="softmax", seed=0), np.ones((2, 6, 5)), (2, 6, 3), "same"),
    "embedding": (lambda: fastrnn.Embedding(10, 4, seed=0), np.ones((2, 6), int), (2, 6, 4), None),
    "dropout": (lambda: fastrnn.Dropout(0.5, seed=0), np.ones((2, 6, 5)), (2, 6, 5), "same"),
    "activation": (lambda: fastrnn.Activation("tanh"), np.ones((2, 6, 5)), (2, 6, 5), "same"),
    "flatten": (lambda: fastrnn.Flatten(), np.ones((2, 6, 5)), (2, 30), None),
    "lstm-seq": (lambda: fastrnn.LSTM(3, return_sequences=True, seed=0), np.ones((2, 6, 5)), (2, 6, 3), "same"),
    "gru-last": (lambda: fastrnn.GRU(3, seed=0), np.ones((2, 6, 5)), (2, 3), None),
    "bi-concat": (lambda: fastrnn.Bidirectional(fastrnn.SimpleRNN(3, return_sequences=True, seed=0)),
                  np.ones((2, 6, 5)), (2, 6, 6), "same"),
    "bi-sum-last": (lambda: fastrnn.Bidirectional(fastrnn.LSTM(3, seed=0), merge_mode="sum"), np.ones((2, 6, 5)),
                    (2, 3), None),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_CASES))
def test_layer_protocol(case):
    make, x, out_shape, mask_out = PROTOCOL_CASES[case]
    layer = make()
    assert isinstance(layer, fastrnn.Layer)
    assert not layer.built or not layer.weights
    none_batch = (None,) + x.shape[1:]
    assert layer.compute_output_shape(x.shape) == out_shape
    assert layer.compute_output_shape(none_batch) == (None,) + out_shape[1:]
    y = layer(x)  # builds on the first call
    assert layer.built and y.shape == out_shape and y.dtype == np.float32
    np.testing.assert_array_equal(layer.forward(x, mask=None, training=False), y)
    mask = np.ones(x.shape[:2], bool)
    got_mask = layer.compute_mask(mask)
    assert (got_mask is mask) if mask_out == "same" else (got_mask is None)
    # weights: live arrays; grads aligned; copies from get_weights; set_weights writes in place
    weights = layer.weights
    assert len(layer.grads) == len(weights)
    assert all(g.shape == w.shape for g, w in zip(layer.grads, weights))
    assert layer.count_params() == sum(w.size for w in weights)
    if weights:
        rng = np.random.default_rng(0)
        new = [rng.uniform(-0.5, 0.5, w.shape) for w in weights]
        layer.set_weights(new)
        assert all(a is b for a, b in zip(layer.weights, weights))  # same objects, new values
        for w, v in zip(layer.get_weights(), new):
            np.testing.assert_array_equal(w, v.astype(np.float32))
        before = layer(x)
        # an optimizer updating the live arrays in place changes what the layer computes
        weights[0] += rng.uniform(-0.5, 0.5, weights[0].shape).astype(np.float32)
        assert not np.array_equal(layer(x), before)


def test_input_shape_and_batch_input_shape():
    assert fastrnn.Dense(2).batch_input_shape is None
    assert fastrnn.Dense(2, input_shape=(5,)).batch_input_shape == (None, 5)
    assert fastrnn.Dense(2, batch_input_shape=(8, 5)).batch_input_shape == (8, 5)
    assert fastrnn.LSTM(2, input_shape=(None, 3)).batch_input_shape == (None, None, 3)
    assert fastrnn.Bidirectional(fastrnn.LSTM(2, input_shape=(7, 3))).batch_input_shape == (None, 7, 3)
    with pytest.raises(ValueError, match="pass input_shape or batch_input_shape, not both"):
        fastrnn.Dense(2, input_shape=(5,), batch_input_shape=(1, 5))
    with pytest.raises(ValueError, match=esc("lstm: batch_input_shape must be (batch, timesteps, features); got (None, 3)")):
        fastrnn.LSTM(2, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape entries must be positive integers or None; got -1"):
        fastrnn.Embedding(3, 2, input_shape=(-1,))
    with pytest.raises(TypeError, match="name must be a string or None; got 3"):
        fastrnn.Dense(2, name=3)
    with pytest.raises(TypeError, match="trainable must be True or False; got 1"):
        fastrnn.Dropout(0.1, trainable=1)


def test_trainable_flag_and_names():
    layer = fastrnn.Dense(2, trainable=False, name="head")
    layer.build((None, 3))
    assert layer.name == "head" and layer.trainable_weights == [] and len(layer.weights) == 2
    assert fastrnn.Embedding(3, 2).name == "embedding" and fastrnn.SimpleRNN(2).name == "simple_rnn"


def test_get_config_round_trip():
    for layer in (fastrnn.Dense(3, activation="relu", seed=1), fastrnn.Embedding(5, 2, mask_zero=True, seed=1),
                  fastrnn.Dropout(0.25, seed=2), fastrnn.LSTM(3, go_backwards=True, unit_forget_bias=False, seed=4),
                  fastrnn.GRU(2, reset_after=False, stateful=True, batch_input_shape=(2, None, 3)),
                  fastrnn.Bidirectional(fastrnn.SimpleRNN(2, activation="relu", seed=3), merge_mode="ave")):
        copy = type(layer).from_config(layer.get_config())
        assert copy.get_config() == layer.get_config()


# ---------------------------------------------------------------------------------------------------------------
# Dense and activations
# ---------------------------------------------------------------------------------------------------------------

def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


REFERENCE_ACTIVATIONS = {  # written from the Keras 3 definitions
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "relu6": lambda z: np.minimum(np.maximum(z, 0), 6),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.2 * z),
    "tanh": np.tanh,
    "sigmoid": _sig,
    "hard_sigmoid": lambda z: np.minimum(np.maximum(z / 6 + 0.5, 0), 1),
    "softmax": lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True),
    "log_softmax": lambda z: np.log(np.exp(z) / np.exp(z).sum(-1, keepdims=True)),
    "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1),
    "selu": lambda z: 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * (np.exp(z) - 1)),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "softsign": lambda z: z / (1 + np.abs(z)),
    "exponential": np.exp,
    "swish": lambda z: z * _sig(z),
    "silu": lambda z: z * _sig(z),
    "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))),
}


def test_every_activation_has_a_reference():
    assert sorted(REFERENCE_ACTIVATIONS) == sorted(activations.ACTIVATIONS)


@pytest.mark.parametrize("activation", sorted(REFERENCE_ACTIVATIONS))
def test_dense_equals_x_w_plus_b(activation):
    rng = np.random.default_rng(0)
    layer = fastrnn.Dense(4, activation=activation, dtype="float64", bias_initializer="random_normal", seed=0)
    x = rng.standard_normal((3, 5, 6)) * 2
    y = layer(x)
    W, b = layer.get_weights()
    np.testing.assert_allclose(y, REFERENCE_ACTIVATIONS[activation](x @ W + b), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer(x[:, 2]), y[:, 2], rtol=1e-13, atol=1e-14)  # last axis only
    a = fastrnn.Activation(activation, dtype="float64")
    np.testing.assert_allclose(a(x), REFERENCE_ACTIVATIONS[activation](x), rtol=1e-12, atol=1e-13)


def test_dense_defaults_counts_and_dtypes():
    layer = fastrnn.Dense(3, seed=0)
    y = layer(np.ones((2, 5), np.float64))
    assert y.dtype == np.float32 and layer.count_params() == 5 * 3 + 3  # Keras: 18
    W, b = layer.get_weights()
    limit = math.sqrt(6 / (5 + 3))
    assert np.abs(W).max() <= limit and not b.any()
    assert fastrnn.Dense(3, activation="linear").activation == "linear" == fastrnn.Dense(3).activation
    # softmax is stable for large logits
    big = fastrnn.Dense(2, activation="softmax", kernel_initializer="ones", dtype="float64")
    np.testing.assert_allclose(big(np.full((1, 1), 1e4)), [[0.5, 0.5]])
    # set_weights on an unbuilt Dense builds it from the kernel
    d = fastrnn.Dense(2)
    d.set_weights([np.ones((4, 2)), np.zeros(2)])
    assert d.built and d.input_dim == 4 and d(np.ones((1, 4))).tolist() == [[4.0, 4.0]]


@pytest.mark.parametrize("kw,exc,match", [
    (dict(units=0), ValueError, "units must be a positive integer; got 0"),
    (dict(units=2.0), TypeError, "units must be a positive integer; got 2.0"),
    (dict(units=2, activation="gelu_fast"), ValueError, r"activation must be None or one of \[.*\]; got 'gelu_fast'"),
    (dict(units=2, activation=np.tanh), ValueError, "activation must be None or one of"),
    (dict(units=2, use_bias="yes"), TypeError, "use_bias must be True or False; got 'yes'"),
    (dict(units=2, kernel_initializer="glorot"), ValueError, "kernel_initializer must be one of"),
    (dict(units=2, bias_initializer=3), ValueError, "bias_initializer must be one of"),
    (dict(units=2, seed=-1), ValueError, "seed must be a non-negative integer or None; got -1"),
    (dict(units=2, seed="1"), TypeError, "seed must be a non-negative integer or None; got '1'"),
    (dict(units=2, dtype="float16"), TypeError, "dtype must be float32 or float64; got float16"),
    (dict(units=2, input_shape=()), ValueError, esc("dense: batch_input_shape must be (batch, ..., features); got (None,)")),
], ids=["units-0", "units-float", "activation", "activation-callable", "use_bias", "kernel-init", "bias-init",
        "seed-neg", "seed-str", "dtype", "input_shape"])
def test_dense_constructor_rejects(kw, exc, match):
    kw = dict(kw)
    with pytest.raises(exc, match=match) as info:
        fastrnn.Dense(kw.pop("units"), **kw)
    assert type(info.value) is exc


def test_dense_call_and_set_weights_reject():
    layer = fastrnn.Dense(2, seed=0)
    layer.build((None, 3))
    for x, exc, match in [
        (np.ones(3), ValueError, esc("dense: x must have shape (batch, ..., features) (at least 2-D); got shape (3,)")),
        (np.ones((2, 4)), ValueError, esc("dense: x must have shape (batch, ..., features=3); got shape (2, 4)")),
        (np.full((2, 3), np.inf), ValueError, "x must be finite"),
        (np.full((2, 3), "a"), TypeError, "x must be a real numeric array"),
    ]:
        with pytest.raises(exc, match=match):
            layer(x)
    with pytest.raises(TypeError, match="training must be True or False; got 'yes'"):
        layer(np.ones((2, 3)), training="yes")
    W, b = layer.get_weights()
    for weights, exc, match in [
        ([W], ValueError, esc("dense: set_weights needs 2 arrays [kernel, bias]; got 1")),
        ([W.T, b], ValueError, esc("dense: kernel must have shape (3, 2); got shape (2, 3)")),
        ([W, b[:1]], ValueError, esc("dense: bias must have shape (2,); got shape (1,)")),
        (W, TypeError, "dense: weights must be a list of arrays; got ndarray"),
    ]:
        with pytest.raises(exc, match=match):
            layer.set_weights(weights)
    np.testing.assert_array_equal(layer.get_weights()[0], W)  # rejected calls change nothing
    with pytest.raises(ValueError, match=esc("dense: kernel must have shape (input_dim, units=2); got shape (6,)")):
        fastrnn.Dense(2).set_weights([np.ones(6), np.ones(2)])
    with pytest.raises(ValueError, match="dense: count_params needs a built layer"):
        fastrnn.Dense(2).count_params()


# ---------------------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------------------

def test_embedding_lookup_mask_and_init():
    layer = fastrnn.Embedding(7, 3, seed=0)
    idx = np.array([[1, 6, 0], [2, 2, 5]])
    y = layer(idx)
    E = layer.get_weights()[0]
    np.testing.assert_array_equal(y, E[idx])
    assert y.shape == (2, 3, 3) and y.dtype == np.float32 and layer.count_params() == 21
    assert np.abs(E).max() <= 0.05 and np.abs(E).max() > 0.02  # Keras "uniform": U(-0.05, 0.05)
    assert layer.compute_mask(np.ones((2, 3), bool)) is None  # no mask_zero: no mask
    np.testing.assert_array_equal(layer(idx.astype(np.float64)), y)  # integral floats are indices too
    np.testing.assert_array_equal(layer(idx[0]), E[idx[0]])
    masked = fastrnn.Embedding(7, 3, mask_zero=True)
    masked(idx)
    np.testing.assert_array_equal(masked.compute_mask(None), idx != 0)
    np.testing.assert_array_equal(masked.compute_mask(None, inputs=[[0, 3]]), [[False, True]])
    big = fastrnn.Embedding(1000, 64)
    big.build(None)
    assert big.count_params() == 64000


def test_embedding_mask_zero_drives_the_recurrent_lengths():
    idx = np.array([[3, 1, 4, 0, 0], [2, 0, 0, 0, 0], [5, 9, 2, 6, 5], [0, 0, 0, 0, 0]])
    emb = fastrnn.Embedding(10, 4, mask_zero=True, seed=0)
    lstm = fastrnn.LSTM(3, return_sequences=True, seed=0, backend="numpy")
    y = emb(idx)
    chained = lstm(y, mask=emb.compute_mask(None))
    by_lengths = lstm(y, lengths=(idx != 0).sum(1))
    np.testing.assert_array_equal(chained, by_lengths)
    assert lstm.compute_mask(emb.compute_mask(None)) is emb.compute_mask(None)
    # a zero in the middle is not right padding: the recurrent layer says so
    with pytest.raises(ValueError, match="mask must be right-padded"):
        lstm(emb(np.array([[1, 0, 2]])), mask=emb.compute_mask(None))


@pytest.mark.parametrize("x,exc,match", [
    (np.array([[1, 7]]), ValueError, esc("embedding: indices in x must be in [0, input_dim=7); got values from 1 to 7")),
    (np.array([[-1, 2]]), ValueError, esc("embedding: indices in x must be in [0, input_dim=7); got values from -1 to 2")),
    (np.array([[0.5, 1.0]]), ValueError, "embedding: x must hold integer indices; got non-integer float values"),
    (np.array([[np.nan]]), ValueError, "embedding: x must hold integer indices"),
    (np.array([["a"]]), TypeError, "embedding: x must be an array of integer indices; got dtype <U1"),
    (np.array([[True]]), TypeError, "embedding: x must be an array of integer indices; got dtype bool"),
    (np.int64(3), ValueError, esc("embedding: x must have shape (batch, ...) (at least 1-D); got shape ()")),
], ids=["over", "negative", "fraction", "nan", "str", "bool", "0d"])
def test_embedding_rejects_bad_indices(x, exc, match):
    layer = fastrnn.Embedding(7, 2)
    with pytest.raises(exc, match=match) as info:
        layer(x)
    assert type(info.value) is exc


@pytest.mark.parametrize("kw,exc,match", [
    (dict(input_dim=0, output_dim=2), ValueError, "input_dim must be a positive integer; got 0"),
    (dict(input_dim=3, output_dim=1.5), TypeError, "output_dim must be a positive integer; got 1.5"),
    (dict(input_dim=3, output_dim=2, mask_zero=1), TypeError, "mask_zero must be True or False; got 1"),
    (dict(input_dim=3, output_dim=2, embeddings_initializer="uni"), ValueError, "embeddings_initializer must be one of"),
], ids=["input_dim", "output_dim", "mask_zero", "initializer"])
def test_embedding_constructor_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.Embedding(**kw)


def test_embedding_set_weights():
    layer = fastrnn.Embedding(4, 2)
    layer.set_weights([np.arange(8.0).reshape(4, 2)])  # builds
    np.testing.assert_array_equal(layer(np.array([[3]])), [[[6.0, 7.0]]])
    with pytest.raises(ValueError, match=esc("embedding: embeddings must have shape (4, 2); got shape (2, 4)")):
        layer.set_weights([np.zeros((2, 4))])


# ---------------------------------------------------------------------------------------------------------------
# Dropout, Activation, Flatten
# ---------------------------------------------------------------------------------------------------------------

def test_dropout_training_and_inference():
    x = np.ones((200, 50))
    layer = fastrnn.Dropout(0.3, seed=0)
    np.testing.assert_array_equal(layer(x), x)  # inference: identity
    y = layer(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation
    assert not np.array_equal(layer(x, training=True), y)  # a new pattern every call
    np.testing.assert_array_equal(fastrnn.Dropout(0.3, seed=0)(x, training=True), y)  # reproducible with a seed
    np.testing.assert_array_equal(fastrnn.Dropout(0.0)(x, training=True), x)
    mask = np.ones((200, 50), bool)
    assert layer.compute_mask(mask) is mask
    # noise_shape: one pattern shared along the axes of size 1 (e.g. the same features dropped at every step)
    shared = fastrnn.Dropout(0.5, noise_shape=(None, 1, 4), seed=1)(np.ones((3, 6, 4)), training=True)
    assert (shared == shared[:, :1]).all()


@pytest.mark.parametrize("kw,exc,match", [
    (dict(rate=1.0), ValueError, esc("rate must be in [0, 1); got 1.0")),
    (dict(rate=-0.1), ValueError, esc("rate must be in [0, 1); got -0.1")),
    (dict(rate="0.5"), TypeError, esc("rate must be a number in [0, 1); got '0.5'")),
    (dict(rate=True), TypeError, "rate must be a number"),
    (dict(rate=0.5, noise_shape=3), TypeError, "noise_shape must be a tuple"),
    (dict(rate=0.5, noise_shape=(0,)), ValueError, "noise_shape entries must be a positive integer; got 0"),
], ids=["one", "negative", "str", "bool", "noise-int", "noise-0"])
def test_dropout_constructor_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.Dropout(**kw)


def test_dropout_noise_shape_must_fit():
    with pytest.raises(ValueError, match="must have the rank of x"):
        fastrnn.Dropout(0.5, noise_shape=(None, 1))(np.ones((2, 3, 4)), training=True)
    with pytest.raises(ValueError, match="must broadcast to x's shape"):
        fastrnn.Dropout(0.5, noise_shape=(None, 2, 4))(np.ones((2, 3, 4)), training=True)


def test_activation_and_flatten():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    np.testing.assert_allclose(fastrnn.Activation("relu", dtype="float64")(x), np.maximum(x, 0))
    with pytest.raises(ValueError, match="activation must be None or one of"):
        fastrnn.Activation("nope")
    f = fastrnn.Flatten(dtype="float64")
    np.testing.assert_array_equal(f(x), x.reshape(2, 12))
    assert f(np.ones((0, 3, 4))).shape == (0, 12)
    assert f.compute_output_shape((None, None, 4)) == (None, None)
    assert f.compute_mask(np.ones((2, 3), bool)) is None


# ---------------------------------------------------------------------------------------------------------------
# Recurrent layers as Layers
# ---------------------------------------------------------------------------------------------------------------

def test_recurrent_output_shapes_and_masks():
    lstm = fastrnn.LSTM(4, return_sequences=True, return_state=True)
    assert lstm.compute_output_shape((None, 7, 3)) == [(None, 7, 4), (None, 4), (None, 4)]
    gru = fastrnn.GRU(4, go_backwards=True, return_sequences=True)
    mask = np.ones((2, 5), bool)
    assert gru.compute_mask(mask) is mask  # Keras passes the mask on unchanged, even with go_backwards
    assert fastrnn.GRU(4).compute_mask(mask) is None
    with pytest.raises(ValueError, match="input_shape must be"):
        gru.compute_output_shape((None, 3))


# ---------------------------------------------------------------------------------------------------------------
# Bidirectional
# ---------------------------------------------------------------------------------------------------------------

def merge(mode, a, b):
    return {"concat": lambda: np.concatenate([a, b], -1), "sum": lambda: a + b, "mul": lambda: a * b,
            "ave": lambda: (a + b) / 2, None: lambda: [a, b]}[mode]()


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None], ids=str)
@pytest.mark.parametrize("masking", ["none", "mask"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_bidirectional_equals_two_layers_by_hand(cell, options, return_sequences, masking, merge_mode):
    """Forward layer + go_backwards layer whose sequence output is flipped back (Keras), run by hand — checked both
    through fastrnn's own layers and through the transcription of Keras' time loop."""
    B, T, D, U = 4, 5, 3, 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([5, 0, 2, 4])
    mask = lengths_to_mask(lengths, T) if masking == "mask" else None
    h0 = [rng.standard_normal((B, U)) for _ in range(2 * n_states(cell))]
    bi = fastrnn.Bidirectional(make_layer(cell, options, U, return_sequences=return_sequences, return_state=True,
                                          dtype="float64", seed=1), merge_mode=merge_mode)
    out = bi(x, initial_state=h0, mask=mask)
    n_out = 2 if merge_mode is None else 1
    wf, wb = bi.get_weights()[:len(bi.get_weights()) // 2], bi.get_weights()[len(bi.get_weights()) // 2:]
    nf = n_states(cell)

    # 1. two fastrnn layers by hand (Keras forces zero_output_for_mask = return_sequences in both halves)
    fwd = make_layer(cell, options, U, return_sequences=return_sequences, return_state=True, dtype="float64",
                     zero_output_for_mask=return_sequences)
    bwd = make_layer(cell, options, U, return_sequences=return_sequences, return_state=True, dtype="float64",
                     go_backwards=True)
    fwd.set_weights(wf)
    bwd.set_weights(wb)
    f, b = fwd(x, initial_state=h0[:nf], mask=mask), bwd(x, initial_state=h0[nf:], mask=mask)
    yb = b[0][:, ::-1] if return_sequences else b[0]
    want = merge(merge_mode, f[0], yb)
    got = out[:n_out] if merge_mode is None else [out[0]]
    for g, w in zip(got, want if merge_mode is None else [want]):
        np.testing.assert_allclose(g, w, **TOL64)
    for g, w in zip(out[n_out:], f[1:] + b[1:]):
        np.testing.assert_allclose(g, w, **TOL64)

    # 2. Keras' time loop
    last_f, outs_f, st_f = keras_rnn(cell, options, x, wf, h0[:nf], mask, False, return_sequences)
    last_b, outs_b, st_b = keras_rnn(cell, options, x, wb, h0[nf:], mask, True, return_sequences)
    want = merge(merge_mode, outs_f if return_sequences else last_f, outs_b[:, ::-1] if return_sequences else last_b)
    for g, w in zip(got, want if merge_mode is None else [want]):
        np.testing.assert_allclose(g, w, **TOL64)
    for g, w in zip(out[n_out:], st_f + st_b):
        np.testing.assert_allclose(g, w, **TOL64)


def test_bidirectional_structure_weights_and_shapes():
    layer = fastrnn.LSTM(64, seed=5, name="enc")
    bi = fastrnn.Bidirectional(layer)
    assert bi.forward_layer is not layer and bi.forward_layer.name == "forward_enc"
    assert bi.backward_layer.name == "backward_enc" and bi.backward_layer.go_backwards
    assert not bi.forward_layer.go_backwards and not layer.built
    y = bi(np.ones((2, 3, 10), np.float32))
    assert y.shape == (2, 128) and bi.count_params() == 2 * 19200  # Keras: Bidirectional(LSTM(64)) on 10 features
    w = bi.get_weights()
    assert [a.shape for a in w] == [(10, 256), (64, 256), (256,)] * 2
    assert not np.array_equal(w[0], w[3])  # the halves start from different weights
    # forward weights then backward weights, in and out
    new = [np.full(a.shape, k, np.float32) for k, a in enumerate(w)]
    bi.set_weights(new)
    for a, b in zip(bi.forward_layer.get_weights() + bi.backward_layer.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    assert len(bi.weights) == len(bi.grads) == 6
    with pytest.raises(ValueError, match=esc("set_weights needs 6 arrays [forward kernel, forward recurrent_kernel, "
                                             "forward bias, backward kernel")):
        bi.set_weights(new[:3])
    with pytest.raises(ValueError, match=esc("backward_enc: recurrent_kernel must have shape (64, 256)")):
        bi.set_weights(new[:4] + [np.zeros((2, 2)), new[5]])
    np.testing.assert_array_equal(bi.get_weights()[0], new[0])
    # unbuilt: set_weights builds both halves
    fresh = fastrnn.Bidirectional(fastrnn.GRU(2))
    fresh.set_weights([np.zeros((3, 6)), np.zeros((2, 6)), np.zeros((2, 6))] * 2)
    assert fresh.built and fresh.count_params() == 2 * (18 + 12 + 12)
    # shapes
    seq = fastrnn.Bidirectional(fastrnn.GRU(4, return_sequences=True, return_state=True), merge_mode=None)
    assert seq.compute_output_shape((None, 7, 3)) == [(None, 7, 4), (None, 7, 4), (None, 4), (None, 4)]
    concat = fastrnn.Bidirectional(fastrnn.LSTM(4, return_state=True))
    assert concat.compute_output_shape((None, 7, 3)) == [(None, 8), (None, 4), (None, 4), (None, 4), (None, 4)]
    mask = np.ones((2, 7), bool)
    assert seq.compute_mask(mask) == [mask, mask] and concat.compute_mask(mask) is None


def test_bidirectional_with_backward_layer_and_go_backwards_layer():
    x = np.random.default_rng(4).standard_normal((2, 5, 3))
    back = fastrnn.SimpleRNN(3, go_backwards=True, return_sequences=True, activation="relu", dtype="float64")
    bi = fastrnn.Bidirectional(fastrnn.SimpleRNN(2, return_sequences=True, dtype="float64"), backward_layer=back)
    assert bi.backward_layer is back
    y = bi(x, lengths=[5, 3])
    assert y.shape == (2, 5, 5)
    np.testing.assert_allclose(y[:, :, 2:], back(x, lengths=[5, 3])[:, ::-1], **TOL64)
    # a layer with go_backwards=True: its copy runs forwards; Keras flips the "backward" half's sequence all the same
    rev = fastrnn.Bidirectional(fastrnn.GRU(2, go_backwards=True, return_sequences=True, dtype="float64", seed=0))
    y = rev(x)
    f = fastrnn.GRU(2, go_backwards=True, return_sequences=True, dtype="float64")
    b = fastrnn.GRU(2, return_sequences=True, dtype="float64")
    f.set_weights(rev.forward_layer.get_weights())
    b.set_weights(rev.backward_layer.get_weights())
    np.testing.assert_allclose(y, np.concatenate([f(x), b(x)[:, ::-1]], -1), **TOL64)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: fastrnn.Bidirectional(fastrnn.Dense(2)), TypeError, "layer must be a recurrent layer .*got Dense"),
    (lambda: fastrnn.Bidirectional(fastrnn.LSTM(2), merge_mode="max"), ValueError,
     "merge_mode must be one of 'concat', 'sum', 'mul', 'ave' or None; got 'max'"),
    (lambda: fastrnn.Bidirectional(fastrnn.LSTM(2), backward_layer=fastrnn.LSTM(2)), ValueError,
     "backward_layer must have a go_backwards different from layer's"),
    (lambda: fastrnn.Bidirectional(fastrnn.LSTM(2), backward_layer=fastrnn.LSTM(2, go_backwards=True,
                                                                               return_sequences=True)),
     ValueError, "backward_layer must have the same return_sequences as layer"),
    (lambda: fastrnn.Bidirectional(fastrnn.LSTM(2), merge_mode="sum",
                                   backward_layer=fastrnn.LSTM(3, go_backwards=True)),
     ValueError, "merge_mode='sum' needs the same units in both halves; got 2 and 3"),
    (lambda: fastrnn.Bidirectional(fastrnn.LSTM(2), backward_layer="lstm"), TypeError,
     "backward_layer must be a recurrent layer"),
], ids=["not-recurrent", "merge-mode", "same-direction", "mismatch", "units", "backward-type"])
def test_bidirectional_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bidirectional_rejects_bad_initial_state():
    bi = fastrnn.Bidirectional(fastrnn.LSTM(2))
    with pytest.raises(ValueError, match=esc("bidirectional: initial_state must be a list of 4 arrays (forward "
                                             "states then backward states); got a list of 2")):
        bi(np.ones((1, 3, 2)), initial_state=[np.zeros((1, 2))] * 2)


# ---------------------------------------------------------------------------------------------------------------
# Stateful recurrent layers
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("masking", ["none", "lengths"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_stateful_streaming_over_chunks_equals_one_long_call(cell, options, masking):
    B, T, D, U = 3, 10, 2, 4
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([10, 3, 7]) if masking == "lengths" else None
    long = make_layer(cell, options, U, return_sequences=True, return_state=True, zero_output_for_mask=True,
                      dtype="float64", seed=2)
    want = long(x, lengths=lengths)
    stream = make_layer(cell, options, U, return_sequences=True, zero_output_for_mask=True, dtype="float64",
                        stateful=True, batch_input_shape=(B, None, D))
    stream.set_weights(long.get_weights())
    pieces = []
    for start, stop in ((0, 4), (4, 5), (5, 10)):
        chunk_lengths = None if lengths is None else np.clip(lengths - start, 0, stop - start)
        pieces.append(stream(x[:, start:stop], lengths=chunk_lengths))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want[0], **TOL64)
    for s, w in zip(stream.states, want[1:]):
        np.testing.assert_allclose(s, w, **TOL64)
    # reset_states: back to zeros, the same as a fresh start
    stream.reset_states()
    assert all(not s.any() for s in stream.states)
    np.testing.assert_allclose(stream(x[:, :4], lengths=None if lengths is None else np.minimum(lengths, 4)),
                               want[0][:, :4], **TOL64)


def test_stateful_states_batch_and_reset():
    B, D, U = 2, 3, 4
    x = np.random.default_rng(6).standard_normal((B, 5, D))
    layer = fastrnn.LSTM(U, stateful=True, return_state=True, dtype="float64", seed=0, backend="numpy")
    assert layer.states is None
    _, h, c = layer(x)  # the first call fixes the batch size
    np.testing.assert_array_equal(layer.states[0], h)
    h[...] = 7.0  # the stored states are copies
    assert not (layer.states[0] == 7.0).any()
    with pytest.raises(ValueError, match=esc("lstm: a stateful layer has a fixed batch size of 2 (from "
                                             "batch_input_shape or its first call); got x of shape (3, 5, 3)")):
        layer(np.ones((3, 5, D)))
    # reset_states(states) sets them; an explicit initial_state wins over the stored states (Keras)
    h0, c0 = np.full((B, U), 0.1), np.full((B, U), -0.2)
    layer.reset_states([h0, c0])
    a = layer(x)
    b = fastrnn.LSTM(U, return_state=True, dtype="float64", backend="numpy")
    b.set_weights(layer.get_weights())
    want = b(x, initial_state=[h0, c0])
    for u, v in zip(a, want):
        np.testing.assert_allclose(u, v, **TOL64)
    layer(x, initial_state=[h0, c0])
    np.testing.assert_allclose(layer.states[1], want[2], **TOL64)
    with pytest.raises(ValueError, match=esc("lstm: states must hold 2 array(s) [h, c]; got 1")):
        layer.reset_states([h0])
    with pytest.raises(ValueError, match=esc("lstm: states h must have shape (batch=2, units=4); got shape (3, 4)")):
        layer.reset_states([np.zeros((3, U)), c0])
    with pytest.raises(ValueError, match="reset_states needs a stateful layer"):
        fastrnn.GRU(2).reset_states()
    # batch_input_shape fixes the batch before any call
    fixed = fastrnn.GRU(2, stateful=True, batch_input_shape=(4, None, 3))
    with pytest.raises(ValueError, match="fixed batch size of 4"):
        fixed(np.ones((2, 5, 3)))
    fixed.reset_states()
    assert [s.shape for s in fixed.states] == [(4, 2)]


def test_stateful_bidirectional():
    x = np.random.default_rng(7).standard_normal((2, 4, 3))
    bi = fastrnn.Bidirectional(fastrnn.GRU(2, stateful=True, return_sequences=True, seed=0))
    assert bi.stateful and bi.states is None
    first = bi(x)
    assert len(bi.states) == 2
    assert not np.allclose(bi(x), first)  # the halves carry their states
    bi.reset_states()
    np.testing.assert_allclose(bi(x), first, rtol=1e-6)
    bi.reset_states([np.zeros((2, 2)), np.ones((2, 2))])
    np.testing.assert_array_equal(bi.backward_layer.states[0], 1.0)
