"""Sequential: summary (Keras 3's table and counts), compile / fit / predict / evaluate / train_on_batch, History,
masks in the loss, save / load, stateful models, bad arguments, RepeatVector, and training on every backend."""
import math
import re

import numpy as np
import pytest

import fastrnn
from fastrnn import ops, optimizers

COMPILED = [b for b in ops.COMPILED_BACKENDS if ops.available_backends()[b] is None]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def summary_text(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def summary_rows(model):
    """[(name, type, output shape, params)] parsed from the printed table."""
    rows = []
    for line in summary_text(model).splitlines():
        m = re.match(r"│ (\S+) \((\w+)\)\s*│ (.+?)\s*│\s*([\d,]+) │$", line)
        if m:
            rows.append((m[1], m[2], m[3], int(m[4].replace(",", ""))))
    return rows


def summary_totals(model):
    text = summary_text(model)
    return {k: int(v.replace(",", "")) for k, v in re.findall(r" (\w[\w-]*) params: ([\d,]+)", text)}


# ---------------------------------------------------------------------------------------------------------------
# summary(): Keras 3's counts, by formula and as Keras prints them
# ---------------------------------------------------------------------------------------------------------------

# Parameter counts by formula (d: input features, u: units), independent of the layer code.
def n_embedding(vocab, dim):
    return vocab * dim


def n_dense(d, u):
    return d * u + u


def n_simple_rnn(d, u):
    return u * (d + u) + u


def n_lstm(d, u):
    return 4 * (u * (d + u) + u)


def n_gru(d, u, reset_after=True):
    return 3 * (u * (d + u) + (2 * u if reset_after else u))


def n_bidirectional(n_half):
    return 2 * n_half


# Models whose Keras 3 summary is known (the numbers Keras prints for the same layers, from its docs and examples),
# with the same counts derived by formula. Each entry: layers, [(name, type, output shape, Keras count, formula)].
KERAS_MODELS = {
    # the univariate "next number" LSTM tutorial
    "lstm-regression": (
        lambda: [fastrnn.Input((3, 1)), fastrnn.LSTM(50), fastrnn.Dense(1)],
        [("lstm", "LSTM", "(None, 50)", 10_400, n_lstm(1, 50)),
         ("dense", "Dense", "(None, 1)", 51, n_dense(50, 1))],
        10_451),
    # keras.io "Bidirectional LSTM on IMDB"
    "imdb-bidirectional": (
        lambda: [fastrnn.Input((None,), dtype="int32"), fastrnn.Embedding(20000, 128),
                 fastrnn.Bidirectional(fastrnn.LSTM(64, return_sequences=True)),
                 fastrnn.Bidirectional(fastrnn.LSTM(64)), fastrnn.Dense(1, activation="sigmoid")],
        [("embedding", "Embedding", "(None, None, 128)", 2_560_000, n_embedding(20000, 128)),
         ("bidirectional", "Bidirectional", "(None, None, 128)", 98_816, n_bidirectional(n_lstm(128, 64))),
         ("bidirectional_1", "Bidirectional", "(None, 128)", 98_816, n_bidirectional(n_lstm(128, 64))),
         ("dense", "Dense", "(None, 1)", 129, n_dense(128, 1))],
        2_757_761),
    # keras.io "Working with RNNs": Embedding -> LSTM -> Dense
    "guide-lstm": (
        lambda: [fastrnn.Input((None,), dtype="int32"), fastrnn.Embedding(1000, 64), fastrnn.LSTM(128),
                 fastrnn.Dense(10)],
        [("embedding", "Embedding", "(None, None, 64)", 64_000, n_embedding(1000, 64)),
         ("lstm", "LSTM", "(None, 128)", 98_816, n_lstm(64, 128)),
         ("dense", "Dense", "(None, 10)", 1_290, n_dense(128, 10))],
        164_106),
    # keras.io "Working with RNNs": Embedding -> GRU (reset_after) -> SimpleRNN -> Dense
    "guide-gru": (
        lambda: [fastrnn.Input((None,), dtype="int32"), fastrnn.Embedding(1000, 64),
                 fastrnn.GRU(256, return_sequences=True), fastrnn.SimpleRNN(128), fastrnn.Dense(10)],
        [("embedding", "Embedding", "(None, None, 64)", 64_000, n_embedding(1000, 64)),
         ("gru", "GRU", "(None, None, 256)", 247_296, n_gru(64, 256)),
         (None, "SimpleRNN", "(None, 128)", 49_280, n_simple_rnn(256, 128)),  # Keras names it simple_rnn
         ("dense", "Dense", "(None, 10)", 1_290, n_dense(128, 10))],
        361_866),
    # keras.io "Working with RNNs": a bidirectional stack
    "guide-bidirectional": (
        lambda: [fastrnn.Bidirectional(fastrnn.LSTM(64, return_sequences=True), input_shape=(5, 10)),
                 fastrnn.Bidirectional(fastrnn.LSTM(32)), fastrnn.Dense(10)],
        [("bidirectional", "Bidirectional", "(None, 5, 128)", 38_400, n_bidirectional(n_lstm(10, 64))),
         ("bidirectional_1", "Bidirectional", "(None, 64)", 41_216, n_bidirectional(n_lstm(128, 32))),
         ("dense", "Dense", "(None, 10)", 650, n_dense(64, 10))],
        80_266),
    # keras.io "Sequence to sequence learning for performing number addition": encoder, RepeatVector, decoder
    "addition-seq2seq": (
        lambda: [fastrnn.Input((7, 12)), fastrnn.LSTM(128), fastrnn.RepeatVector(4),
                 fastrnn.LSTM(128, return_sequences=True), fastrnn.Dense(12, activation="softmax")],
        [("lstm", "LSTM", "(None, 128)", 72_192, n_lstm(12, 128)),
         ("repeat_vector", "RepeatVector", "(None, 4, 128)", 0, 0),
         ("lstm_1", "LSTM", "(None, 4, 128)", 131_584, n_lstm(128, 128)),
         ("dense", "Dense", "(None, 4, 12)", 1_548, n_dense(128, 12))],
        205_324),
}


@pytest.mark.parametrize("case", sorted(KERAS_MODELS))
def test_summary_counts_equal_keras(case):
    make, expected, keras_total = KERAS_MODELS[case]
    model = fastrnn.Sequential(make())
    rows = summary_rows(model)
    assert len(rows) == len(expected)
    for (name, kind, shape, params), (want_name, want_kind, want_shape, keras_count, formula) in zip(rows, expected):
        assert keras_count == formula, f"{want_kind}: the formula disagrees with Keras"
        assert (kind, shape, params) == (want_kind, want_shape, keras_count)
        if want_name is not None:
            assert name == want_name
    assert keras_total == sum(e[4] for e in expected)
    assert model.count_params() == keras_total
    assert summary_totals(model) == {"Total": keras_total, "Trainable": keras_total, "Non-trainable": 0}


@pytest.mark.parametrize("d,u", [(1, 1), (3, 7), (16, 32)])
def test_layer_counts_follow_the_keras_formulas(d, u):
    def built(layer, shape):
        layer.build(shape)
        return layer.count_params()

    seq = (None, 5, d)
    assert built(fastrnn.SimpleRNN(u), seq) == n_simple_rnn(d, u)
    assert built(fastrnn.LSTM(u), seq) == n_lstm(d, u)
    assert built(fastrnn.GRU(u), seq) == n_gru(d, u)
    assert built(fastrnn.GRU(u, reset_after=False), seq) == n_gru(d, u, reset_after=False)
    assert built(fastrnn.Bidirectional(fastrnn.GRU(u)), seq) == n_bidirectional(n_gru(d, u))
    assert built(fastrnn.Dense(u), (None, d)) == n_dense(d, u)
    assert built(fastrnn.Dense(u, use_bias=False), (None, d)) == d * u
    assert built(fastrnn.Embedding(d + 1, u), (None, 5)) == n_embedding(d + 1, u)
    assert built(fastrnn.LSTM(u, use_bias=False), seq) == 4 * u * (d + u)


def test_summary_text_is_the_keras_table():
    model = fastrnn.Sequential([fastrnn.Input((3, 1)), fastrnn.LSTM(50), fastrnn.Dense(1)])
    assert summary_text(model) == "\n".join([
        'Model: "sequential"',
        "┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓",
        "┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃",
        "┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩",
        "│ lstm (LSTM)                     │ (None, 50)             │        10,400 │",
        "├─────────────────────────────────┼────────────────────────┼───────────────┤",
        "│ dense (Dense)                   │ (None, 1)              │            51 │",
        "└─────────────────────────────────┴────────────────────────┴───────────────┘",
        " Total params: 10,451 (40.82 KB)",
        " Trainable params: 10,451 (40.82 KB)",
        " Non-trainable params: 0 (0.00 B)",
    ])


def test_summary_names_are_unique_and_shapes_follow_the_stack():
    model = fastrnn.Sequential([
        fastrnn.Input((10, 4)),
        fastrnn.LSTM(8, return_sequences=True), fastrnn.Dropout(0.2),
        fastrnn.LSTM(8, return_sequences=True), fastrnn.LSTM(6, name="encoder"),
    ])
    rows = summary_rows(model)
    assert [r[0] for r in rows] == ["lstm", "dropout", "lstm_1", "encoder"]
    assert [r[2] for r in rows] == ["(None, 10, 8)"] * 3 + ["(None, 6)"]
    # a layer with several outputs has no place in a Sequential (Keras: "should have a single output tensor")
    for multi in (fastrnn.LSTM(6, return_state=True), fastrnn.Bidirectional(fastrnn.GRU(2), merge_mode=None)):
        with pytest.raises(ValueError, match="a Sequential model needs layers with a single output"):
            fastrnn.Sequential([fastrnn.Input((10, 4)), multi]).summary()
    more = fastrnn.Sequential([fastrnn.Input((4, 2)), fastrnn.GRU(3, return_sequences=True),
                               fastrnn.GRU(3, return_sequences=True, name="gru_1"), fastrnn.GRU(3)])
    assert [r[0] for r in summary_rows(more)] == ["gru", "gru_1", "gru_2"]
    # wide entries widen their column; every line of the table keeps one width
    wide = fastrnn.Sequential([fastrnn.Input((3, 2)), fastrnn.LSTM(2, name="a_very_long_layer_name_for_the_table")])
    widths = {len(line) for line in summary_text(wide).splitlines()[1:-3]}
    assert len(widths) == 1


def test_summary_frozen_layers_and_optimizer_params():
    model = fastrnn.Sequential([fastrnn.Input((5,), dtype="int32"), fastrnn.Embedding(10, 4, trainable=False),
                                fastrnn.LSTM(3), fastrnn.Dense(1)])
    n_frozen, n_trainable = n_embedding(10, 4), n_lstm(4, 3) + n_dense(3, 1)
    assert summary_totals(model) == {"Total": n_frozen + n_trainable, "Trainable": n_trainable,
                                     "Non-trainable": n_frozen}
    assert f"Non-trainable params: {n_frozen} ({n_frozen * 4:.2f} B)" in summary_text(model)
    # Keras 3 adds the optimizer's variables once it has run: Adam keeps 2 slots per trainable weight, plus its
    # iteration counter and learning rate
    model.compile(loss="mse", optimizer="adam")
    assert "Optimizer" not in summary_text(model)
    frozen_before = model.layers[0].get_weights()[0]
    model.fit(np.ones((4, 5), np.int32), np.zeros((4, 1)), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], frozen_before)  # frozen: not trained
    totals = summary_totals(model)
    assert totals["Optimizer"] == 2 * n_trainable + 2
    assert totals["Total"] == n_frozen + n_trainable + totals["Optimizer"]
    sgd = fastrnn.Sequential([fastrnn.Input((2,)), fastrnn.Dense(3)])
    sgd.compile(loss="mse", optimizer="sgd")
    sgd.train_on_batch(np.ones((2, 2)), np.ones((2, 3)))
    assert summary_totals(sgd)["Optimizer"] == 2  # plain SGD has no slots


