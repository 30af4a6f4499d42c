"""fastrnn.interop.keras: Keras 3 layers and Sequential models -> fastrnn and back, outputs equal to Keras'.

Keras runs on the torch backend (no TensorFlow / JAX here). Every comparison runs the Keras object and the fastrnn
one on the same numpy input; weights are random (not Keras' initial values) so biases and every gate matter.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

# Keras 3 with numpy 2 warns about its own __array__ on every get_weights / convert_to_numpy
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

import fastrnn  # noqa: E402
from fastrnn.interop.keras import from_keras, load_keras_weights, to_keras  # noqa: E402

B, T, D, U, V = 4, 6, 3, 5, 12  # batch, timesteps, features, units, vocabulary
# Keras' float64 layers on the torch backend run their matmuls in float32: its type promotion maps float64 to
# float32 on every backend but TensorFlow (keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE, "aligned with JAX's
# default"), so keras.ops.matmul of two float64 tensors rounds to float32 and casts back. fastrnn's float64 is float64
# throughout; against Keras the float64 tolerance is therefore float32's, and test_float64 checks fastrnn's float64
# against its NumPy reference backend at 1e-12 as well.
TOL = {"float32": 1e-5, "float64": 1e-6}

CELLS = [("SimpleRNN", dict(activation="tanh")), ("SimpleRNN", dict(activation="relu")), ("LSTM", dict()),
         ("GRU", dict(reset_after=True)), ("GRU", dict(reset_after=False))]
CELL_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru-ra", "gru-rb"]
OPTIONS = [dict(), dict(return_sequences=True), dict(return_sequences=True, return_state=True),
           dict(go_backwards=True), dict(go_backwards=True, return_sequences=True, return_state=True)]
OPTION_IDS = ["last", "seq", "seq-state", "back", "back-seq-state"]


# -- helpers --------------------------------------------------------------------------------------------------------
def _np(y):
    if isinstance(y, (list, tuple)):
        return [_np(a) for a in y]
    return np.asarray(keras.ops.convert_to_numpy(y))


def _as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _assert_close(got, expected, dtype="float32"):
    got, expected = _as_list(got), _as_list(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, e, rtol=TOL[dtype], atol=TOL[dtype])


def _randomize(klayer, seed=0, scale=0.5):
    """Random weights (Keras' own start with zero biases) so every parameter shows in the outputs."""
    rng = np.random.default_rng(seed)
    klayer.set_weights([(rng.standard_normal(w.shape) * scale).astype(w.dtype) for w in klayer.get_weights()])


def _x(dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(dtype)


def _tokens(seed=2):
    """Right-padded token ids (0 is padding): a full row, a partial row, a row of one step and an empty row."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(1, V, (B, T))
    for row, length in enumerate((T, 3, 1, 0)):
        tok[row, length:] = 0
    return tok


def _keras_rnn(kind, **options):
    return getattr(keras.layers, kind)(U, **options)


def _masked_model(kind, dtype="float32", **options):
    """keras.Sequential: Input -> Embedding(mask_zero=True) -> the recurrent layer, built, random weights."""
    model = keras.Sequential([keras.Input((T,), dtype="int32"),
                              keras.layers.Embedding(V, D, mask_zero=True, dtype=dtype),
                              _keras_rnn(kind, dtype=dtype, **options)])
    for k, layer in enumerate(model.layers):
        _randomize(layer, seed=k)
    return model


# -- recurrent layers, Keras -> fastrnn -----------------------------------------------------------------------------
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_recurrent_layer_from_keras(kind, cell_options, options):
    klayer = _keras_rnn(kind, **cell_options, **options)
    klayer.build((None, None, D))
    _randomize(klayer)
    layer = from_keras(klayer)
    assert type(layer) is getattr(fastrnn, kind)
    assert layer.name == klayer.name and layer.units == U
    for key, value in dict(cell_options, **options).items():
        assert getattr(layer, key) == value
    x = _x()
    _assert_close(layer(x), _np(klayer(x)))


@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_recurrent_layer_initial_state(kind, cell_options):
    klayer = _keras_rnn(kind, return_sequences=True, return_state=True, **cell_options)
    klayer.build((None, None, D))
    _randomize(klayer)
    rng = np.random.default_rng(3)
    h0 = [rng.standard_normal((B, U)).astype("float32") for _ in range(2 if kind == "LSTM" else 1)]
    x = _x()
    expected = _np(klayer(keras.ops.convert_to_tensor(x), initial_state=[keras.ops.convert_to_tensor(h)
                                                                          for h in h0]))
    _assert_close(from_keras(klayer)(x, initial_state=h0), expected)


# -- masks from Embedding(mask_zero=True) ---------------------------------------------------------------------------
MASK_OPTIONS = [dict(), dict(return_sequences=True), dict(go_backwards=True),
                dict(go_backwards=True, return_sequences=True), dict(zero_output_for_mask=True),
                dict(return_sequences=True, zero_output_for_mask=True),
                dict(go_backwards=True, return_sequences=True, zero_output_for_mask=True)]
MASK_OPTION_IDS = ["last", "seq", "back", "back-seq", "zero-last", "zero-seq", "zero-back-seq"]


@pytest.mark.parametrize("options", MASK_OPTIONS, ids=MASK_OPTION_IDS)
@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_masked_sequential_from_keras(kind, cell_options, options):
    """Keras (torch backend) at masked steps: the state is held; with return_sequences the output repeats the last
    valid one (zeros before any valid step, all zeros for an empty row) unless zero_output_for_mask; the last
    output of an empty row is zero. fastrnn's defaults must give the same numbers."""
    kmodel = _masked_model(kind, **cell_options, **options)
    model = from_keras(kmodel)
    assert model.layers[1].zero_output_for_mask == options.get("zero_output_for_mask", False)
    tok = _tokens()
    expected = _np(kmodel(tok))
    got = model.predict(tok)
    _assert_close(got, expected)
    if cell_options.get("activation") != "relu":  # (relu with these weights is zero too often to tell)
        # the mask matters here: without it the outputs differ
        emb = model.layers[0](tok)
        assert not np.allclose(model.layers[1](emb), expected, atol=1e-3)


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "back"])
@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_masked_return_state(kind, cell_options, go_backwards):
    """return_state with a mask (a layer called with an explicit mask, as a functional Keras model does)."""
    klayer = _keras_rnn(kind, return_sequences=True, return_state=True, go_backwards=go_backwards, **cell_options)
    klayer.build((None, None, D))
    _randomize(klayer)
    x, mask = _x(), _tokens() != 0
    expected = _np(klayer(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask)))
    _assert_close(from_keras(klayer)(x, mask=mask), expected)


