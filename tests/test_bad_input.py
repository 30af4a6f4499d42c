"""DESIGN.md "Bad input": every bad argument gives a ValueError or TypeError naming the argument and showing what it
got, before any kernel runs; nothing else is ever raised; successful calls never modify their inputs."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastrnn
from fastrnn import ops
from helpers import CELLS, GATES, bias_shape, n_states

B, T, D, U = 2, 5, 3, 4
BACKENDS = ("numpy", "numba", "cython", "auto")


def esc(s):
    return re.escape(s)


def base(cell="lstm", reset_after=True, dtype=np.float32):
    """A valid rnn_forward call: dict of keyword arguments."""
    rng = np.random.default_rng(0)
    g = GATES[cell]
    w = [rng.standard_normal((D, g * U)).astype(dtype), rng.standard_normal((U, g * U)).astype(dtype),
         rng.standard_normal(bias_shape(cell, U, reset_after)).astype(dtype)]
    kw = dict(cell=cell, x=rng.standard_normal((B, T, D)).astype(dtype), weights=w, backend="numpy")
    if cell == "gru":
        kw["reset_after"] = reset_after
    return kw


def call_ops(kw):
    kw = dict(kw)
    return ops.rnn_forward(kw.pop("cell"), kw.pop("x"), kw.pop("weights"), **kw)


def with_weight(kw, k, value):
    w = list(kw["weights"])
    w[k] = value
    return dict(kw, weights=w)


def nan_at(a, value=np.nan):
    a = np.array(a, copy=True)
    a.flat[a.size // 2] = value
    return a


def bad_ops_cases():
    """(id, kwargs of rnn_forward, exception type, regex the message must match)."""
    k = base()
    x, (W, R, b) = k["x"], k["weights"]
    h0, c0 = np.zeros((B, U), np.float32), np.zeros((B, U), np.float32)
    obj = np.empty((B, T, D), object)
    obj[...] = 1.0
    return [
        # x: rank
        # (the exact "got shape () (0-D)" is test_zero_d_arrays_keep_their_shape)
        ("x-0d", dict(k, x=np.float32(1.0)), ValueError, esc("x must have shape (batch, timesteps, features) (3-D); got shape")),
        ("x-1d", dict(k, x=np.zeros(5)), ValueError, esc("x must have shape (batch, timesteps, features) (3-D); got shape (5,) (1-D)")),
        ("x-2d", dict(k, x=np.zeros((B, T))), ValueError, esc("x must have shape (batch, timesteps, features) (3-D); got shape (2, 5) (2-D)")),
        ("x-4d", dict(k, x=np.zeros((B, T, D, 1))), ValueError, esc("got shape (2, 5, 3, 1) (4-D)")),
        # x: features that do not match the kernel (reported against the kernel, with both sizes)
        ("x-features", dict(k, x=np.zeros((B, T, D + 1))), ValueError, esc("x must have shape (batch, timesteps, features=3) to match kernel (3, 16); got shape (2, 5, 4)")),
        # x: not real numbers
        ("x-str", dict(k, x=np.full((B, T, D), "a")), TypeError, "x must be a real numeric array .*got dtype <U1"),
        ("x-bytes", dict(k, x=np.full((B, T, D), b"a")), TypeError, "x must be a real numeric array .*got dtype \\|S1"),
        ("x-object", dict(k, x=obj), TypeError, "x must be a real numeric array .*got dtype object"),
        ("x-complex", dict(k, x=x.astype(np.complex64)), TypeError, "x must be a real numeric array .*got dtype complex64"),
        ("x-none", dict(k, x=None), TypeError, "x must be a real numeric array .*got dtype object"),
        ("x-ragged", dict(k, x=[[[1.0, 2.0]], [[1.0]]]), TypeError, "x must be a numeric array; could not convert list"),
        ("x-datetime", dict(k, x=np.zeros((B, T, D), "datetime64[s]")), TypeError, "x must be a real numeric array .*datetime64"),
        # not finite
        ("x-nan", dict(k, x=nan_at(x)), ValueError, "x must be finite; it contains NaN or inf"),
        ("x-inf", dict(k, x=nan_at(x, np.inf)), ValueError, "x must be finite"),
        ("x-neg-inf", dict(k, x=nan_at(x, -np.inf)), ValueError, "x must be finite"),
        ("W-nan", with_weight(k, 0, nan_at(W)), ValueError, "kernel must be finite"),
        ("R-inf", with_weight(k, 1, nan_at(R, np.inf)), ValueError, "recurrent_kernel must be finite"),
        ("b-nan", with_weight(k, 2, nan_at(b)), ValueError, "bias must be finite"),
        ("h0-nan", dict(k, initial_states=[nan_at(h0), c0]), ValueError, "initial_state h0 must be finite"),
        ("c0-inf", dict(k, initial_states=[h0, nan_at(c0, -np.inf)]), ValueError, "initial_state c0 must be finite"),
        # weights: shapes
        ("W-shape", with_weight(k, 0, W[:, :-1]), ValueError, esc("kernel must have shape (input_dim=3, 4*units=16); got shape (3, 15)")),
        ("W-1d", with_weight(k, 0, W.ravel()), ValueError, esc("kernel must have shape (input_dim=3, 4*units=16); got shape (48,)")),
        ("W-3d", with_weight(k, 0, W[None]), ValueError, esc("kernel must have shape (input_dim=3, 4*units=16); got shape (1, 3, 16)")),
        ("R-shape", with_weight(k, 1, R[:, :12]), ValueError, esc("recurrent_kernel must have shape (units=4, 4*units=16); got shape (4, 12)")),
        ("R-square", with_weight(k, 1, R[:, :4]), ValueError, esc("recurrent_kernel must have shape (units=4, 4*units=16); got shape (4, 4)")),
        ("R-1d", with_weight(k, 1, R.ravel()), ValueError, esc("recurrent_kernel must have shape (units, 4*units) (2-D); got shape (64,) (1-D)")),
        ("R-empty", with_weight(k, 1, np.zeros((0, 0))), ValueError, esc("recurrent_kernel must have shape (units, 4*units) with units >= 1; got shape (0, 0)")),
        ("b-shape", with_weight(k, 2, b[:-1]), ValueError, esc("bias must have shape (4*units=16,); got shape (15,)")),
        ("b-2d", with_weight(k, 2, b[None]), ValueError, esc("bias must have shape (4*units=16,); got shape (1, 16)")),
        ("gru-ra-b-1d", with_weight(base("gru"), 2, np.zeros(3 * U)), ValueError,
         esc("bias must have shape (2, 3*units=12) for GRU with reset_after=True; got shape (12,)")),
        ("gru-rb-b-2d", with_weight(base("gru", reset_after=False), 2, np.zeros((2, 3 * U))), ValueError,
         esc("bias must have shape (3*units=12,); got shape (2, 12)")),
        ("rnn-W-for-lstm", with_weight(base("simple_rnn"), 0, W), ValueError, esc("kernel must have shape (input_dim=3, 1*units=4); got shape (3, 16)")),
        # weights: the list itself
        ("weights-1", dict(k, weights=[W]), TypeError, "weights must be a list .*got list of length 1"),
        ("weights-4", dict(k, weights=[W, R, b, b]), TypeError, "weights must be a list .*got list of length 4"),
        ("weights-array", dict(k, weights=np.zeros((3, 3))), TypeError, "weights must be a list .*got ndarray"),
        ("weights-none", dict(k, weights=None), TypeError, "weights must be a list .*got NoneType"),
        ("W-str", with_weight(k, 0, "kernel"), TypeError, "kernel must be a real numeric array .*<U6"),
        ("b-complex", with_weight(k, 2, b.astype(complex)), TypeError, "bias must be a real numeric array .*complex128"),
        # initial states
        ("state-count-1", dict(k, initial_states=[h0]), ValueError, esc("initial_state must hold 2 array(s) [h0, c0] for lstm; got 1")),
        ("state-count-3", dict(k, initial_states=[h0, c0, c0]), ValueError, esc("initial_state must hold 2 array(s) [h0, c0] for lstm; got 3")),
        ("state-bare-array", dict(k, initial_states=h0), ValueError, esc("initial_state must hold 2 array(s) [h0, c0] for lstm; got 1")),
        ("rnn-state-count", dict(base("simple_rnn"), initial_states=[h0, h0]), ValueError, esc("initial_state must hold 1 array(s) [h0] for simple_rnn; got 2")),
        ("h0-shape", dict(k, initial_states=[np.zeros((B, U + 1)), c0]), ValueError, esc("initial_state h0 must have shape (batch=2, units=4); got shape (2, 5)")),
        ("c0-shape", dict(k, initial_states=[h0, np.zeros((B + 1, U))]), ValueError, esc("initial_state c0 must have shape (batch=2, units=4); got shape (3, 4)")),
        ("h0-1d", dict(base("gru"), initial_states=np.zeros(U)), ValueError, esc("initial_state h0 must have shape (batch=2, units=4); got shape (4,)")),
        ("h0-str", dict(k, initial_states=["h", c0]), TypeError, "initial_state h0 must be a real numeric array"),
        # lengths
        ("lengths-float", dict(k, lengths=np.array([5.0, 2.0])), TypeError, "lengths must be integers; got dtype float64"),
        ("lengths-bool", dict(k, lengths=np.array([True, False])), TypeError, "lengths must be integers; got dtype bool"),
        ("lengths-str", dict(k, lengths=["5", "2"]), TypeError, "lengths must be integers; got dtype <U1"),
        ("lengths-shape", dict(k, lengths=np.array([5, 2, 1])), ValueError, esc("lengths must have shape (batch=2,); got shape (3,)")),
        ("lengths-2d", dict(k, lengths=np.array([[5], [2]])), ValueError, esc("lengths must have shape (batch=2,); got shape (2, 1)")),
        ("lengths-scalar", dict(k, lengths=3), ValueError, esc("lengths must have shape (batch=2,); got shape ()")),
        ("lengths-neg", dict(k, lengths=[-1, 2]), ValueError, esc("lengths must be in [0, timesteps=5]; got values from -1 to 2")),
        ("lengths-over", dict(k, lengths=[T + 1, 2]), ValueError, esc("lengths must be in [0, timesteps=5]; got values from 2 to 6")),
        ("lengths-huge", dict(k, lengths=np.array([2 ** 63 - 1, 0], np.int64)), ValueError, esc("lengths must be in [0, timesteps=5]")),
        ("lengths-uint-over", dict(k, lengths=np.array([9, 0], np.uint8)), ValueError, esc("lengths must be in [0, timesteps=5]; got values from 0 to 9")),
        # unknown names
        ("cell", dict(k, cell="rnn"), ValueError, "cell must be one of \\['gru', 'lstm', 'simple_rnn'\\]; got 'rnn'"),
        ("cell-case", dict(k, cell="LSTM"), ValueError, "cell must be one of .*; got 'LSTM'"),
        ("cell-none", dict(k, cell=None), ValueError, "cell must be one of .*; got None"),
        ("backend", dict(k, backend="gpu"), ValueError, "backend must be one of \\['auto', 'cython', 'numba', 'numpy'\\]; got 'gpu'"),
        ("backend-none", dict(k, backend=None), ValueError, "backend must be one of .*; got None"),
        ("activation", dict(base("simple_rnn"), activation="sigmoid"), ValueError, "activation must be one of \\['relu', 'tanh'\\]; got 'sigmoid'"),
        ("dtype-f16", dict(k, dtype="float16"), TypeError, "dtype must be float32 or float64; got float16"),
        ("dtype-int", dict(k, dtype=np.int32), TypeError, "dtype must be float32 or float64; got int32"),
        ("dtype-name", dict(k, dtype="bogus"), TypeError, "dtype must be float32 or float64; got 'bogus'"),
        # non-bool options
        ("reverse-int", dict(k, reverse=1), TypeError, "reverse must be True or False; got 1"),
        ("reverse-str", dict(k, reverse="False"), TypeError, "reverse must be True or False; got 'False'"),
        ("training-none", dict(k, training=None), TypeError, "training must be True or False; got None"),
        ("reset_after-int", dict(base("gru"), reset_after=0), TypeError, "reset_after must be True or False; got 0"),
    ]


OPS_CASES = bad_ops_cases()


@pytest.mark.parametrize("kw,exc,match", [c[1:] for c in OPS_CASES], ids=[c[0] for c in OPS_CASES])
def test_rnn_forward_rejects(kw, exc, match):
    with pytest.raises(exc, match=match) as info:
        call_ops(kw)
    assert type(info.value) is exc  # exactly ValueError / TypeError, not a subclass surprise


def test_zero_d_arrays_keep_their_shape():
    k = base("simple_rnn")
    with pytest.raises(ValueError, match=esc("got shape () (0-D)")):
        call_ops(dict(k, x=np.float32(1.0)))
    x, W, R = np.zeros((2, 3, 2), np.float32), np.zeros((2, 1), np.float32), np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match=esc("bias must have shape (1*units=1,); got shape ()")):
        ops.rnn_forward("simple_rnn", x, [W, R, np.float32(0.5)], backend="numpy")
    with pytest.raises(ValueError, match=esc("bias must have shape (1,); got shape ()")):
        fastrnn.SimpleRNN(1).set_weights([W, R, 0.5])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_forward_rejects_activation_its_cell_does_not_have(cell):
    with pytest.raises(ValueError, match="activation"):
        call_ops(dict(base(cell), activation="relu"))


def test_rnn_forward_rejects_non_bool_check_finite():
    with pytest.raises(TypeError, match="check_finite must be True or False; got 'no'"):
        call_ops(dict(base(), check_finite="no"))


@pytest.mark.parametrize("cell", CELLS)
def test_check_finite_false_lets_non_finite_values_through(cell):
    k = base(cell)
    x, (W, R, b) = k["x"], k["weights"]
    h = [np.zeros((B, U), np.float32) for _ in range(n_states(cell))]
    # (kwargs, whether NaN must reach the outputs; inf may saturate tanh/sigmoid to finite values)
    variants = [(dict(k, x=nan_at(x)), True), (dict(k, x=nan_at(x, np.inf)), False),
                (with_weight(k, 0, nan_at(W)), True), (with_weight(k, 1, nan_at(R, np.inf)), False),
                (with_weight(k, 2, nan_at(b)), True), (dict(k, initial_states=[nan_at(h[0])] + h[1:]), True)]
    if cell == "lstm":
        variants.append((dict(k, initial_states=[h[0], nan_at(h[1], np.inf)]), False))
    for kw, nan_out in variants:
        with pytest.raises(ValueError, match="must be finite"):
            call_ops(kw)
        with np.errstate(all="ignore"):
            out = call_ops(dict(kw, check_finite=False, training=True))
            assert not nan_out or np.isnan(out.outputs).any()
            grads = ops.rnn_backward(out, np.ones_like(out.outputs), check_finite=False)
        assert grads.dx.shape == kw["x"].shape
    # rnn_backward's own check_finite
    out = call_ops(dict(k, training=True))
    dy = nan_at(np.ones((B, T, U)))
    with pytest.raises(ValueError, match="d_outputs must be finite"):
        ops.rnn_backward(out, dy)
    with np.errstate(all="ignore"):
        assert np.isnan(ops.rnn_backward(out, dy, check_finite=False).dx).any()


# ---------------------------------------------------------------------------------------------------------------
# rnn_backward
# ---------------------------------------------------------------------------------------------------------------

def test_non_finite_error_suggests_check_finite_only_where_it_exists():
    """ops takes check_finite and says so; layers and cells do not take it, so their message must not suggest it."""
    k = base()
    with pytest.raises(ValueError, match=esc("x must be finite; it contains NaN or inf (pass check_finite=False")):
        call_ops(dict(k, x=nan_at(k["x"])))
    for call in (lambda x: fastrnn.LSTM(U)(x), lambda x: fastrnn.LSTMCell(D, U)(x[:, 0])):
        with pytest.raises(ValueError, match="x must be finite") as err:
            call(nan_at(k["x"]))
        assert "check_finite" not in str(err.value)


def trained(cell="lstm"):
    return call_ops(dict(base(cell), training=True))


def bad_backward_cases():
    out = trained()
    dy, ds = np.ones((B, T, U)), np.ones((B, U))
    return [
        ("not-training", lambda: ops.rnn_backward(call_ops(base()), dy), ValueError,
         "output has no saved state for backward: run rnn_forward with training=True"),
        ("not-an-output", lambda: ops.rnn_backward((out.outputs, out.states), dy), TypeError,
         "output must be the RNNOutput of rnn_forward; got tuple"),
        ("dy-shape", lambda: ops.rnn_backward(out, dy[:, :-1]), ValueError,
         esc("d_outputs must have shape (batch=2, timesteps=5, units=4); got shape (2, 4, 4)")),
        ("dy-2d", lambda: ops.rnn_backward(out, dy[:, 0]), ValueError,
         esc("d_outputs must have shape (batch=2, timesteps=5, units=4); got shape (2, 4)")),
        ("dy-nan", lambda: ops.rnn_backward(out, nan_at(dy)), ValueError, "d_outputs must be finite"),
        ("dy-str", lambda: ops.rnn_backward(out, np.full((B, T, U), "g")), TypeError,
         "d_outputs must be a real numeric array"),
        ("dy-complex", lambda: ops.rnn_backward(out, dy.astype(complex)), TypeError,
         "d_outputs must be a real numeric array .*complex128"),
        ("dstates-count", lambda: ops.rnn_backward(out, dy, [ds]), ValueError,
         esc("d_states must hold 2 array(s) for lstm; got 1")),
        ("dstates-bare", lambda: ops.rnn_backward(out, dy, ds), ValueError,
         esc("d_states must hold 2 array(s) for lstm; got 1")),
        ("dstates-shape", lambda: ops.rnn_backward(out, dy, [ds, ds[:, :-1]]), ValueError,
         esc("d_states[1] must have shape (batch=2, units=4); got shape (2, 3)")),
        ("dstates-inf", lambda: ops.rnn_backward(out, dy, [nan_at(ds, np.inf), None]), ValueError,
         esc("d_states[0] must be finite")),
        ("gru-dstates-count", lambda: ops.rnn_backward(trained("gru"), None, [ds, ds]), ValueError,
         esc("d_states must hold 1 array(s) for gru; got 2")),
    ]


BACKWARD_CASES = bad_backward_cases()


@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in BACKWARD_CASES], ids=[c[0] for c in BACKWARD_CASES])
def test_rnn_backward_rejects(fn, exc, match):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert type(info.value) is exc


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------

LAYERS = {"simple_rnn": fastrnn.SimpleRNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}

CONSTRUCTOR_CASES = [
    # units
    ("units-0", fastrnn.LSTM, dict(units=0), ValueError, "units must be a positive integer; got 0"),
    ("units-neg", fastrnn.GRU, dict(units=-1), ValueError, "units must be a positive integer; got -1"),
    ("units-float", fastrnn.SimpleRNN, dict(units=2.5), TypeError, "units must be a positive integer; got 2.5"),
    ("units-float-int", fastrnn.LSTM, dict(units=2.0), TypeError, "units must be a positive integer; got 2.0"),
    ("units-bool", fastrnn.LSTM, dict(units=True), TypeError, "units must be a positive integer; got True"),
    ("units-str", fastrnn.GRU, dict(units="4"), TypeError, "units must be a positive integer; got '4'"),
    ("units-none", fastrnn.GRU, dict(units=None), TypeError, "units must be a positive integer; got None"),
    # activations
    ("rnn-activation", fastrnn.SimpleRNN, dict(units=2, activation="sigmoid"), ValueError,
     "activation must be one of \\['relu', 'tanh'\\]; got 'sigmoid'"),
    ("lstm-activation", fastrnn.LSTM, dict(units=2, activation="relu"), ValueError,
     "activation must be one of \\['tanh'\\]; got 'relu'"),
    ("lstm-recurrent-activation", fastrnn.LSTM, dict(units=2, recurrent_activation="hard_sigmoid"), ValueError,
     "recurrent_activation must be one of \\['sigmoid'\\]; got 'hard_sigmoid'"),
    ("gru-activation", fastrnn.GRU, dict(units=2, activation=None), ValueError,
     "activation must be one of \\['tanh'\\]; got None"),
    ("gru-recurrent-activation", fastrnn.GRU, dict(units=2, recurrent_activation="tanh"), ValueError,
     "recurrent_activation must be one of \\['sigmoid'\\]; got 'tanh'"),
    # dtype, backend, initializers
    ("dtype-f16", fastrnn.LSTM, dict(units=2, dtype="float16"), TypeError, "dtype must be float32 or float64; got float16"),
    ("dtype-int", fastrnn.LSTM, dict(units=2, dtype="int64"), TypeError, "dtype must be float32 or float64; got int64"),
    ("dtype-name", fastrnn.GRU, dict(units=2, dtype="double-ish"), TypeError, "dtype must be float32 or float64; got 'double-ish'"),
    ("backend", fastrnn.GRU, dict(units=2, backend="cuda"), ValueError, "backend must be one of .*; got 'cuda'"),
    ("kernel-init", fastrnn.LSTM, dict(units=2, kernel_initializer="glorot"), ValueError,
     "kernel_initializer must be one of .*or a callable\\(shape, dtype, rng\\); got 'glorot'"),
    ("recurrent-init", fastrnn.LSTM, dict(units=2, recurrent_initializer=0.1), ValueError,
     "recurrent_initializer must be one of .*; got 0.1"),
    ("bias-init", fastrnn.GRU, dict(units=2, bias_initializer=None), ValueError,
     "bias_initializer must be one of .*; got None"),
    # non-bool options
    ("use_bias", fastrnn.LSTM, dict(units=2, use_bias=1), TypeError, "use_bias must be True or False; got 1"),
    ("return_sequences", fastrnn.GRU, dict(units=2, return_sequences="yes"), TypeError,
     "return_sequences must be True or False; got 'yes'"),
    ("return_state", fastrnn.SimpleRNN, dict(units=2, return_state=None), TypeError,
     "return_state must be True or False; got None"),
    ("go_backwards", fastrnn.LSTM, dict(units=2, go_backwards=0), TypeError, "go_backwards must be True or False; got 0"),
    ("zero_output_for_mask", fastrnn.GRU, dict(units=2, zero_output_for_mask=1.0), TypeError,
     "zero_output_for_mask must be True or False; got 1.0"),
    ("unit_forget_bias", fastrnn.LSTM, dict(units=2, unit_forget_bias="True"), TypeError,
     "unit_forget_bias must be True or False; got 'True'"),
    ("reset_after", fastrnn.GRU, dict(units=2, reset_after=[True]), TypeError,
     "reset_after must be True or False; got \\[True\\]"),
]


@pytest.mark.parametrize("cls,kw,exc,match", [c[1:] for c in CONSTRUCTOR_CASES], ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_layer_constructor_rejects(cls, kw, exc, match):
    kw = dict(kw)
    with pytest.raises(exc, match=match) as info:
        cls(kw.pop("units"), **kw)
    assert type(info.value) is exc


def built_lstm(**kw):
    layer = fastrnn.LSTM(U, backend="numpy", seed=0, **kw)
    layer.build((None, None, D))
    return layer


def bad_call_cases():
    x = np.random.default_rng(1).standard_normal((B, T, D)).astype(np.float32)
    h0 = np.zeros((B, U), np.float32)
    good_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    nan_layer = built_lstm()
    nan_layer.set_weights([nan_at(w) if k == 0 else w for k, w in enumerate(nan_layer.get_weights())])
    inf_layer = built_lstm()
    inf_layer.set_weights([nan_at(w, np.inf) if k == 2 else w for k, w in enumerate(inf_layer.get_weights())])
    unbuilt = lambda: fastrnn.LSTM(U, backend="numpy")  # noqa: E731
    return [
        ("x-1d", built_lstm, dict(x=np.zeros(5)), ValueError, esc("x must have shape (batch, timesteps, features) (3-D); got shape (5,) (1-D)")),
        ("x-2d", unbuilt, dict(x=np.zeros((B, D))), ValueError, esc("x must have shape (batch, timesteps, features) (3-D); got shape (2, 3) (2-D)")),
        ("x-4d", built_lstm, dict(x=np.zeros((B, T, D, 1))), ValueError, esc("got shape (2, 5, 3, 1) (4-D)")),
        ("x-features", built_lstm, dict(x=np.zeros((B, T, D + 2))), ValueError,
         esc("lstm: x must have shape (batch, timesteps, features=3); got shape (2, 5, 5)")),
        ("x-features-0", unbuilt, dict(x=np.zeros((B, T, 0))), ValueError,
         esc("input_shape[-1] (features) must be a positive integer; got 0")),
        ("x-str", built_lstm, dict(x=np.full((B, T, D), "x")), TypeError, "x must be a real numeric array .*<U1"),
        ("x-object", unbuilt, dict(x=np.array([[[1.0, None]]], object)), TypeError, "x must be a real numeric array .*object"),
        ("x-complex", built_lstm, dict(x=x + 1j), TypeError, "x must be a real numeric array .*complex64"),
        ("x-nan", built_lstm, dict(x=nan_at(x)), ValueError, "x must be finite"),
        ("x-inf", unbuilt, dict(x=nan_at(x, np.inf)), ValueError, "x must be finite"),
        ("kernel-nan", lambda: nan_layer, dict(x=x), ValueError, "kernel must be finite"),
        ("bias-inf", lambda: inf_layer, dict(x=x), ValueError, "bias must be finite"),
        ("h0-nan", built_lstm, dict(x=x, initial_state=[nan_at(h0), h0]), ValueError, "initial_state h0 must be finite"),
        ("state-count", built_lstm, dict(x=x, initial_state=[h0]), ValueError,
         esc("initial_state must hold 2 array(s) [h0, c0] for lstm; got 1")),
        ("state-shape", built_lstm, dict(x=x, initial_state=[h0, h0[:1]]), ValueError,
         esc("initial_state c0 must have shape (batch=2, units=4); got shape (1, 4)")),
        ("lengths-float", built_lstm, dict(x=x, lengths=[1.0, 2.0]), TypeError, "lengths must be integers; got dtype float64"),
        ("lengths-bool", built_lstm, dict(x=x, lengths=[True, True]), TypeError, "lengths must be integers; got dtype bool"),
        ("lengths-shape", built_lstm, dict(x=x, lengths=[1, 2, 3]), ValueError, esc("lengths must have shape (batch=2,); got shape (3,)")),
        ("lengths-neg", built_lstm, dict(x=x, lengths=[-1, 5]), ValueError, esc("lengths must be in [0, timesteps=5]; got values from -1 to 5")),
        ("lengths-over", built_lstm, dict(x=x, lengths=[6, 5]), ValueError, esc("lengths must be in [0, timesteps=5]; got values from 5 to 6")),
        ("mask-not-right-padded", built_lstm, dict(x=x, mask=good_mask[:, ::-1]), ValueError,
         "mask must be right-padded: True for each row's first steps and False after them"),
        ("mask-hole", built_lstm, dict(x=x, mask=np.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1]], bool)), ValueError,
         "mask must be right-padded"),
        ("mask-shape", built_lstm, dict(x=x, mask=good_mask[:, :-1]), ValueError,
         esc("mask must have shape (batch=2, timesteps=5); got shape (2, 4)")),
        ("mask-3d", built_lstm, dict(x=x, mask=good_mask[:, :, None]), ValueError,
         esc("mask must have shape (batch=2, timesteps=5); got shape (2, 5, 1)")),
        ("mask-float", built_lstm, dict(x=x, mask=good_mask.astype(float)), TypeError, "mask must be boolean; got dtype float64"),
        ("mask-and-lengths", built_lstm, dict(x=x, mask=good_mask, lengths=[3, 5]), ValueError,
         "lstm: pass mask or lengths, not both"),
    ]


CALL_CASES = bad_call_cases()


@pytest.mark.parametrize("make,kw,exc,match", [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_layer_call_rejects(make, kw, exc, match):
    layer = make()
    before = [w.copy() for w in layer.get_weights()]
    with pytest.raises(exc, match=match) as info:
        layer(**kw)
    assert type(info.value) is exc
    assert layer.backend_used is None  # nothing ran
    for u, v in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(u, v)


def set_weights_cases():
    lstm = built_lstm().get_weights()
    W, R, b = lstm
    return [
        ("not-a-list", built_lstm, np.zeros((3, 3)), TypeError, "lstm: weights must be a list of arrays; got ndarray"),
        ("count-2", built_lstm, [W, R], ValueError, esc("lstm: set_weights needs 3 arrays [kernel, recurrent_kernel, bias]; got 2")),
        ("count-4", built_lstm, [W, R, b, b], ValueError, esc("set_weights needs 3 arrays [kernel, recurrent_kernel, bias]; got 4")),
        ("count-no-bias", lambda: built_lstm(use_bias=False), [W, R, b], ValueError,
         esc("lstm: set_weights needs 2 arrays [kernel, recurrent_kernel]; got 3")),
        ("kernel", built_lstm, [W[:-1], R, b], ValueError, esc("lstm: kernel must have shape (3, 16); got shape (2, 16)")),
        ("kernel-T", built_lstm, [W.T, R, b], ValueError, esc("lstm: kernel must have shape (3, 16); got shape (16, 3)")),
        ("recurrent_kernel", built_lstm, [W, R[:, :8], b], ValueError,
         esc("lstm: recurrent_kernel must have shape (4, 16); got shape (4, 8)")),
        ("bias", built_lstm, [W, R, b[:-1]], ValueError, esc("lstm: bias must have shape (16,); got shape (15,)")),
        ("unbuilt-kernel-1d", lambda: fastrnn.LSTM(U), [W.ravel(), R, b], ValueError,
         esc("lstm: kernel must have shape (input_dim, 4*units=16); got shape (48,)")),
        ("unbuilt-kernel-empty", lambda: fastrnn.LSTM(U), [W[:0], R, b], ValueError,
         esc("kernel.shape[0] (input_dim) must be a positive integer; got 0")),
        ("unbuilt-recurrent", lambda: fastrnn.LSTM(U), [W, R[:2], b], ValueError,
         esc("lstm: recurrent_kernel must have shape (4, 16); got shape (2, 16)")),
        ("gru-ra-bias", lambda: fastrnn.GRU(U), [np.zeros((D, 12)), np.zeros((U, 12)), np.zeros(12)], ValueError,
         esc("gru: bias must have shape (2, 12); got shape (12,)")),
        ("gru-rb-bias", lambda: fastrnn.GRU(U, reset_after=False), [np.zeros((D, 12)), np.zeros((U, 12)), np.zeros((2, 12))],
         ValueError, esc("gru: bias must have shape (12,); got shape (2, 12)")),
        ("rnn-recurrent", lambda: fastrnn.SimpleRNN(U), [np.zeros((D, U)), np.zeros((U, U + 1)), np.zeros(U)], ValueError,
         esc("simple_rnn: recurrent_kernel must have shape (4, 4); got shape (4, 5)")),
        ("kernel-str", built_lstm, [np.full(W.shape, "w"), R, b], TypeError, "kernel must be a real numeric array"),
        ("bias-complex", built_lstm, [W, R, b + 0j], TypeError, "bias must be a real numeric array .*complex64"),
    ]


SET_WEIGHTS_CASES = set_weights_cases()


@pytest.mark.parametrize("make,weights,exc,match", [c[1:] for c in SET_WEIGHTS_CASES], ids=[c[0] for c in SET_WEIGHTS_CASES])
def test_set_weights_rejects(make, weights, exc, match):
    layer = make()
    before = [w.copy() for w in layer.get_weights()]
    with pytest.raises(exc, match=match) as info:
        layer.set_weights(weights)
    assert type(info.value) is exc
    after = layer.get_weights()  # a rejected set_weights changes nothing
    assert len(after) == len(before)
    for u, v in zip(before, after):
        np.testing.assert_array_equal(u, v)


def test_build_rejects_wrong_rank():
    with pytest.raises(ValueError, match=esc("lstm: input_shape must be (batch, timesteps, features); got (5, 3)")):
        fastrnn.LSTM(2).build((5, 3))


# ---------------------------------------------------------------------------------------------------------------
# Every backend name: same rejection, before any kernel is even selected
# ---------------------------------------------------------------------------------------------------------------

def backend_cases():
    """(id, fn(backend) -> call that must fail)."""
    picked = {"x-2d", "x-features", "x-complex", "x-nan", "W-shape", "R-1d", "b-nan", "gru-ra-b-1d", "weights-4",
              "state-count-1", "h0-shape", "lengths-float", "lengths-over", "cell", "activation", "dtype-f16",
              "reverse-int", "training-none"}
    cases = [(f"ops-{cid}", (lambda kw: lambda backend: call_ops(dict(kw, backend=backend)))(kw))
             for cid, kw, _, _ in OPS_CASES if cid in picked]
    x = np.zeros((B, T, D), np.float32)
    lens = np.array([3, 5])
    mask = np.arange(T)[None] < lens[:, None]

    def layer_call(cls=fastrnn.LSTM, **call):
        return lambda backend: cls(U, backend=backend)(**call)

    cases += [
        ("layer-x-4d", layer_call(x=np.zeros((B, T, D, 1)))),
        ("layer-x-str", layer_call(x=np.full((B, T, D), "a"))),
        ("layer-x-inf", layer_call(x=nan_at(x, np.inf))),
        ("layer-mask-and-lengths", layer_call(x=x, mask=mask, lengths=lens)),
        ("layer-mask-left-padded", layer_call(x=x, mask=mask[:, ::-1])),
        ("layer-lengths-neg", layer_call(x=x, lengths=[-1, 2])),
        ("layer-state-shape", layer_call(fastrnn.GRU, x=x, initial_state=np.zeros((B, U + 1)))),
        ("layer-units", lambda backend: fastrnn.GRU(0, backend=backend)),
        ("layer-option", lambda backend: fastrnn.SimpleRNN(2, backend=backend, go_backwards="yes")),
    ]
    return cases


BACKEND_CASES = backend_cases()


def _failure(fn, backend):
    try:
        fn(backend)
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    raise AssertionError("no exception")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", [c[1] for c in BACKEND_CASES], ids=[c[0] for c in BACKEND_CASES])
def test_bad_input_rejected_identically_for_every_backend(fn, backend, monkeypatch):
    expected = _failure(fn, "numpy")

    def no_kernel(*args, **kwargs):
        raise AssertionError("validation must reject the input before a kernel is selected")

    monkeypatch.setattr(ops, "select_kernel", no_kernel)
    got = _failure(fn, backend)
    assert got == expected


# ---------------------------------------------------------------------------------------------------------------
# Successful calls never modify their inputs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,reset_after", [("simple_rnn", True), ("lstm", True), ("gru", True), ("gru", False)])
def test_ops_never_modify_inputs(cell, reset_after, dtype, reverse):
    k = base(cell, reset_after, dtype)
    rng = np.random.default_rng(5)
    states = [rng.standard_normal((B, U)).astype(dtype) for _ in range(n_states(cell))]
    lengths = np.array([5, 2])
    dy = rng.standard_normal((B, T, U)).astype(dtype)
    dstates = [rng.standard_normal((B, U)).astype(dtype) for _ in range(n_states(cell))]
    inputs = [k["x"], *k["weights"], *states, lengths, dy, *dstates]
    before = [a.copy() for a in inputs]
    out = call_ops(dict(k, initial_states=states, lengths=lengths, reverse=reverse, training=True))
    grads = ops.rnn_backward(out, dy, dstates)
    # write into every result: none of them may alias an input
    for a in (out.outputs, *out.states, grads.dx, *grads.d_initial_states, *grads.d_weights):
        a[...] = 123.0
    out2 = call_ops(dict(k, x=k["x"][:, ::-1], initial_states=states, training=True))  # non-contiguous x
    ops.rnn_backward(out2, dy[:, ::-1], None)
    for a, b in zip(before, inputs):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------------------------

CELL_VARIANTS = [("simple_rnn", True), ("lstm", True), ("gru", True), ("gru", False)]
small = st.integers(0, 3)


def shape_strategy(valid, min_rank):
    """The valid shape, or a random shape of rank min_rank..4 with sizes 0..9."""
    return st.one_of(st.just(valid), st.lists(st.integers(0, 9), min_size=min_rank, max_size=4).map(tuple))


@st.composite
def maybe_bad_problem(draw, min_rank=1):
    cell, reset_after = draw(st.sampled_from(CELL_VARIANTS))
    g = GATES[cell]
    b_, t_, d_, u_ = draw(small), draw(small), draw(small), draw(st.integers(1, 3))
    shapes = {
        "x": draw(shape_strategy((b_, t_, d_), min_rank)),
        "W": draw(shape_strategy((d_, g * u_), min_rank)),
        "R": draw(shape_strategy((u_, g * u_), min_rank)),
        "b": draw(shape_strategy(bias_shape(cell, u_, reset_after), min_rank)),
    }
    return cell, reset_after, shapes


def is_valid(cell, reset_after, s):
    g = GATES[cell]
    if len(s["x"]) != 3 or len(s["R"]) != 2:
        return False
    _, _, d_ = s["x"]
    u_ = s["R"][0]
    return (u_ >= 1 and s["R"] == (u_, g * u_) and s["W"] == (d_, g * u_)
            and s["b"] == bias_shape(cell, u_, reset_after))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_bad_problem())
def test_random_shapes_are_rejected_with_value_or_type_error_only(problem):
    cell, reset_after, s = problem
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(v).astype(np.float32) for k, v in s.items()}
    valid = is_valid(cell, reset_after, s)
    try:
        out = ops.rnn_forward(cell, arrays["x"], [arrays["W"], arrays["R"], arrays["b"]], reset_after=reset_after,
                              backend="numpy")
    except (ValueError, TypeError):
        assert not valid, f"valid shapes {s} rejected"
        return
    assert valid, f"invalid shapes {s} accepted"
    B_, T_, _ = s["x"]
    assert out.outputs.shape == (B_, T_, s["R"][0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_bad_problem(min_rank=0), st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "U1",
                                                       "object"]))
def test_random_shapes_and_dtypes_only_ever_raise_value_or_type_error(problem, x_dtype):
    """Rank 0 included (see test_zero_d_arrays_keep_their_shape), and x of any dtype: never another exception."""
    cell, reset_after, s = problem
    arrays = {k: np.ones(v, np.float64) for k, v in s.items()}
    arrays["x"] = arrays["x"].astype(x_dtype)
    try:
        out = ops.rnn_forward(cell, arrays["x"], [arrays["W"], arrays["R"], arrays["b"]], reset_after=reset_after,
                              backend="numpy", training=True)
    except (ValueError, TypeError):
        return
    assert x_dtype in ("float32", "float64", "int64", "bool")
    assert out.outputs.shape[:2] == arrays["x"].shape[:2]


@settings(max_examples=150, deadline=None)
@given(cell_variant=st.sampled_from(CELL_VARIANTS), b_=small, t_=small, d_=small, u_=st.integers(1, 3),
       reverse=st.booleans(), use_bias=st.booleans(), with_states=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_random_valid_small_shapes_give_the_right_shapes(cell_variant, b_, t_, d_, u_, reverse, use_bias,
                                                         with_states, dtype, data):
    cell, reset_after = cell_variant
    g = GATES[cell]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((b_, t_, d_)).astype(dtype)
    weights = [rng.standard_normal((d_, g * u_)).astype(dtype), rng.standard_normal((u_, g * u_)).astype(dtype)]
    if use_bias:
        weights.append(rng.standard_normal(bias_shape(cell, u_, reset_after)).astype(dtype))
    states = [rng.standard_normal((b_, u_)).astype(dtype) for _ in range(n_states(cell))] if with_states else None
    lengths = np.array(data.draw(st.lists(st.integers(0, t_), min_size=b_, max_size=b_)), np.int64)
    out = ops.rnn_forward(cell, x, weights, states, lengths, reverse=reverse, reset_after=reset_after,
                          training=True, backend="numpy")
    assert out.outputs.shape == (b_, t_, u_) and out.outputs.dtype == dtype
    assert len(out.states) == n_states(cell)
    assert all(s.shape == (b_, u_) and s.dtype == dtype for s in out.states)
    assert np.isfinite(out.outputs).all()
    assert not out.outputs[np.arange(t_)[None, :] >= lengths[:, None]].any()  # padded positions are zero
    grads = ops.rnn_backward(out, np.ones((b_, t_, u_), dtype))
    assert grads.dx.shape == x.shape
    assert [w.shape for w in grads.d_weights] == [w.shape for w in weights]
    assert all(s.shape == (b_, u_) for s in grads.d_initial_states)
