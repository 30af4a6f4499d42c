"""The Cython kernel entries (cython_<cell>.<cell>_forward / _backward) take plain ndarrays
(kernels/array_args.pxd): they check dtype, layout, writability, shapes and lengths themselves, and keep scratch on
the stack when it is small. The forward's results are checked against the reference here in inference mode (the
conformance tests run training, forward and backward, at sizes on both sides of the stack buffer)."""
import numpy as np
import pytest

from fastrnn import kernels, ops
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, random_problem, rel_err

pytestmark = pytest.mark.skipif(not ops.KERNELS[("lstm", "cython", np.dtype(np.float64))].available(),
                                reason="Cython kernels not built")

# (B, T, D, U): the LSTM scratch (4U * B * (T + 1) elements) of the first fills the 4 KB stack buffer exactly in
# float32 (1024 elements) and the second is one step more; float64 takes the heap for both. Then a larger one.
SHAPES = [(4, 7, 5, 8), (4, 8, 5, 8), (1, 1, 3, 32), (6, 9, 7, 37)]


def entry_call(p, training):
    """(the module's forward function, its argument list, the argument names) for Problem p, outputs fresh."""
    B, T, D, U = p.shape
    dt = p.x.dtype
    mod = kernels.cython_module(f"cython_{p.cell}")
    y, hT = np.full((B, T, U), np.nan, dt), np.full((B, U), np.nan, dt)
    ws = ops.training_workspaces(p.cell, B, T, U, dt) if training else ops._NO_WORKSPACE[dt][p.cell]
    if p.cell == "lstm":
        names = ["x", "W", "R", "b", "h0", "c0", "lengths", "reverse", "training", "y", "hT", "cT",
                 "ws_hprev", "ws_cprev", "ws_gates", "ws_c"]
        args = [p.x, p.W, p.R, p.b, *p.initial_states, p.lengths, p.reverse, training, y, hT,
                np.full((B, U), np.nan, dt), *ws]
        return mod.lstm_forward, args, names
    if p.cell == "gru":
        b_in, b_rec = (p.b[0], p.b[1]) if p.reset_after else (p.b, np.zeros_like(p.b))
        names = ["x", "W", "R", "b_in", "b_rec", "h0", "lengths", "reverse", "reset_after", "training", "y", "hT",
                 "ws_hprev", "ws_gates", "ws_vh"]
        args = [p.x, p.W, p.R, b_in, b_rec, p.initial_states[0], p.lengths, p.reverse, p.reset_after, training,
                y, hT, *ws]
        return mod.gru_forward, args, names
    names = ["x", "W", "R", "b", "h0", "lengths", "reverse", "relu", "training", "y", "hT", "ws_hprev", "ws_h"]
    args = [p.x, p.W, p.R, p.b, p.initial_states[0], p.lengths, p.reverse, p.activation == "relu", training,
            y, hT, *ws]
    return mod.simple_rnn_forward, args, names


def problem(cell, options, shape, dtype, lengths="mixed", reverse=False):
    B, T, D, U = shape
    q = random_problem(cell, B, T, D, U, dtype=dtype, seed=B * T + U, lengths=lengths, **options)
    return ops.make_problem(cell, q["x"], [q["W"], q["R"], q["b"]], list(q["states"]), q["lengths"],
                            reverse=reverse, **options)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_inference_matches_the_reference_and_the_training_forward(cell, options, dtype, shape, reverse):
    p = problem(cell, options, shape, dtype, reverse=reverse)
    fn, args, names = entry_call(p, training=False)
    fn(*args)
    want = ops.ReferenceKernel(cell).forward(problem(cell, options, shape, np.float64, reverse=reverse), False)
    y, finals = args[names.index("y")], [args[names.index(n)] for n in ("hT", "cT") if n in names]
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert rel_err(y, want[0]) < tol
    for got, ref in zip(finals, want[1]):
        assert rel_err(got, ref) < tol
    # the training forward runs the same loop: the same bits
    fn_t, args_t, _ = entry_call(p, training=True)
    fn_t(*args_t)
    assert np.array_equal(args_t[names.index("y")], y)
    for n in ("hT", "cT"):
        if n in names:
            assert np.array_equal(args_t[names.index(n)], args[names.index(n)])