def test_summary_needs_a_shape():
    model = fastrnn.Sequential([fastrnn.LSTM(2), fastrnn.Dense(1)])
    with pytest.raises(ValueError, match="summary needs a built model"):
        model.summary()
    model.predict(np.ones((3, 4, 5)))  # builds from the data
    assert [r[2] for r in summary_rows(model)] == ["(None, 2)", "(None, 1)"]
    assert model.count_params() == n_lstm(5, 2) + n_dense(2, 1)


# ---------------------------------------------------------------------------------------------------------------
# compile / fit / predict / evaluate / train_on_batch
# ---------------------------------------------------------------------------------------------------------------

def regression_model(seed=0, optimizer="adam", metrics=("mae",), backend="auto", dtype="float32"):
    model = fastrnn.Sequential([fastrnn.Input((6, 2)),
                                fastrnn.LSTM(5, seed=seed, backend=backend, dtype=dtype),
                                fastrnn.Dense(1, seed=seed + 1, dtype=dtype)])
    model.compile(loss="mse", optimizer=optimizer, metrics=list(metrics))
    return model


def regression_data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, 2)).astype(np.float32)
    return x, x[:, :, 0].mean(axis=1, keepdims=True)


def test_predict_evaluate_and_batch_methods_return_keras_shapes():
    x, y = regression_data()
    model = regression_model()
    p = model.predict(x, batch_size=7)
    assert p.shape == (20, 1) and p.dtype == np.float32
    np.testing.assert_allclose(model.predict(x), p, rtol=1e-6)
    np.testing.assert_array_equal(model.predict_on_batch(x[:3]), model(x[:3]))
    # evaluate / test_on_batch / train_on_batch: [loss, metrics...], a dict with return_dict, the loss alone
    ev = model.evaluate(x, y, verbose=0)
    assert isinstance(ev, list) and len(ev) == 2
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"loss": ev[0], "mae": ev[1]}
    np.testing.assert_allclose(ev[0], np.mean((p - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(ev[1], np.mean(np.abs(p - y)), rtol=1e-5)
    assert model.test_on_batch(x, y) == pytest.approx(ev, rel=1e-6)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "mae"} and logs["loss"] == pytest.approx(ev[0], rel=1e-6)  # before the step
    assert model.evaluate(x, y, verbose=0)[0] < ev[0]  # the step helped
    bare = regression_model(metrics=())
    assert isinstance(bare.train_on_batch(x, y), float) and isinstance(bare.evaluate(x, y, verbose=0), float)


def test_fit_returns_history_with_validation_keys():
    x, y = regression_data(n=10)
    model = regression_model()
    history = model.fit(x, y, epochs=3, batch_size=4, validation_split=0.25, verbose=0, seed=0)
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert history.epoch == [0, 1, 2] and all(len(v) == 3 for v in history.history.values())
    # Keras' split: the last floor(...) samples, taken before shuffling; 10 * 0.75 -> 7 for training
    assert history.params == {"verbose": 0, "epochs": 3, "steps": 2}
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x[7:], y[7:], verbose=0)[0], rel=1e-12)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # validation_data: the same keys, on the given data
    history = model.fit(x, y, epochs=2, validation_data=(x[:4], y[:4]), verbose=0)
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert history.history["val_mae"][-1] == pytest.approx(model.evaluate(x[:4], y[:4], verbose=0)[1], rel=1e-12)
    assert set(model.fit(x, y, epochs=1, verbose=0).history) == {"loss", "mae"}