# -- Bidirectional --------------------------------------------------------------------------------------------------
MERGE_MODES = ["concat", "sum", "mul", "ave", None]


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
def test_bidirectional_from_keras(merge_mode, return_sequences, masked):
    kbi = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode)
    kbi.build((None, None, D))
    _randomize(kbi)
    bi = from_keras(kbi)
    assert isinstance(bi, fastrnn.Bidirectional) and bi.merge_mode == merge_mode
    assert bi.forward_layer.name == kbi.forward_layer.name and bi.backward_layer.name == kbi.backward_layer.name
    assert bi.count_params() == kbi.count_params()
    x, mask = _x(), _tokens() != 0
    if masked:
        expected = _np(kbi(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask)))
        got = bi(x, mask=mask)
    else:
        expected, got = _np(kbi(x)), bi(x)
    _assert_close(got, expected)


@pytest.mark.parametrize("merge_mode", ["concat", None], ids=["concat", "None"])
def test_bidirectional_return_state_and_backward_layer(merge_mode):
    """return_state ([outputs..., forward states, backward states]) and an explicit backward_layer of another cell."""
    kbi = keras.layers.Bidirectional(
        keras.layers.GRU(U, return_sequences=True, return_state=True, reset_after=False), merge_mode=merge_mode,
        backward_layer=keras.layers.SimpleRNN(U, return_sequences=True, return_state=True, go_backwards=True,
                                              activation="relu"))
    kbi.build((None, None, D))
    _randomize(kbi)
    bi = from_keras(kbi)
    assert isinstance(bi.backward_layer, fastrnn.SimpleRNN) and bi.backward_layer.activation == "relu"
    x, mask = _x(), _tokens() != 0
    expected = _np(kbi(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask)))
    _assert_close(bi(x, mask=mask), expected)