def bad_arguments(cell, names, args, dtype):
    """(argument name, a bad value for it, the error type, words its message must contain)."""
    i = names.index
    other = np.float32 if dtype == np.float64 else np.float64
    x, W, y = args[i("x")], args[i("W")], args[i("y")]
    readonly = y.copy()
    readonly.flags.writeable = False
    B, T = x.shape[:2]
    return [
        ("x", x.astype(np.float16), TypeError, ["x", "float32 or float64"]),
        ("x", x.tolist(), TypeError, ["x"]),
        ("x", x[0], ValueError, ["x", "shape (*, *, *)"]),
        ("W", W[:-1], ValueError, ["W", f"shape ({W.shape[0]}, {W.shape[1]})", f"got {np.dtype(dtype)}"]),
        ("W", W.astype(other), ValueError, ["W", "x's dtype"]),
        ("W", np.asfortranarray(np.repeat(W, 2, axis=0))[::2], ValueError, ["W", "C-contiguous: False"]),
        ("R", args[i("R")].T, ValueError, ["R"]),
        ("h0", args[i("h0")][:, 1:], ValueError, ["h0"]),
        ("lengths", args[i("lengths")].astype(np.int32), ValueError, ["lengths", "int64"]),
        ("lengths", np.full(B, T + 1, np.int64), ValueError, ["lengths must lie in [0, timesteps"]),
        ("lengths", np.full(B, -1, np.int64), ValueError, ["lengths must lie in [0, timesteps"]),
        ("y", readonly, ValueError, ["y", "writable C-contiguous", "writable: False"]),
        ("y", np.empty((B, T, y.shape[2] + 1), dtype)[:, :, 1:], ValueError, ["y", "C-contiguous: False"]),
        ("hT", args[i("hT")][:1] if B > 1 else args[i("hT")][:, :1], ValueError, ["hT"]),
    ]


def assert_each_raises_and_writes_nothing(fn, args, names, bad):
    """fn(*args) with one argument replaced by each (name, value, error, words) of `bad` raises `error` whose
    message holds every one of `words`; no argument changes (the outputs keep their NaN fill: nothing ran)."""
    snapshot = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    for name, value, error, words in bad:
        call = list(args)
        call[names.index(name)] = value
        with pytest.raises(error) as info:
            fn(*call)
        for w in words:
            assert w in str(info.value), (name, str(info.value))
    for a, s in zip(args, snapshot):
        assert np.array_equal(a, s, equal_nan=True) if isinstance(a, np.ndarray) else a == s


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_arguments_raise_an_error_naming_them_and_write_nothing(cell, options, dtype):
    p = problem(cell, options, (3, 4, 5, 6), dtype)
    fn, args, names = entry_call(p, training=False)
    assert_each_raises_and_writes_nothing(fn, args, names, bad_arguments(cell, names, args, dtype))


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_workspaces_are_checked_in_training_and_ignored_in_inference(cell, options):
    p = problem(cell, options, (3, 4, 5, 6), np.float32)
    fn, args, names = entry_call(p, training=True)
    ws_names = [n for n in names if n.startswith("ws_")]
    for n in ws_names:
        call = list(args)
        call[names.index(n)] = np.zeros((1, 1, 1), np.float32)
        if cell == "gru" and n == "ws_vh" and not options["reset_after"]:
            fn(*call)  # reset_after=False does not use ws_vh: any size but the full one is left alone
            continue
        with pytest.raises(ValueError, match=n):
            fn(*call)
    # inference: workspaces of any size (the contract: ignored), y as with full ones
    fn(*args)
    y_training = args[names.index("y")].copy()
    fn_i, args_i, _ = entry_call(p, training=False)
    for n in ws_names:
        args_i[names.index(n)] = np.zeros((1, 1, 1), np.float32)
    fn_i(*args_i)
    assert np.array_equal(args_i[names.index("y")], y_training)