def test_fit_epoch_logs_are_sample_weighted_batch_averages():
    x, y = regression_data(n=10)
    model = regression_model(optimizer=optimizers.SGD(0.0))  # learning rate 0: every batch sees the same model
    history = model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-6)


def test_shuffle_false_is_deterministic_and_equals_batches_in_order():
    x, y = regression_data(n=12)
    a, b, c = regression_model(), regression_model(), regression_model()
    a.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    b.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    for _ in range(2):
        for i in range(0, 12, 5):
            c.train_on_batch(x[i:i + 5], y[i:i + 5])
    for u, v, w in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)
    # shuffle=True: reproducible from a seed, and a different order than shuffle=False
    d, e = regression_model(), regression_model()
    d.fit(x, y, epochs=2, batch_size=5, seed=3, verbose=0)
    e.fit(x, y, epochs=2, batch_size=5, seed=3, verbose=0)
    assert all(np.array_equal(u, v) for u, v in zip(d.get_weights(), e.get_weights()))
    assert not all(np.array_equal(u, v) for u, v in zip(d.get_weights(), a.get_weights()))


def test_fit_prints_a_progress_bar(capsys):
    x, y = regression_data(n=10)
    model = regression_model()
    model.fit(x, y, epochs=2, batch_size=4, validation_split=0.2, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert re.fullmatch(r"2/2 ━{20} \d+s \d+(us|ms|s)/step - loss: \S+ - mae: \S+ - val_loss: \S+ - val_mae: \S+",
                        lines[1]), lines[1]
    model.fit(x, y, epochs=1, batch_size=4, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"3/3 - \d+s - \d+(us|ms|s)/step - loss: \S+ - mae: \S+", lines[1]), lines[1]
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert capsys.readouterr().out == ""
    model.evaluate(x, y)
    assert re.fullmatch(r"loss: \S+ - mae: \S+\n", capsys.readouterr().out)


def test_small_values_are_logged_in_scientific_notation(capsys):
    model = fastrnn.Sequential([fastrnn.Input((1,)), fastrnn.Dense(1, kernel_initializer="zeros")])
    model.compile(loss="mse", optimizer="sgd")
    model.evaluate(np.ones((2, 1)), np.full((2, 1), 1e-3))
    assert capsys.readouterr().out == "loss: 1.0000e-06\n"


# ---------------------------------------------------------------------------------------------------------------
# Masks: padded timesteps count neither in the loss nor in the metrics
# ---------------------------------------------------------------------------------------------------------------

def tagger(seed=0, backend="auto"):
    model = fastrnn.Sequential([
        fastrnn.Input((5,), dtype="int64"), fastrnn.Embedding(9, 4, mask_zero=True, seed=seed),
        fastrnn.LSTM(6, return_sequences=True, seed=seed + 1, backend=backend),
        fastrnn.Dense(3, activation="softmax", seed=seed + 2)])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def padded_tokens(n=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, size=n)
    lengths[0] = 5
    x = np.where(np.arange(5)[None, :] < lengths[:, None], rng.integers(1, 9, size=(n, 5)), 0)
    return x, rng.integers(0, 3, size=(n, 5)), x != 0


def test_masked_steps_are_left_out_of_loss_metrics_and_training():
    x, y, mask = padded_tokens()
    model = tagger()
    p = model.predict(x)
    want_loss = -np.mean(np.log(np.take_along_axis(p, y[..., None], -1)[..., 0][mask]))
    want_acc = np.mean(p.argmax(-1)[mask] == y[mask])  # over all valid tokens, across batches
    loss, acc = model.evaluate(x, y, batch_size=3, verbose=0)
    assert acc == pytest.approx(want_acc, rel=1e-12)
    assert model.evaluate(x, y, batch_size=100, verbose=0)[0] == pytest.approx(want_loss, rel=1e-5)
    # labels at padded steps change nothing: neither the loss nor what training does
    y2 = np.where(mask, y, (y + 1) % 3)
    assert model.evaluate(x, y2, batch_size=3, verbose=0) == [loss, acc]
    a, b = tagger(), tagger()
    a.fit(x, y, epochs=2, batch_size=3, shuffle=False, verbose=0)
    b.fit(x, y2, epochs=2, batch_size=3, shuffle=False, verbose=0)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_a_batch_of_only_padding_gives_zero_loss():
    model = tagger()
    assert model.train_on_batch(np.zeros((2, 5), np.int64), np.zeros((2, 5)), return_dict=True) == \
        {"loss": 0.0, "accuracy": 0.0}


# ---------------------------------------------------------------------------------------------------------------
# save_weights / load_weights, set_weights
# ---------------------------------------------------------------------------------------------------------------

def test_save_and_load_weights_round_trip(tmp_path):
    x, y = regression_data()
    model = regression_model(seed=0)
    model.fit(x, y, epochs=2, verbose=0)
    path = tmp_path / "model.weights.h5"  # any file name: written as given (no ".npz" appended)
    model.save_weights(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights.h5"]
    other = regression_model(seed=5)
    assert not np.array_equal(other.predict(x), model.predict(x))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    for u, v in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(u, v)
    model.save_weights(str(tmp_path / "w"))
    other.load_weights(str(tmp_path / "w"))
    # a model of another shape refuses the file, naming the mismatch
    wrong = fastrnn.Sequential([fastrnn.Input((6, 2)), fastrnn.LSTM(4), fastrnn.Dense(1)])
    with pytest.raises(ValueError, match=re.escape("lstm: kernel must have shape (2, 16); got shape (2, 20)")):
        wrong.load_weights(path)
    fewer = fastrnn.Sequential([fastrnn.Input((6, 2)), fastrnn.LSTM(5)])
    with pytest.raises(ValueError, match="set_weights needs 3 arrays for this model; got 5"):
        fewer.load_weights(path)


def test_set_weights_builds_a_model_with_an_input_shape():
    source = regression_model(seed=0)
    source.build()
    target = fastrnn.Sequential([fastrnn.Input((6, 2)), fastrnn.LSTM(5), fastrnn.Dense(1)])
    target.set_weights(source.get_weights())
    x, _ = regression_data()
    np.testing.assert_array_equal(target.predict(x), source.predict(x))


# ---------------------------------------------------------------------------------------------------------------
# stateful=True: streaming, reset_states
# ---------------------------------------------------------------------------------------------------------------

def test_stateful_model_streams_chunks_like_one_long_sequence():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 3))
    whole = fastrnn.Sequential([fastrnn.Input((None, 3)),
                                fastrnn.LSTM(4, return_sequences=True, dtype="float64", seed=0),
                                fastrnn.Dense(2, dtype="float64", seed=1)])
    stream = fastrnn.Sequential([fastrnn.Input((None, 3), batch_size=2),
                                 fastrnn.LSTM(4, return_sequences=True, stateful=True, dtype="float64"),
                                 fastrnn.Dense(2, dtype="float64")])
    stream.set_weights(whole.get_weights())
    want = whole.predict(x)
    pieces = [stream.predict(x[:, a:b], batch_size=2) for a, b in ((0, 4), (4, 5), (5, 9))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, rtol=1e-12, atol=1e-14)
    # without a reset the state carries on; reset_states starts over
    assert not np.allclose(stream.predict(x[:, :4], batch_size=2), want[:, :4])
    stream.reset_states()
    np.testing.assert_allclose(stream.predict(x[:, :4], batch_size=2), want[:, :4], rtol=1e-12, atol=1e-14)
    whole.reset_states()  # no stateful layer: nothing to reset, no error
    # a stateful model trains on its fixed batch size
    stream.compile(loss="mse", optimizer="sgd")
    stream.fit(x, np.zeros((2, 9, 2)), batch_size=2, epochs=2, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="fixed batch size of 2"):
        stream.predict(np.ones((3, 4, 3)), batch_size=3)


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments: ValueError / TypeError before anything runs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(loss=None), ValueError, "compile needs a loss"),
    (dict(loss="nope"), ValueError, "unknown loss 'nope'"),
    (dict(loss="mse", optimizer="nope"), ValueError, "unknown optimizer 'nope'"),
    (dict(loss="mse", optimizer=3), TypeError, "optimizer must be an optimizer name"),
    (dict(loss=3), TypeError, "loss must be a loss name"),
    (dict(loss="mse", metrics="mae"), TypeError, "metrics must be a list"),
    (dict(loss="mse", metrics=["nope"]), ValueError, "unknown metric 'nope'"),
    (dict(loss="mse", metrics=["mae", "mae"]), ValueError, "metric names must be unique"),
])
def test_compile_rejects(kwargs, exc, match):
    model = fastrnn.Sequential([fastrnn.Input((3, 1)), fastrnn.LSTM(2)])
    with pytest.raises(exc, match=match):
        model.compile(**kwargs)
    assert model.loss is None  # nothing half-set