# -- stacks ---------------------------------------------------------------------------------------------------------
def _stack(variant):
    if variant == "lstm-gru":
        layers = [keras.layers.LSTM(U, return_sequences=True), keras.layers.GRU(4, reset_after=False),
                  keras.layers.Dense(3, activation="softmax", trainable=False)]
    else:
        layers = [keras.layers.Bidirectional(keras.layers.GRU(U, return_sequences=True), merge_mode="ave"),
                  keras.layers.SimpleRNN(4, return_sequences=True, go_backwards=True),
                  keras.layers.Dropout(0.3), keras.layers.Dense(2, activation="tanh")]
    kmodel = keras.Sequential([keras.Input((T,), dtype="int32"), keras.layers.Embedding(V, D, mask_zero=True)]
                              + layers, name=f"stack_{variant.replace('-', '_')}")
    for k, layer in enumerate(kmodel.layers):
        _randomize(layer, seed=10 + k)
    return kmodel


@pytest.mark.parametrize("variant", ["lstm-gru", "bi-rnn"])
def test_stack_from_keras_and_back(variant):
    kmodel = _stack(variant)
    model = from_keras(kmodel)
    assert isinstance(model, fastrnn.Sequential) and model.name == kmodel.name
    assert [type(layer).__name__ for layer in model.layers] == [type(layer).__name__ for layer in kmodel.layers]
    assert [layer.name for layer in model.layers] == [layer.name for layer in kmodel.layers]
    assert model.input_spec.shape == (None, T) and model.input_spec.dtype == np.int32
    assert model.count_params() == kmodel.count_params()
    assert [layer.trainable for layer in model.layers] == [layer.trainable for layer in kmodel.layers]
    lines = []
    model.summary(print_fn=lines.append)
    assert f" Total params: {kmodel.count_params():,} " in "\n".join(lines)
    tok = _tokens()
    expected = _np(kmodel(tok))
    _assert_close(model.predict(tok), expected)

    back = to_keras(model)
    assert isinstance(back, keras.Sequential) and back.count_params() == kmodel.count_params()
    assert [layer.name for layer in back.layers] == [layer.name for layer in kmodel.layers]
    assert [layer.trainable for layer in back.layers] == [layer.trainable for layer in kmodel.layers]
    for a, b in zip(back.get_weights(), kmodel.get_weights()):
        np.testing.assert_array_equal(a, b)
    _assert_close(_np(back(tok)), expected)


# -- fastrnn -> Keras -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", OPTIONS[1:3] + OPTIONS[4:], ids=OPTION_IDS[1:3] + OPTION_IDS[4:])
@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_recurrent_layer_to_keras(kind, cell_options, options):
    layer = getattr(fastrnn, kind)(U, seed=4, **cell_options, **options)
    layer.build((None, None, D))
    rng = np.random.default_rng(5)
    layer.set_weights([rng.standard_normal(w.shape) * 0.5 for w in layer.get_weights()])
    klayer = to_keras(layer)
    assert type(klayer) is getattr(keras.layers, kind) and klayer.name == layer.name
    config = klayer.get_config()
    for key, value in dict(cell_options, **options).items():
        assert config[key] == value
    x, mask = _x(), _tokens() != 0
    expected = _np(klayer(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask)))
    _assert_close(layer(x, mask=mask), expected)
    # and back: the same options and weights
    again = from_keras(klayer)
    skip = {"seed", "kernel_initializer", "recurrent_initializer", "bias_initializer"}
    assert {k: v for k, v in again.get_config().items() if k not in skip} == \
        {k: v for k, v in layer.get_config().items() if k not in skip}
    for a, b in zip(again.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("merge_mode", MERGE_MODES, ids=[str(m) for m in MERGE_MODES])
def test_bidirectional_to_keras(merge_mode):
    bi = fastrnn.Bidirectional(fastrnn.GRU(U, return_sequences=True, seed=6), merge_mode=merge_mode)
    x, mask = _x(), _tokens() != 0
    got = bi(x, mask=mask)  # builds
    kbi = to_keras(bi)
    assert kbi.merge_mode == merge_mode and kbi.count_params() == bi.count_params()
    assert kbi.forward_layer.name == bi.forward_layer.name and kbi.backward_layer.name == bi.backward_layer.name
    _assert_close(got, _np(kbi(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask))))