def test_the_layer_call_runs_the_cython_entry_at_t1():
    """A T=1 layer call (the latency path) runs on Cython in inference, matching the reference."""
    import fastrnn
    layer = fastrnn.LSTM(32, return_sequences=True, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 1, 32)).astype(np.float32)
    y = layer(x)
    assert layer.backend_used == "cython"
    want = ops.rnn_forward("lstm", x, layer.get_weights(), backend="numpy").outputs
    assert rel_err(y, want) < 1e-5


def backward_call(p):
    """(the module's backward function, its argument list, the argument names) after a training forward of p."""
    B, T, D, U = p.shape
    dt = p.x.dtype
    fn, args, names = entry_call(p, training=True)
    fn(*args)
    ws = [args[names.index(n)] for n in names if n.startswith("ws_")]
    rng = np.random.default_rng(1)
    dy = rng.standard_normal((B, T, U)).astype(dt)
    d_final = [rng.standard_normal((B, U)).astype(dt) for _ in range(2 if p.cell == "lstm" else 1)]
    G = {"simple_rnn": 1, "lstm": 4, "gru": 3}[p.cell]
    fill = lambda *shape: np.full(shape, np.nan, dt)  # noqa: E731
    mod = kernels.cython_module(f"cython_{p.cell}")
    outs = [fill(B, T, D), fill(B, U)] + ([fill(B, U)] if p.cell == "lstm" else []) + [fill(D, G * U), fill(U, G * U)]
    if p.cell == "lstm":
        names = ["x", "W", "R", "lengths", "reverse", "ws_hprev", "ws_cprev", "ws_gates", "ws_c", "dy", "dhT", "dcT",
                 "dx", "dh0", "dc0", "dW", "dR", "db"]
        return mod.lstm_backward, [p.x, p.W, p.R, p.lengths, p.reverse, *ws, dy, *d_final, *outs,
                                   fill(G * U)], names
    if p.cell == "gru":
        names = ["x", "W", "R", "lengths", "reverse", "reset_after", "ws_hprev", "ws_gates", "ws_vh", "dy", "dhT",
                 "dx", "dh0", "dW", "dR", "db_in", "db_rec"]
        return mod.gru_backward, [p.x, p.W, p.R, p.lengths, p.reverse, p.reset_after, *ws, dy, *d_final, *outs,
                                  fill(G * U), fill(G * U)], names
    names = ["x", "W", "R", "lengths", "reverse", "relu", "ws_hprev", "ws_h", "dy", "dhT", "dx", "dh0", "dW", "dR",
             "db"]
    return mod.simple_rnn_backward, [p.x, p.W, p.R, p.lengths, p.reverse, p.activation == "relu", *ws, dy,
                                     *d_final, *outs, fill(G * U)], names


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_bad_arguments_raise_an_error_naming_them_and_write_nothing(cell, options, dtype):
    p = problem(cell, options, (3, 4, 5, 6), dtype)
    fn, args, names = backward_call(p)
    i = names.index
    B, T, D, U = p.shape
    other = np.float32 if dtype == np.float64 else np.float64
    readonly = args[i("dW")].copy()
    readonly.flags.writeable = False
    bad = [("x", args[i("x")].astype(np.float16), TypeError, ["x", "float32 or float64"]),
           ("W", args[i("W")][:, 1:], ValueError, ["W"]),
           ("lengths", np.full(B, T + 1, np.int64), ValueError, ["lengths must lie in [0, timesteps"]),
           ("ws_hprev", args[i("ws_hprev")][:, 1:], ValueError, ["ws_hprev"]),
           ("ws_hprev", args[i("ws_hprev")].astype(other), ValueError, ["ws_hprev", "x's dtype"]),
           ("dy", args[i("dy")][:, :, 1:], ValueError, ["dy"]),
           ("dhT", args[i("dhT")].T, ValueError, ["dhT"]),
           ("dx", np.empty((B, T, D + 1), dtype)[:, :, 1:], ValueError, ["dx", "C-contiguous: False"]),
           ("dh0", args[i("dh0")][:1], ValueError, ["dh0"]),
           ("dW", readonly, ValueError, ["dW", "writable: False"]),
           ("dR", args[i("dR")][:, 1:], ValueError, ["dR"])]
    bad += [(n, args[i(n)][:1], ValueError, [n]) for n in ("db", "db_in", "db_rec", "dc0", "dcT", "ws_c",
                                                           "ws_cprev", "ws_gates", "ws_h") if n in names]
    if cell == "gru" and options["reset_after"]:
        bad.append(("ws_vh", np.zeros((1, 1, 1), dtype), ValueError, ["ws_vh"]))
    assert_each_raises_and_writes_nothing(fn, args, names, bad)
    # and with good arguments every output is written, finite
    fn(*args)
    for n in names[names.index("dx"):]:
        assert np.isfinite(args[i(n)]).all(), n


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_reset_before_backward_takes_an_empty_ws_vh(reverse):
    """reset_after=False reads no ws_vh (the Numba kernels' contract allows size 0): the same gradients."""
    p = problem("gru", dict(reset_after=False), (3, 4, 5, 6), np.float64, reverse=reverse)
    fn, args, names = backward_call(p)
    fn(*args)
    want = [args[k].copy() for k in range(names.index("dx"), len(names))]
    _, args2, _ = backward_call(p)
    args2[names.index("ws_vh")] = np.zeros((0, 0, 0), np.float64)
    fn(*args2)
    for got, w in zip(args2[names.index("dx"):], want):
        assert np.array_equal(got, w)