def test_training_needs_compile():
    model = fastrnn.Sequential([fastrnn.Input((3, 1)), fastrnn.LSTM(2)])
    x, y = np.ones((2, 3, 1)), np.ones((2, 2))
    for call in (lambda: model.fit(x, y), lambda: model.evaluate(x, y), lambda: model.train_on_batch(x, y)):
        with pytest.raises(ValueError, match="needs a compiled model"):
            call()


@pytest.mark.parametrize("x,y,kwargs,exc,match", [
    (np.ones((4, 6, 2)), np.ones((3, 1)), {}, ValueError, re.escape("x and y must have the same number of samples; "
                                                                     "got x (4, 6, 2) and y (3, 1)")),
    (np.ones((4, 6)), np.ones((4, 1)), {}, ValueError, re.escape("x must have shape (batch, timesteps, features)")),
    (np.ones((4, 6, 3)), np.ones((4, 1)), {}, ValueError, re.escape("lstm: x must have shape (batch, timesteps, "
                                                                     "features=2); got shape (4, 6, 3)")),
    (np.ones((4, 6, 2)), np.ones((4, 2)), {}, ValueError, "y_true and y_pred must have the same shape"),
    (np.full((4, 6, 2), "a"), np.ones((4, 1)), {}, TypeError, "x must be a real numeric array"),
    ("text", np.ones((4, 1)), {}, TypeError, "x must be a numpy array"),
    (np.ones((0, 6, 2)), np.ones((0, 1)), {}, ValueError, "x has no samples"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(batch_size=0), ValueError, "batch_size"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(epochs=0), ValueError, "epochs"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(validation_split=1.0), ValueError, "validation_split must be in"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(validation_split="a"), TypeError, "validation_split must be a num"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(validation_split=0.9), ValueError, "leaves no training sample"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(validation_data=np.ones(3)), ValueError,
     re.escape("validation_data must be a tuple (x_val, y_val)")),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(validation_data=(np.ones((2, 6, 2)), np.ones((3, 1)))), ValueError,
     "validation_data: x and y must have the same number of samples"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(verbose=3), ValueError, "verbose must be"),
    (np.ones((4, 6, 2)), np.ones((4, 1)), dict(shuffle="yes"), TypeError, "shuffle"),
])
def test_fit_rejects_bad_data(x, y, kwargs, exc, match):
    model = regression_model()
    model.build()
    before = model.get_weights()
    kwargs.setdefault("verbose", 0)
    with pytest.raises(exc, match=match):
        model.fit(x, y, **kwargs)
    for u, v in zip(model.get_weights(), before):  # nothing was trained
        np.testing.assert_array_equal(u, v)


