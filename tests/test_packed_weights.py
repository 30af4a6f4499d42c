"""Packed weights: W and R packed once (ops.PackedWeights, the kernels' <cell>_pack and pack_split) for a frozen
layer's inference calls (RecurrentLayer.freeze).

Kernels given the packed arrays against the same kernels packing on their own (the same bits where they pack
too; against the reference where a short call would have kept BLAS), for every cell and option, both dtypes,
ragged lengths and reverse, the whole-batch kernel and the column split on 1-3 threads; packed arrays that do not
fit the call are refused. Layers: freeze keeps the outputs, makes the weights read-only, refuses training, packs
again after set_weights or a new array; copies, pickles, Bidirectional and Sequential.
"""
import copy
import dataclasses
import pickle

import numpy as np
import pytest

import fastrnn
from fastrnn import _column_split as cs
from fastrnn import ops, threads
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, random_problem, rel_err
from helpers import no_backoff, watchdog  # noqa: F401 (autouse fixtures)

cython_built = ops.KERNELS[("lstm", "cython", np.dtype(np.float32))].available()
pytestmark = pytest.mark.skipif(not cython_built, reason="Cython kernels not built")

DTYPES = (np.float32, np.float64)


def problem(cell, options, B, T, D, U, dtype, lengths="full", reverse=False, seed=0):
    p = random_problem(cell, B=B, T=T, D=D, U=U, seed=seed, lengths=lengths, **options)
    return ops.make_problem(cell, p["x"].astype(dtype), [p["W"].astype(dtype), p["R"].astype(dtype),
                                                        p["b"].astype(dtype)],
                            [s.astype(dtype) for s in p["states"]], p["lengths"], reverse,
                            options.get("activation", "tanh"), options.get("reset_after", True), dtype)


def with_packed(p):
    return dataclasses.replace(p, packed=ops.PackedWeights(p.cell, p.W, p.R, p.reset_after))


def whole_batch(p):
    y, finals, _ = ops.KERNELS[(p.cell, "cython", p.x.dtype)].forward(p, False)
    return y, finals


def assert_same(a, b):
    y1, f1 = a
    y2, f2 = b
    np.testing.assert_array_equal(y1, y2)
    for s1, s2 in zip(f1, f2):
        np.testing.assert_array_equal(s1, s2)


def assert_close(a, b, dtype):
    tol = 1e-10 if dtype == np.float64 else 1e-5
    y1, f1 = a
    y2, f2 = b
    assert rel_err(y1, y2) < tol
    for s1, s2 in zip(f1, f2):
        assert rel_err(s1, s2) < tol


# -- kernels ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("B,T,D,U,lengths,reverse", [
    (1, 20, 5, 37, "full", False),     # batch 1, >= 16 steps: the kernel packs R and W itself too
    (4, 9, 16, 33, "mixed", True),     # ragged, reverse
    (3, 6, 7, 70, "mixed", False),     # units over one panel
    (9, 7, 19, 37, "mixed", True),     # batch >= 8: x W per step (fused_blas.step_projection_pays)
])
def test_whole_batch_kernel_same_bits_with_packed_weights(cell, options, dtype, B, T, D, U, lengths, reverse):
    p = problem(cell, options, B, T, D, U, dtype, lengths, reverse)
    assert_same(whole_batch(with_packed(p)), whole_batch(p))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 3), (2, 2), (8, 2)])
