"""The layers' and cells' per-call path (issue 6: one small call in <= 10 us).

A recurrent layer checks its weights once and reuses that while they stay the same arrays (until set_weights or a
training call); each call still checks x, the states, the mask / lengths. These tests show that this path
- gives bit-identical results to ops.rnn_forward on the same kernel, for every cell, option, dtype and backend;
- still rejects every bad argument with the error of a fresh layer, also once its weight check is cached;
- notices weights that were replaced, reshaped or loaded, and never modifies or aliases its inputs.
Speed is measured by `fastrnn bench --peers` (latency), never asserted here.
"""
import re

import numpy as np
import pytest

import fastrnn
from fastrnn import _checks, ops

from helpers import CELL_OPTION_IDS, CELL_OPTIONS, n_states

BACKENDS = ["numpy"] + [b for b in ops.COMPILED_BACKENDS if ops.available_backends()[b] is None]
LAYERS = {"simple_rnn": fastrnn.SimpleRNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}
CELLS = {"simple_rnn": fastrnn.RNNCell, "lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell}
B, T, D, U = 3, 5, 4, 6


def esc(s):
    return re.escape(s)


def make_layer(cell, options, **kw):
    return LAYERS[cell](U, seed=3, **options, **kw)


def random_x(dtype, seed=0, batch=B, timesteps=T):
    return np.random.default_rng(seed).standard_normal((batch, timesteps, D)).astype(dtype)


def as_list(out):
    return list(out) if isinstance(out, list) else [out]


def assert_identical(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)  # (a readable message first)
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(e).tobytes()  # bit-identical, signs of 0 too


def ops_reference(layer, x, initial_state=None, lengths=None):
    """What the layer must return: ops.rnn_forward on the kernel the layer used, formatted the Keras way."""
    options = {"activation": layer.activation} if layer.cell == "simple_rnn" else (
        {"reset_after": layer.reset_after} if layer.cell == "gru" else {})
    out = ops.rnn_forward(layer.cell, x, layer.get_weights(), initial_state, lengths, reverse=layer.go_backwards,
                          backend=layer.backend_used, dtype=layer.dtype, **options)
    return out, as_list(layer._format(out, None if lengths is None else np.asarray(lengths, np.int64)))


# ---------------------------------------------------------------------------------------------------------------
# Same results as ops.rnn_forward on the same kernel
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_layer_sequences_and_states_equal_ops(cell, options, dtype, backend):
    layer = make_layer(cell, options, return_sequences=True, return_state=True, dtype=dtype, backend=backend)
    x = random_x(dtype)
    for _ in range(3):  # the first call checks the weights, the next ones reuse that
        y, *states = layer(x)
        out = ops.rnn_forward(cell, x, layer.get_weights(), backend=backend, dtype=dtype, **options)
        assert layer.backend_used == out.backend == ops.select_kernel(cell, backend, np.dtype(dtype), (B, T, D, U)).name
        assert_identical([y, *states], [out.outputs, *out.states])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("variant", ["last", "last-state", "mask", "lengths", "go_backwards-mask", "initial_state",
                                     "no-bias", "zero-output-for-mask"])
def test_layer_options_equal_ops(cell, options, dtype, backend, variant):
    kw = dict(dtype=dtype, backend=backend)
    call = {}
    lens = np.array([5, 0, 2])
    mask = np.arange(T)[None, :] < lens[:, None]
    rng = np.random.default_rng(7)
    if variant == "last":
        pass
    elif variant == "last-state":
        kw.update(return_state=True)
    elif variant == "mask":
        kw.update(return_sequences=True)
        call.update(mask=mask)
    elif variant == "lengths":
        kw.update(return_state=True)
        call.update(lengths=lens)
    elif variant == "go_backwards-mask":
        kw.update(return_sequences=True, go_backwards=True, return_state=True)
        call.update(mask=mask)
    elif variant == "initial_state":
        kw.update(return_sequences=True)
        states = [rng.standard_normal((B, U)).astype(dtype) for _ in range(n_states(cell))]
        call.update(initial_state=states)
    elif variant == "no-bias":
        kw.update(use_bias=False, return_state=True)
    else:
        kw.update(return_sequences=True, zero_output_for_mask=True)
        call.update(lengths=lens)
    layer = make_layer(cell, options, **kw)
    x = random_x(dtype)
    for _ in range(2):
        got = as_list(layer(x, **call))
        lengths = call.get("lengths", lens if "mask" in call else None)
        _, expected = ops_reference(layer, x, call.get("initial_state"), lengths)
        assert_identical(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_stateful_layer_equals_chained_ops(cell, options, backend):
    layer = make_layer(cell, options, stateful=True, return_sequences=True, backend=backend)
    states = None
    for k in range(3):
        x = random_x(np.float32, seed=k)
        y = layer(x)
        out = ops.rnn_forward(cell, x, layer.get_weights(), states, backend=backend, **options)
        assert_identical([y], [out.outputs])
        states = list(out.states)
        assert_identical(layer.states, states)
    layer.reset_states()
    assert_identical([layer(x)], [ops.rnn_forward(cell, x, layer.get_weights(), backend=backend, **options).outputs])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_training_call_equals_ops_and_backward_runs(cell, options, backend):
    layer = make_layer(cell, options, return_sequences=True, backend=backend, dtype=np.float64)
    x = random_x(np.float64)
    y = layer(x)  # an inference call first: its cached weight check must not leak into training
    y_train = layer(x, training=True)
    out = ops.rnn_forward(cell, x, layer.get_weights(), backend=backend, dtype=np.float64, training=True, **options)
    assert_identical([y, y_train], [out.outputs, out.outputs])
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = ops.rnn_backward(out, dy)
    assert_identical([dx, *layer.grads], [grads.dx, *grads.d_weights])


def test_bidirectional_equals_its_halves():
    bi = fastrnn.Bidirectional(fastrnn.GRU(U, return_sequences=True, seed=1))
    x = random_x(np.float32)
    y1 = bi(x)
    y2 = bi(x)
    assert_identical([y1], [y2])
    weights = [w * 0.5 for w in bi.get_weights()]
    bi.set_weights(weights)  # through Bidirectional.set_weights -> each half's _apply_weights
    fwd = ops.rnn_forward("gru", x, weights[:3], backend=bi.backend_used).outputs
    bwd = ops.rnn_forward("gru", x, weights[3:], reverse=True, backend=bi.backend_used).outputs
    assert_identical([bi(x)], [np.concatenate([fwd, bwd], axis=-1)])


STEP_CELLS = [(c, o, i) for (c, o), i in zip(CELL_OPTIONS, CELL_OPTION_IDS) if o.get("reset_after", True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,options", [c[:2] for c in STEP_CELLS], ids=[c[2] for c in STEP_CELLS])
def test_cell_equals_one_step_of_ops(cell, options, dtype, backend):
    """GRUCell is reset_after=True (PyTorch's GRU)."""
    kw = {"nonlinearity": options["activation"]} if cell == "simple_rnn" else {}
    c = CELLS[cell](D, U, dtype=dtype, backend=backend, seed=2, **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, D)).astype(dtype)
    state = None
    for _ in range(3):  # zeros, then the cell's own outputs fed back
        got = c(x, state)
        got = list(got) if isinstance(got, tuple) else [got]
        out = ops.rnn_forward(cell, x[:, None, :], c.weights, state, backend=backend, dtype=dtype, **options)
        assert c.backend_used == out.backend
        assert_identical(got, list(out.states))
        state = tuple(got) if cell == "lstm" else got[0]
    # unbatched (input_size,) -> (hidden_size,)
    got = c(x[0])
    got = list(got) if isinstance(got, tuple) else [got]
    out = ops.rnn_forward(cell, x[:1, None, :], c.weights, backend=backend, dtype=dtype, **options)
    assert_identical(got, [s[0] for s in out.states])


# ---------------------------------------------------------------------------------------------------------------
# The cached weight check: what drops it, what it notices
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_set_weights_with_nan_is_rejected_at_the_next_call(backend):
    layer = fastrnn.LSTM(U, backend=backend, seed=0)
    x = random_x(np.float32)
    layer(x)
    layer(x)
    w = layer.get_weights()
    w[0][0, 0] = np.nan
    layer.set_weights(w)  # writes into the same live arrays: the cached check must go
    with pytest.raises(ValueError, match="kernel must be finite"):
        layer(x)
    w[0][0, 0] = 0.0
    layer.set_weights(w)
    assert_identical([layer(x)], [ops.rnn_forward("lstm", x, w, backend=backend).states[0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_call_drops_the_cached_check(backend):
    """An optimizer writes into the live arrays after a training call: the next inference call checks again."""
    layer = fastrnn.GRU(U, backend=backend, seed=0)
    x = random_x(np.float32)
    layer(x)
    layer(x, training=True)
    layer.backward(np.ones((B, U), np.float32))
    layer.recurrent_kernel[0, 0] = np.inf  # as a diverged optimizer step would
    with pytest.raises(ValueError, match="must be finite"):
        layer(x)


def test_weights_assigned_by_attribute_are_checked():
    layer = fastrnn.SimpleRNN(U, seed=0, return_sequences=True)
    x = random_x(np.float32)
    layer(x)
    # new arrays of the right kind are used (and checked) at once
    W = np.full((D, U), 0.1, np.float32)
    layer.kernel = W
    assert_identical([layer(x)], [ops.rnn_forward("simple_rnn", x, [W, layer.recurrent_kernel, layer.bias]).outputs])
    # float64 on a float32 layer: converted at every call, so later in-place changes still count
    W64 = np.full((D, U), 0.2)
    layer.kernel = W64
    y1 = layer(x)
    W64 *= 2
    y2 = layer(x)
    assert_identical([y2], [ops.rnn_forward("simple_rnn", x, [W64, layer.recurrent_kernel, layer.bias],
                                            dtype=np.float32).outputs])
    assert not np.array_equal(y1, y2)
    # wrong shapes and values: the errors of ops.rnn_forward
    layer.kernel = np.zeros((D, U + 1), np.float32)
    with pytest.raises(ValueError, match=esc(f"kernel must have shape (input_dim={D}, 1*units={U}); got shape (4, 7)")):
        layer(x)
    layer.kernel = np.full((D, U), np.nan, np.float32)
    with pytest.raises(ValueError, match="kernel must be finite"):
        layer(x)
    layer.kernel = W
    layer.bias = np.zeros(U + 1, np.float32)
    with pytest.raises(ValueError, match=esc(f"bias must have shape (1*units={U},); got shape ({U + 1},)")):
        layer(x)


def test_weights_reshaped_in_place_are_checked_again():
    """Same array objects, new shapes: caught by the check, never handed to a kernel (which would read out of
    bounds)."""
    layer = fastrnn.LSTM(8, seed=0)
    x = random_x(np.float32)
    layer(x)
    layer.recurrent_kernel.shape = (16, 16)
    with pytest.raises(ValueError,
                       match=esc("recurrent_kernel must have shape (units=16, 4*units=64); got shape (16, 16)")):
        layer(x)
    layer.recurrent_kernel.shape = (8, 32)
    layer.bias.shape = (2, 16)
    with pytest.raises(ValueError, match=esc("bias must have shape (4*units=32,); got shape (2, 16)")):
        layer(x)


def test_weights_of_other_units_give_states_of_their_units():
    """Weights replaced with consistent ones of another size run with states of that size (no stale zeros)."""
    layer = fastrnn.GRU(U, seed=0, return_state=True)
    x = random_x(np.float32)
    layer(x)
    rng = np.random.default_rng(0)
    w = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in [(D, 9), (3, 9), (2, 9)]]
    layer.kernel, layer.recurrent_kernel, layer.bias = w
    got = layer(x)
    assert got[0].shape == (B, 3)
    assert_identical(got[1:], list(ops.rnn_forward("gru", x, w, backend=layer.backend_used).states))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: the same errors once the weight check is cached, nothing modified
# ---------------------------------------------------------------------------------------------------------------

def bad_calls(cell):
    x = random_x(np.float32)
    h = np.zeros((B, U), np.float32)
    states = [h] * n_states(cell)
    nan_x = x.copy()
    nan_x[1, 2, 3] = np.nan
    nan_h = h.copy()
    nan_h[0, 0] = np.inf
    mask = np.arange(T)[None, :] < np.array([5, 2, 0])[:, None]
    return [
        ("x-nan", dict(x=nan_x), ValueError, "x must be finite; it contains NaN or inf"),
        ("x-inf-f64", dict(x=np.where(np.isnan(nan_x), np.inf, nan_x).astype(np.float64)), ValueError,
         "x must be finite"),
        ("x-huge", dict(x=np.full((B, T, D), 1e300)), ValueError, "x has values beyond the range of float32"),
        ("x-2d", dict(x=x[:, 0]), ValueError, "x must have shape (batch, timesteps, features) (3-D)"),
        ("x-features", dict(x=x[..., :-1]), ValueError, f"x must have shape (batch, timesteps, features={D})"),
        ("x-complex", dict(x=x + 1j), TypeError, "x must be a real numeric array"),
        ("x-object", dict(x=[[[None] * D]]), TypeError, "x must be a real numeric array"),
        ("state-nan", dict(x=x, initial_state=[nan_h] + states[1:]), ValueError, "initial_state h0 must be finite"),
        ("state-count", dict(x=x, initial_state=states + [h]), ValueError, "initial_state must hold"),
        ("state-shape", dict(x=x, initial_state=[h[:, :-1]] + states[1:]), ValueError,
         f"initial_state h0 must have shape (batch={B}, units={U}); got shape ({B}, {U - 1})"),
        ("lengths-over", dict(x=x, lengths=[6, 1, 1]), ValueError, f"lengths must be in [0, timesteps={T}]"),
        ("lengths-float", dict(x=x, lengths=[1.0, 1.0, 1.0]), TypeError, "lengths must be integers"),
        ("mask-left-padded", dict(x=x, mask=mask[:, ::-1]), ValueError, "mask must be right-padded"),
        ("mask-and-lengths", dict(x=x, mask=mask, lengths=[5, 2, 0]), ValueError, "pass mask or lengths, not both"),
        ("training-str", dict(x=x, training="yes"), TypeError, "training must be True or False"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_warm_layer_rejects_bad_calls_like_a_fresh_one(cell, backend):
    warm = LAYERS[cell](U, backend=backend, seed=0)
    warm(random_x(np.float32))
    warm(random_x(np.float32))
    before = warm.get_weights()
    for case, kw, exc, match in bad_calls(cell):
        args = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        fresh = LAYERS[cell](U, backend=backend, seed=0)
        fresh.build((None, None, D))
        with pytest.raises(exc) as cold_err:
            fresh(**args)
        warm.backend_used = None
        with pytest.raises(exc, match=esc(match)) as warm_err:
            warm(**args)
        assert type(warm_err.value) is type(cold_err.value) is exc, case
        assert str(warm_err.value) == str(cold_err.value), case
        assert warm.backend_used is None, case  # nothing ran
        for k, v in kw.items():  # inputs untouched
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(args[k], v)
    assert_identical(warm.get_weights(), before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_warm_cell_rejects_bad_state(cell, backend):
    c = CELLS[cell](D, U, backend=backend, seed=0)
    x = np.ones((B, D), np.float32)
    out = c(x)
    state = out
    bad = (out[0].copy(), out[1].copy()) if cell == "lstm" else out.copy()
    (bad[1] if cell == "lstm" else bad)[0, 0] = np.nan
    label = "state c" if cell == "lstm" else "state"
    with pytest.raises(ValueError, match=esc(f"{label} must be finite")):
        c(x, bad)
    nan_x = x.copy()
    nan_x[2, 1] = np.inf
    with pytest.raises(ValueError, match="x must be finite"):
        c(nan_x, state)


def test_results_never_alias_inputs_or_each_other():
    layer = fastrnn.LSTM(U, return_state=True, seed=0)
    x = random_x(np.float32)
    h0 = np.zeros((B, U), np.float32)
    x_before = x.copy()
    first = layer(x)
    second = layer(x, initial_state=[h0, h0])
    third = layer(x)
    results = first + second + third
    for k, a in enumerate(results):
        for arr in [x, h0, *layer.weights]:
            assert not np.shares_memory(a, arr)
        for other in results[k + 1:]:
            assert not np.shares_memory(a, other)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(h0, 0)
    # writing into results changes nothing for the next call (no cached array is ever handed out)
    for a in results:
        a[...] = 123.0
    out = ops.rnn_forward("lstm", x, layer.get_weights(), backend=layer.backend_used)
    assert_identical(layer(x), [out.states[0], *out.states])


# ---------------------------------------------------------------------------------------------------------------
# _checks.as_array's fast path
# ---------------------------------------------------------------------------------------------------------------

def test_as_array_passes_kernel_ready_arrays_through():
    a = np.ones((2, 3), np.float32)
    assert _checks.as_array("a", a, np.float32) is a
    assert _checks.as_array("a", a, np.dtype(np.float32)) is a
    # anything else is converted: other dtype, byte order, layout, alignment, subclass
    assert _checks.as_array("a", a, np.float64).dtype == np.float64
    swapped = a.astype(">f4")
    got = _checks.as_array("a", swapped, np.float32)
    assert got.dtype == np.dtype(np.float32) and got.dtype.isnative
    assert _checks.as_array("a", np.asfortranarray(np.ones((2, 3), np.float32)), np.float32).flags.c_contiguous
    raw = np.zeros(4 * 6 + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, np.float32, 6, offset=1).reshape(2, 3)
    assert not unaligned.flags.aligned
    assert _checks.as_array("a", unaligned, np.float32).flags.aligned
    assert type(_checks.as_array("a", np.ma.masked_array(a), np.float32)) is np.ndarray


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finiteness_check_is_exact(dtype):
    big = np.finfo(dtype).max / 4
    tiny = np.finfo(dtype).smallest_subnormal
    for values, finite in [([1.0, 2.0], True), ([big, big, -big], True),  # the sum of squares overflows: still finite
                           ([1.0, np.nan], False), ([np.inf, 1.0], False), ([-np.inf], False),
                           ([np.nan, np.inf, -np.inf], False), ([], True), ([tiny, -tiny], True)]:
        a = np.array(values, dtype)
        assert _checks.all_finite(a) == finite, values
        if finite:
            assert _checks.as_array("a", a, dtype) is a
        else:
            with pytest.raises(ValueError, match="a must be finite"):
                _checks.as_array("a", a, dtype)


def test_backend_changed_after_a_call_is_used():
    layer = fastrnn.LSTM(U, seed=0)
    x = random_x(np.float32)
    layer(x)
    for backend in BACKENDS + ["auto"]:
        layer.backend = backend
        y = layer(x)
        assert layer.backend_used == ops.select_kernel("lstm", backend, np.dtype(np.float32), (B, T, D, U)).name
        assert_identical([y], [ops.rnn_forward("lstm", x, layer.get_weights(), backend=backend).states[0]])
    layer.backend = "fortran"
    with pytest.raises(ValueError, match="backend must be one of"):
        layer(x)