def test_sequential_add_rejects():
    with pytest.raises(TypeError, match="Sequential.add needs a fastrnn layer"):
        fastrnn.Sequential([fastrnn.LSTM(2), "dense"])
    with pytest.raises(ValueError, match="Input must be the first entry"):
        fastrnn.Sequential([fastrnn.LSTM(2), fastrnn.Input((3, 1))])


# ---------------------------------------------------------------------------------------------------------------
# RepeatVector
# ---------------------------------------------------------------------------------------------------------------

def test_repeat_vector_forward_shapes_and_config():
    layer = fastrnn.RepeatVector(3)
    assert layer.name == "repeat_vector" and layer.built and layer.weights == [] and layer.count_params() == 0
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = layer(x)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32 and y.flags.c_contiguous
    for t in range(3):
        np.testing.assert_array_equal(y[:, t], x)
    y[0, 0, 0] = 99.0  # the output owns its memory
    assert x[0, 0] == 0 and layer(x)[0, 1, 0] == 0
    assert layer.compute_output_shape((None, 4)) == (None, 3, 4)
    assert layer.compute_mask(np.ones((2, 5), bool)) is None
    copy = fastrnn.RepeatVector.from_config(layer.get_config())
    assert copy.n == 3 and copy.name == "repeat_vector"