def test_model_to_keras():
    """A fastrnn model built natively (Input, Embedding, Bidirectional, stacked GRU, Dropout, Dense) -> Keras."""
    model = fastrnn.Sequential([
        fastrnn.Input((T,), dtype="int32"),
        fastrnn.Embedding(V, D, mask_zero=True, seed=1),
        fastrnn.Bidirectional(fastrnn.LSTM(U, return_sequences=True, seed=2), merge_mode="sum"),
        fastrnn.GRU(4, seed=3),
        fastrnn.Dropout(0.2),
        fastrnn.Dense(3, activation="softmax", seed=4),
    ], name="native")
    model.build()
    rng = np.random.default_rng(7)
    model.set_weights([rng.standard_normal(w.shape) * 0.5 for w in model.get_weights()])
    kmodel = to_keras(model)
    assert kmodel.name == "native" and kmodel.count_params() == model.count_params()
    assert [type(layer).__name__ for layer in kmodel.layers] == [type(layer).__name__ for layer in model.layers]
    tok = _tokens()
    _assert_close(model.predict(tok), _np(kmodel(tok)))
    # the Keras model trains (its layers are ordinary Keras layers)
    kmodel.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    kmodel.fit(tok, np.arange(B) % 3, epochs=1, verbose=0)


# -- float64 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cell_options", CELLS, ids=CELL_IDS)
def test_float64(kind, cell_options):
    kmodel = _masked_model(kind, dtype="float64", return_sequences=True, **cell_options)
    model = from_keras(kmodel)
    assert all(layer.dtype == np.float64 for layer in model.layers)
    tok = _tokens()
    expected = _np(kmodel(tok))
    assert expected.dtype == np.float64
    got = model.predict(tok)
    _assert_close(got, expected, "float64")
    reference = from_keras(kmodel, backend="numpy").predict(tok)
    np.testing.assert_allclose(got, reference, rtol=1e-12, atol=1e-12)
    back = to_keras(model)
    assert back.layers[1].get_config()["dtype"]["config"]["name"] == "float64"
    _assert_close(_np(back(tok)), expected, "float64")


def test_float64_bidirectional():
    kbi = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=True, dtype="float64"), dtype="float64")
    kbi.build((None, None, D))
    _randomize(kbi)
    bi = from_keras(kbi)
    x, mask = _x("float64"), _tokens() != 0
    expected = _np(kbi(keras.ops.convert_to_tensor(x), mask=keras.ops.convert_to_tensor(mask)))
    _assert_close(bi(x, mask=mask), expected, "float64")


# -- stateful -------------------------------------------------------------------------------------------------------
def test_stateful():
    kmodel = keras.Sequential([keras.Input((T, D), batch_size=B),
                               keras.layers.LSTM(U, stateful=True, return_sequences=True)])
    _randomize(kmodel.layers[0])
    model = from_keras(kmodel)
    assert model.layers[0].stateful and model.input_spec.batch_size == B
    x1, x2 = _x(seed=8), _x(seed=9)
    for x in (x1, x2):  # the second call starts from the first one's final states, in both
        _assert_close(model.predict(x, batch_size=B), _np(kmodel(x)))
    kmodel.layers[0].reset_state()
    model.reset_states()
    _assert_close(model.predict(x2, batch_size=B), _np(kmodel(x2)))
    back = to_keras(model)
    assert back.layers[0].stateful and back.count_params() == kmodel.count_params()

    # a fastrnn model whose Input has no batch size: Keras gets the batch size the stateful layer ran with
    native = fastrnn.Sequential([fastrnn.Input((T, D)), fastrnn.GRU(U, stateful=True)])
    with pytest.raises(ValueError, match="fixed batch size"):
        to_keras(native)
    native.predict(x1, batch_size=B)
    back = to_keras(native)
    assert back.layers[0].stateful and back.input_shape == (B, T, D)
    back.layers[0].reset_state()
    native.reset_states()
    _assert_close(native.predict(x1, batch_size=B), _np(back(x1)))