@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_row_blocks_equal_calls_on_each_block(cell, options, dtype, training, reverse):
    """`bounds` (kernels/README.md, "Row blocks"): one call in blocks of rows on 2-3 threads writes what separate
    calls on each block's rows write, bit for bit (each block packs nothing: W and R packed once, as a `packed`
    call), workspaces included; mixed lengths put padding and rows of length 0 and T in the blocks."""
    p = problem(cell, options, (11, 9, 5, 13), dtype, lengths="mixed", reverse=reverse)
    fn, args, names = entry_call(p, training)
    mod = kernels.cython_module(f"cython_{p.cell}")
    packed = (mod.gru_pack(p.W, p.R, p.reset_after) if cell == "gru"
              else getattr(mod, f"{cell}_pack")(p.W, p.R))
    bounds = np.array([0, 3, 4, 8, 11], np.int64)
    batch_major = {"x", "h0", "c0", "lengths", "y", "hT", "cT", "ws_hprev", "ws_cprev", "ws_gates", "ws_c",
                   "ws_h", "ws_vh"}
    want = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    for k in range(len(bounds) - 1):
        r = slice(bounds[k], bounds[k + 1])
        part = [a[r] if n in batch_major and (training or not n.startswith("ws")) else a
                for n, a in zip(names, want)]
        fn(*part, packed)
    for n_threads in (2, 3):
        got = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
        fn(*got, packed, bounds, n_threads)
        for n, a, b in zip(names, got, want):
            if isinstance(a, np.ndarray) and (training or not n.startswith("ws")):
                np.testing.assert_array_equal(a, b, err_msg=n)
    got = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    fn(*got, None, bounds, 2)   # W and R packed by the call itself: the same
    np.testing.assert_array_equal(got[names.index("y")], want[names.index("y")])


@pytest.mark.parametrize("bounds,message", [
    (np.array([0, 11], np.int64), "3 or more"),
    (np.array([0, 5.0, 11]), "int64"),
    (np.array([1, 5, 11], np.int64), "start at 0"),
    (np.array([0, 5, 10], np.int64), "end at batch=11"),
    (np.array([0, 5, 5, 11], np.int64), "strictly increasing"),
])
def test_bad_row_bounds_raise_a_value_error(bounds, message):
    p = problem("lstm", {}, (11, 4, 3, 5), np.float32)
    fn, args, names = entry_call(p, training=False)
    y = args[names.index("y")]
    with pytest.raises(ValueError, match=f"bounds.*{message}|{message}.*"):
        fn(*args, None, bounds, 2)
    assert np.isnan(y).all(), "nothing written"