def test_repeat_vector_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    layer = fastrnn.RepeatVector(4, dtype="float64")
    x = rng.standard_normal((3, 5))
    proj = rng.standard_normal((3, 4, 5))
    layer.forward(x, training=True)
    dx = layer.backward(proj)
    eps, numeric = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        numeric[i] = (np.sum(proj * layer(xp)) - np.sum(proj * layer(xm))) / (2 * eps)
    assert rel_err(dx, numeric) < 1e-8
    assert layer.grads == []


def test_repeat_vector_rejects():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fastrnn.RepeatVector(0)
    with pytest.raises(TypeError, match="n must be a positive integer"):
        fastrnn.RepeatVector(2.5)
    layer = fastrnn.RepeatVector(2)
    with pytest.raises(ValueError, match=re.escape("repeat_vector: x must have shape (batch, features) (2-D); "
                                                   "got shape (2, 3, 4) (3-D)")):
        layer(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="backward needs a forward with training=True"):
        fastrnn.RepeatVector(2).backward(np.ones((1, 2, 3)))
    layer.forward(np.ones((2, 3)), training=True)
    with pytest.raises(ValueError, match=re.escape("dy must have shape (2, 2, 3)")):
        layer.backward(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("input_shape must be (batch, features)")):
        fastrnn.Sequential([fastrnn.Input((5, 2)), fastrnn.RepeatVector(3)]).build()