# -- core layers ----------------------------------------------------------------------------------------------------
def _core_cases():
    return [
        (keras.layers.Dense(4, activation="relu", use_bias=True), (None, T, D), _x()),
        (keras.layers.Dense(2, activation="gelu", use_bias=False), (None, D), _x()[:, 0]),
        (keras.layers.Embedding(V, D, mask_zero=True), None, _tokens()),
        (keras.layers.Dropout(0.5, noise_shape=(None, 1, D), seed=3), None, _x()),
        (keras.layers.Activation("softmax"), None, _x()),
        (keras.layers.Flatten(), None, _x()),
        (keras.layers.RepeatVector(3), None, _x()[:, 0]),
    ]


@pytest.mark.parametrize("case", range(7), ids=["dense-3d", "dense-2d", "embedding", "dropout", "activation",
                                                "flatten", "repeat"])
def test_core_layers(case):
    klayer, shape, x = _core_cases()[case]
    if shape is not None or isinstance(klayer, keras.layers.Embedding):
        klayer.build(shape)
        _randomize(klayer)
    layer = from_keras(klayer)
    assert type(layer).__name__ == type(klayer).__name__ and layer.name == klayer.name
    expected = _np(klayer(x))
    _assert_close(layer(x), expected)
    back = to_keras(layer)
    assert type(back) is type(klayer)
    for key in ("units", "activation", "use_bias", "input_dim", "output_dim", "mask_zero", "rate", "noise_shape",
                "n", "seed"):
        if key in klayer.get_config():
            assert back.get_config()[key] == klayer.get_config()[key], key
    _assert_close(_np(back(x)), expected)
    if isinstance(klayer, keras.layers.Embedding):
        np.testing.assert_array_equal(layer.compute_mask(inputs=x), _np(klayer.compute_mask(x)))


def test_unbuilt_layers():
    """An unbuilt Keras layer gives an unbuilt fastrnn layer with the same options, and the other way round."""
    layer = from_keras(keras.layers.GRU(U, reset_after=False, return_sequences=True))
    assert not layer.built and layer.reset_after is False and layer.return_sequences
    klayer = to_keras(fastrnn.LSTM(U, go_backwards=True))
    assert not klayer.built and klayer.go_backwards
    model = from_keras(keras.Sequential([keras.layers.LSTM(U), keras.layers.Dense(1)]))
    assert not model.built and model.input_spec is None
    y = model.predict(_x())  # builds from the data, with fastrnn's initial weights
    assert y.shape == (B, 1)


def test_input_layer():
    spec = from_keras(keras.layers.InputLayer(shape=(None, D), batch_size=2, dtype="float64", name="tokens"))
    assert isinstance(spec, fastrnn.Input) and spec.shape == (2, None, D) and spec.dtype == np.float64
    back = to_keras(spec)
    assert back.get_config()["batch_shape"] == (2, None, D) and back.name == "tokens"


# -- load_keras_weights ---------------------------------------------------------------------------------------------
def test_load_keras_weights():
    kmodel = _stack("lstm-gru")
    model = fastrnn.Sequential([fastrnn.Input((T,), dtype="int32"), fastrnn.Embedding(V, D, mask_zero=True),
                                fastrnn.LSTM(U, return_sequences=True), fastrnn.GRU(4, reset_after=False),
                                fastrnn.Dense(3, activation="softmax")])
    assert load_keras_weights(model, kmodel) is model
    tok = _tokens()
    _assert_close(model.predict(tok), _np(kmodel(tok)))

    layer = fastrnn.LSTM(U)
    klayer = keras.layers.LSTM(U)
    klayer.build((None, None, D))
    _randomize(klayer)
    load_keras_weights(layer, klayer)
    _assert_close(layer(_x()), _np(klayer(_x())))


def test_load_keras_weights_mismatch():
    kmodel = _stack("lstm-gru")
    model = fastrnn.Sequential([fastrnn.Input((T,), dtype="int32"), fastrnn.Embedding(V, D, mask_zero=True),
                                fastrnn.LSTM(U, return_sequences=True), fastrnn.GRU(4, reset_after=True),
                                fastrnn.Dense(3, activation="softmax")])
    model.build()
    before = model.get_weights()
    with pytest.raises(ValueError, match="reset_after: fastrnn has True, Keras has False"):
        load_keras_weights(model, kmodel)
    for a, b in zip(model.get_weights(), before):  # nothing changed
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="units"):
        load_keras_weights(fastrnn.LSTM(U + 1), keras.layers.LSTM(U))
    with pytest.raises(ValueError, match="layers"):
        load_keras_weights(fastrnn.Sequential([fastrnn.Input((T,), dtype="int32"), fastrnn.Embedding(V, D)]), kmodel)