def test_short_calls_with_packed_weights_match_the_reference(cell, options, dtype, B, T):
    # Too short for the kernel to pack on its own (BLAS): given packed weights it runs the packed product (at
    # batch 8: x W per step).
    p = problem(cell, options, B, T, 6, 40, dtype)
    y, states, _ = ops.KERNELS[(cell, "numpy", p.x.dtype)].forward(p, False)
    assert_close(whole_batch(with_packed(p)), (y, states), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_column_split_same_bits_with_packed_weights(cell, options, dtype, n):
    if cs.kernel_module() is None:
        pytest.skip(cs.unavailable_reason())
    p = problem(cell, options, 2, 21, 9, 67, dtype, "mixed", reverse=True)
    packed = with_packed(p)
    assert_same(cs.forward(packed, n), cs.forward(p, n))
    assert packed.packed.for_threads(n) is packed.packed.for_threads(n)  # packed once per thread count


def test_kernels_refuse_packed_weights_that_do_not_fit():
    p = problem("lstm", {}, 1, 20, 5, 37, np.float32)
    mod = ops.KERNELS[("lstm", "cython", p.x.dtype)]._load()
    good = mod.lstm_pack(p.W, p.R)
    y, hT, cT = np.empty((1, 20, 37), np.float32), np.empty((1, 37), np.float32), np.empty((1, 37), np.float32)
    e = np.zeros((0, 0, 0), np.float32)
    args = (p.x, p.W, p.R, p.b, *p.initial_states, p.lengths, False, False, y, hT, cT, e, e, e, e)
    mod.lstm_forward(*args, good)
    with pytest.raises(ValueError, match="packed"):       # another dtype
        mod.lstm_forward(*args, good.view(np.int32))
    with pytest.raises(ValueError, match="packed"):       # other shapes
        mod.lstm_forward(*args, mod.lstm_pack(p.W[:4], p.R))
    raw = np.empty(good.size + 16, np.float32)
    start = raw.ctypes.data % 64 // 4
    shifted = raw[start + 1:start + 1 + good.size]        # the right size, off its 64-byte boundary
    shifted[:] = good
    with pytest.raises(ValueError, match="64-byte"):
        mod.lstm_forward(*args, shifted)
    with pytest.raises(TypeError, match="packed"):
        mod.lstm_forward(*args, [1.0])
    with pytest.raises(ValueError, match="W"):
        mod.lstm_pack(p.W[:, :10].copy(), p.R)


def test_column_split_refuses_packed_weights_for_other_threads():
    if cs.kernel_module() is None:
        pytest.skip(cs.unavailable_reason())
    p = problem("gru", dict(reset_after=False), 1, 21, 9, 67, np.float32)
    packed = with_packed(p)
    two = packed.packed.for_threads(2)
    packed.packed._split[3] = two
    with pytest.raises(ValueError, match="threads"):
        cs.forward(packed, 3)
    packed.packed._split[2] = cs.pack("gru", p.W, p.R, 2, reset_after=True)   # the other GRU layout
    with pytest.raises(ValueError, match="reset_before"):
        cs.forward(packed, 2)


# -- layers ----------------------------------------------------------------------------------------------------------
LAYERS = [
    (fastrnn.LSTM, {}),
    (fastrnn.GRU, {}),
    (fastrnn.GRU, dict(reset_after=False)),
    (fastrnn.SimpleRNN, dict(activation="relu")),
]
LAYER_IDS = ["lstm", "gru-ra", "gru-rb", "rnn-relu"]


def data(B=2, T=24, D=5, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


@pytest.mark.parametrize("cls,kw", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_frozen_layer_gives_the_same_outputs(cls, kw, n_threads):
    before = threads.get_num_threads()
    threads.set_num_threads(n_threads)
    try:
        for B, T, D, U in ((2, 24, 5, 8), (1, 30, 16, 256), (1, 2, 3, 4)):   # 256: the column split on 2 threads
            x = data(B, T, D)
            layer = cls(U, return_sequences=True, return_state=True, seed=1, **kw)
            want = layer(x)
            assert layer.freeze() is layer and layer.frozen
            got = layer(x)
            if n_threads == 2 and U == 256 and cls is not fastrnn.SimpleRNN:   # the column split took its share
                assert list(layer._packed[3]._split) == [2]
            for g, w in zip(got, want):
                if T >= 16:
                    np.testing.assert_array_equal(g, w)
                else:  # a short call packs nothing on its own: rounding
                    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("cls,kw", LAYERS, ids=LAYER_IDS)
def test_frozen_layer_is_read_only_and_refuses_training(cls, kw):
    layer = cls(6, seed=2, **kw)
    x = data()
    layer(x)
    kept = layer.kernel
    layer.freeze()
    for w in layer.weights:
        assert not w.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            w[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        kept[0, 0] = 1.0    # the array the layer had before: made read-only in place, not replaced
    with pytest.raises(ValueError, match=r"frozen for inference \(freeze\(\)\); call unfreeze\(\)"):
        layer(x, training=True)
    assert layer.unfreeze() is layer and not layer.frozen
    assert all(w.flags.writeable for w in layer.weights)
    layer(x, training=True)
    layer.backward(np.ones((2, 6), np.float32))


def test_freeze_needs_a_built_layer():
    with pytest.raises(ValueError, match="freeze needs a built layer"):
        fastrnn.LSTM(4).freeze()
    with pytest.raises(ValueError, match="freeze needs a built layer"):
        fastrnn.Bidirectional(fastrnn.LSTM(4)).freeze()


@pytest.mark.parametrize("cls,kw", LAYERS, ids=LAYER_IDS)
def test_frozen_layer_packs_new_weights(cls, kw):
    x = data()
    layer = cls(8, return_sequences=True, seed=3, **kw)
    layer(x)
    layer.freeze()
    new = [w * 0.5 for w in layer.get_weights()]
    layer.set_weights(new)                        # loads into the read-only arrays and packs again
    assert layer.frozen and not layer.kernel.flags.writeable
    fresh = cls(8, return_sequences=True, **kw)
    fresh(x)
    fresh.set_weights(new)
    np.testing.assert_array_equal(layer(x), fresh(x))
    other = np.ascontiguousarray(new[1][:, ::-1])   # a new array assigned: made read-only and packed at the call
    layer.recurrent_kernel = other
    fresh.recurrent_kernel = other.copy()
    np.testing.assert_array_equal(layer(x), fresh(x))
    assert not other.flags.writeable
    bias = new[2] * 2                                 # a new bias alone: made read-only too
    layer.bias = bias
    fresh.bias = bias.copy()
    np.testing.assert_array_equal(layer(x), fresh(x))
    assert not bias.flags.writeable
    view = fresh.recurrent_kernel[:, :]               # a view: copied (its base would stay writable)
    layer.recurrent_kernel = view
    layer(x)
    assert layer.recurrent_kernel is not view and not layer.recurrent_kernel.flags.writeable
    assert view.flags.writeable


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_frozen_layer_copies(how):
    x = data()
    layer = fastrnn.LSTM(8, return_sequences=True, seed=4)
    want = layer(x)
    layer.freeze()
    layer(x)
    twin = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert twin.frozen and not twin.kernel.flags.writeable
    np.testing.assert_array_equal(twin(x), want)
    assert twin._packed[0] is twin.kernel


def test_frozen_bidirectional_and_sequential():
    x = data(B=3, T=20, D=4)
    y = np.zeros((3, 1), np.float32)
    bi = fastrnn.Bidirectional(fastrnn.GRU(6, return_sequences=True, seed=5))
    model = fastrnn.Sequential([bi, fastrnn.LSTM(5, seed=6), fastrnn.Dense(1)])
    model.compile("sgd", "mse")
    want = model.predict(x)
    assert model.freeze() is model
    assert bi.frozen and model.layers[1].frozen
    np.testing.assert_array_equal(model.predict(x), want)
    with pytest.raises(ValueError, match="frozen"):
        model.fit(x, y, epochs=1, verbose=0)
    model.unfreeze()
    assert not bi.frozen
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(model.predict(x), want)