# ---------------------------------------------------------------------------------------------------------------
# Training is the same on every backend (the compiled kernels' BPTT against the NumPy reference)
# ---------------------------------------------------------------------------------------------------------------

F64_TOL = 1e-9   # relative, float64: the backends differ only by summation order (measured: ~1e-15)
F32_TOL = 1e-4   # relative, float32: rounding differences (float32 eps 6e-8) compounded over 12 Adam steps and
                 # every layer (measured: ~6e-7); 1e-4 leaves two orders of magnitude of headroom


def deep_model(backend, dtype, seed=0):
    """Every recurrent kind, masks from an Embedding, a Bidirectional, a seq2seq bridge."""
    kw = dict(backend=backend, dtype=dtype)
    model = fastrnn.Sequential([
        fastrnn.Input((6,), dtype="int64"),
        fastrnn.Embedding(12, 5, mask_zero=True, seed=seed, dtype=dtype),
        fastrnn.Bidirectional(fastrnn.LSTM(7, return_sequences=True, seed=seed + 1, **kw)),
        fastrnn.GRU(6, return_sequences=True, seed=seed + 2, **kw),
        fastrnn.SimpleRNN(5, return_sequences=True, seed=seed + 3, **kw),
        fastrnn.GRU(4, reset_after=False, seed=seed + 4, **kw),
        fastrnn.RepeatVector(3, dtype=dtype),
        fastrnn.LSTM(4, return_sequences=True, go_backwards=True, seed=seed + 5, **kw),
        fastrnn.Dense(3, activation="softmax", seed=seed + 6, dtype=dtype),
    ])
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizers.Adam(0.01), metrics=["accuracy"])
    return model