# -- what fastrnn cannot reproduce ----------------------------------------------------------------------------------
UNSUPPORTED = [
    ("lstm_dropout", lambda: keras.layers.LSTM(U, dropout=0.2, name="lstm_dropout"), "dropout=0.2"),
    ("gru_rdrop", lambda: keras.layers.GRU(U, recurrent_dropout=0.1, name="gru_rdrop"), "recurrent_dropout=0.1"),
    ("lstm_hard", lambda: keras.layers.LSTM(U, recurrent_activation="hard_sigmoid", name="lstm_hard"),
     "recurrent_activation='hard_sigmoid'"),
    ("gru_relu", lambda: keras.layers.GRU(U, activation="relu", name="gru_relu"), "activation='relu'"),
    ("rnn_sigmoid", lambda: keras.layers.SimpleRNN(U, activation="sigmoid", name="rnn_sigmoid"),
     "activation='sigmoid'"),
    ("dense_l2", lambda: keras.layers.Dense(2, kernel_regularizer="l2", name="dense_l2"), "kernel_regularizer"),
    ("dense_mish", lambda: keras.layers.Dense(2, activation="mish", name="dense_mish"), "activation='mish'"),
    ("lstm_mixed", lambda: keras.layers.LSTM(U, dtype="mixed_float16", name="lstm_mixed"), "dtype"),
    ("flat_cf", lambda: keras.layers.Flatten(data_format="channels_first", name="flat_cf"), "data_format"),
    ("conv", lambda: keras.layers.Conv1D(2, 3, name="conv"), "Conv1D"),
    ("masking", lambda: keras.layers.Masking(name="masking"), "Masking"),
    ("bi_drop", lambda: keras.layers.Bidirectional(keras.layers.LSTM(U, dropout=0.5), name="bi_drop"), "dropout"),
]


@pytest.mark.parametrize("name, make, match", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
def test_unsupported_options(name, make, match):
    with pytest.raises(ValueError) as info:
        from_keras(make())
    message = str(info.value)
    assert match in message
    assert f"'{name}'" in message  # the layer is named (for Bidirectional: the wrapper, then its half)


def test_training_only_options_dropped_with_strict_false():
    klayer = keras.layers.LSTM(U, dropout=0.3, recurrent_dropout=0.2, kernel_regularizer="l2",
                               return_sequences=True)
    klayer.build((None, None, D))
    _randomize(klayer)
    with pytest.warns(UserWarning, match="dropout, recurrent_dropout, kernel_regularizer"):
        layer = from_keras(klayer, strict=False)
    _assert_close(layer(_x()), _np(klayer(_x())))  # inference: Keras applies no dropout


def test_models_and_objects_not_supported():
    inputs = keras.Input((T, D))
    functional = keras.Model(inputs, keras.layers.LSTM(U)(inputs))
    with pytest.raises(ValueError, match="only keras.Sequential"):
        from_keras(functional)
    nested = keras.Sequential([keras.Input((T, D)), keras.Sequential([keras.layers.LSTM(U)])])
    with pytest.raises(ValueError, match="nested models"):
        from_keras(nested)
    with pytest.raises(TypeError, match="Keras 3 layer"):
        from_keras(fastrnn.LSTM(U))
    with pytest.raises(TypeError, match="fastrnn layer"):
        to_keras(keras.layers.LSTM(U))
    with pytest.raises(ValueError, match="backend"):
        from_keras(keras.layers.LSTM(U), backend="cuda")


def test_backend_option():
    klayer = keras.layers.GRU(U, return_sequences=True)
    klayer.build((None, None, D))
    _randomize(klayer)
    layer = from_keras(klayer, backend="numpy")
    assert layer.backend == "numpy"
    _assert_close(layer(_x()), _np(klayer(_x())))
    assert layer.backend_used == "numpy"