@pytest.mark.skipif(not COMPILED, reason="no compiled backend (cython, numba) is available")
@pytest.mark.parametrize("dtype,tol", [("float64", F64_TOL), ("float32", F32_TOL)])
def test_training_on_compiled_backends_matches_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 7, size=16)
    x = np.where(np.arange(6)[None, :] < lengths[:, None], rng.integers(1, 12, size=(16, 6)), 0)
    y = rng.integers(0, 3, size=(16, 3))
    models = {b: deep_model(b, dtype) for b in ["numpy"] + COMPILED}
    histories = {b: m.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0).history
                 for b, m in models.items()}
    start = deep_model("numpy", dtype)
    start.build()
    reference = models["numpy"].get_weights()
    assert max(rel_err(w, w0) for w, w0 in zip(reference, start.get_weights())) > 1e-2  # it did train
    for backend in COMPILED:
        model = models[backend]
        assert {layer.backend_used for layer in model.layers if hasattr(layer, "backend_used")} == {backend}
        for k, (w, w_ref) in enumerate(zip(model.get_weights(), reference)):
            assert w.dtype == np.dtype(dtype)
            assert rel_err(w, w_ref) < tol, f"{backend}: weight {k}"
        assert np.allclose(histories[backend]["loss"], histories["numpy"]["loss"], rtol=tol)
