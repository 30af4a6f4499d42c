"""Fuzzing every public entry point: rnn_forward / rnn_backward, the recurrent layers (and Bidirectional), the cells,
and the adapters fastrnn.torch, fastrnn.onnx and fastrnn.interop.keras (skipped without their frameworks).

Hypothesis draws shapes (zero batch, zero timesteps, units 1, ...), every numpy dtype, every memory layout (C,
Fortran, strided with big steps, negative strides, offset views, unaligned buffers, broadcast zero strides,
read-only, nested lists, one array passed twice), NaN / inf / huge / subnormal / 1e4 values in inputs and weights,
lengths and masks of any dtype, in and out of range. Each call must either

- raise a ValueError or TypeError whose message names an argument that is actually wrong, or
- return what fastrnn.reference (ops backend="numpy") computes in float64 on the same data converted to the compute
  dtype: same shapes, the compute dtype, NaN / inf exactly where the reference has them (check_finite=False), and
  finite values within the kernel tolerances of test_kernel_conformance (or, where float32 arithmetic itself
  cannot get that close, as close as the reference computed in float32: assert_matches). The Cython kernels
  read and write subnormal numbers as 0 (kernels/fused_blas.pxd, "Denormals"): their oracle gets its inputs so.
  For the adapters the oracle is the framework itself: torch.nn (in float64), onnxruntime, Keras.

and must never modify an input or return an array that shares memory with one. A hang is turned into a failure by
faulthandler. FASTRNN_SOAK=1 runs many more examples, not derandomized (FASTRNN_FUZZ_EXAMPLES sets the number);
FASTRNN_REPORT=<file> appends the number of examples tried per entry point and their outcomes to that file.
"""
import collections
import copy
import faulthandler
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

import fastrnn
from fastrnn import ops
from helpers import GATES, n_states, rel_err

SOAK = os.environ.get("FASTRNN_SOAK") == "1"
EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", 5000 if SOAK else 400))
COMPILED = [b for b in ("numba", "cython") if ops.available_backends()[b] is None]
BACKENDS = ["numpy", "auto", *COMPILED]
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# test_kernel_conformance: float64 1e-10 relative; float32 1e-4 relative or 1e-6 absolute (results tiny by
# cancellation), against the float64 reference on the float32-rounded inputs.
TOL = {F32: (1e-4, 1e-6), F64: (1e-10, 1e-12)}

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not SOAK, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

OUTCOMES = collections.defaultdict(collections.Counter)   # entry point -> {"ok": n, "ValueError": n, ...}
# NaN / inf inputs (check_finite=False) make the reference's matmuls warn, and complex inputs warn on conversion
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning",
                                        "ignore::numpy.exceptions.ComplexWarning")


@pytest.fixture(scope="module", autouse=True)
def watchdog_and_report():
    # A hang (a kernel that never returns) fails the run with every thread's traceback instead of blocking CI.
    faulthandler.dump_traceback_later(1200 if SOAK else 300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    path = os.environ.get("FASTRNN_REPORT")
    if path:
        with open(path, "a") as f:
            for entry, counts in sorted(OUTCOMES.items()):
                f.write(f"fuzz {entry}: {sum(counts.values())} examples {dict(sorted(counts.items()))}\n")


# ---------------------------------------------------------------------------------------------------------------
# Arrays: every dtype numpy has, every layout
# ---------------------------------------------------------------------------------------------------------------

# Real numbers (bool, int, uint, float, any byte order): accepted and converted to the compute dtype.
REAL_DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", ">f4", ">f8", ">i8", ">u2"]
# Everything else numpy has: a TypeError.
OTHER_DTYPES = ["c8", "c16", "G", "O", "U5", "S5", "M8[s]", "m8[s]", "V8", "f4,f4"]
if hasattr(np, "dtypes") and hasattr(np.dtypes, "StringDType"):
    OTHER_DTYPES.append("StringDType")
SPECIALS = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e200, "big": 1e4, "-big": -1e4,
            "denormal": 1e-310, "denormal32": 3e-40, "zero": 0.0}
LAYOUTS = ["C", "F", "strided", "big-stride", "negative", "offset", "unaligned", "broadcast", "readonly", "list"]


def _dtype(name):
    return np.dtypes.StringDType() if name == "StringDType" else np.dtype(name)


def _cast(values, dt):
    """float64 values as an array of dtype dt (values are small, except the specials)."""
    k = dt.kind
    if k == "b":
        return values > 0
    if k in "iu":
        v = np.nan_to_num(np.round(values), nan=0.0, posinf=100.0, neginf=-100.0).clip(-100, 100)
        return (np.abs(v) if k == "u" else v).astype(dt)
    if k == "f":
        with np.errstate(over="ignore"):
            return values.astype(dt)
    if k == "c":
        return (values + 0.5j).astype(dt)
    if k == "O":
        return values.astype(object)
    if k in "USTV" and dt.fields is None:
        if k == "V":
            return np.ascontiguousarray(values).view("V8")
        return values.astype(dt)
    if dt.fields:
        out = np.zeros(values.shape, dt)
        for name in dt.fields:
            out[name] = values
        return out
    # datetime64 / timedelta64
    return np.nan_to_num(values, nan=0, posinf=0, neginf=0).clip(-1e9, 1e9).astype(np.int64).astype(dt)


def _layout(a, layout, rng):
    """The same logical array in another memory layout (or a broadcast / list version of it)."""
    if layout == "C" or a.ndim == 0:
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout in ("strided", "big-stride"):
        steps = [int(rng.integers(2, 5)) for _ in range(a.ndim)]
        if layout == "big-stride":
            steps[int(rng.integers(a.ndim))] = 4099  # a stride of tens of kilobytes
        big = np.zeros(tuple(max(n, 1) * s for n, s in zip(a.shape, steps)), a.dtype)
        view = big[tuple(slice(None, n * s, s) for n, s in zip(a.shape, steps))]
        view[...] = a
        return view
    if layout == "negative":
        flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return flipped[(slice(None, None, -1),) * a.ndim]
    if layout == "offset":  # a C-contiguous view starting one element into a larger array
        buf = np.zeros(a.size + 3, a.dtype)
        view = buf[1:1 + a.size].reshape(a.shape)
        view[...] = a
        return view
    if layout == "unaligned" and a.dtype.itemsize > 1 and not a.dtype.hasobject:
        raw = bytearray(a.nbytes + 1)
        view = np.frombuffer(raw, a.dtype, count=a.size, offset=1).reshape(a.shape)
        view[...] = a
        return view
    if layout == "broadcast" and a.shape[0] > 0:  # zero stride: every row the same (read-only)
        return np.broadcast_to(a[:1], a.shape)
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "list" and a.dtype.kind in "biuf" and a.dtype.isnative and a.size:
        return a.tolist()
    return np.ascontiguousarray(a)


NONFINITE = ["nan", "inf", "-inf"]
BIG = ["big", "-big", "huge"]
SMALL = ["denormal", "denormal32", "zero"]


@st.composite
def arrays(draw, shape, faulty=False, nonfinite=False, scale=None, big=False):
    """An argument of logical `shape`: some dtype, some layout, small values with maybe one special value.

    faulty: may also be of a dtype that is not real numbers, or hold NaN / inf.
    nonfinite: may hold a NaN (for check_finite=False; with big, also +-inf) but nothing else that is wrong.
    big: may hold one +-1e4 or 1e200 (beyond float32: an error there). Only x is drawn with big=True: two big
    values in different arguments can cancel (1e4 * 1 - 1e4), and then the float32 rounding of the big ones is
    all that is left: a correct float32 result, but far outside any fixed tolerance of the float64 reference.
    Likewise +-inf with check_finite=False only in x, where it saturates the gates: inf in a weight or a state
    meets gate values that underflow to 0 in one precision and not in the other (0 * inf = NaN, 1e-45 * inf =
    inf), so NaN patterns would depend on precision and flushing, not on correctness. NaN propagates the same
    in every precision.
    """
    bad_type = faulty and draw(st.integers(0, 5)) == 0
    dtype = draw(st.sampled_from(OTHER_DTYPES if bad_type else REAL_DTYPES))
    if not bad_type and draw(st.integers(0, 2)) == 0:   # mostly the dtypes a service would pass
        dtype = draw(st.sampled_from(["f4", "f8"]))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])) if scale is None else scale
    special = None
    if draw(st.integers(0, 3)) == 0:
        pool = SMALL + (NONFINITE if faulty else ["nan"] + NONFINITE[1:] * big if nonfinite else [])
        pool += BIG if big else []
        special = draw(st.sampled_from(pool))
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * scale
    if special is not None and values.size:
        values.flat[int(rng.integers(values.size))] = SPECIALS[special]
    dt = _dtype(dtype)
    obj = _layout(_cast(values, dt), layout, rng)
    note(f"array {shape} dtype={dtype} layout={layout} special={special}")
    return obj


def flushes_subnormals(backend, *sizes):
    """Whether the kernel that runs reads and writes subnormal numbers as 0: the Cython kernels set FTZ / DAZ
    (kernels/fused_blas.pxd, "Denormals"); Numba and the reference keep them. Empty shapes run the reference."""
    return backend == "cython" and all(sizes)


def to_oracle(a, dtype, flush=False):
    """An argument already in the compute dtype, as float64 for the reference; with flush, as a kernel with DAZ reads
    it (subnormal numbers of the compute dtype are 0)."""
    if a is None:
        return None
    a = np.asarray(a, np.float64)
    return np.where(np.abs(a) < np.finfo(dtype).tiny, 0.0, a) if flush else a


def convert(obj, dtype, check_finite=True):
    """What the spec says an argument becomes: TypeError unless real numbers; ValueError if not finite in `dtype`
    (when checked); else the values in `dtype`."""
    arr = np.asarray(obj)
    if arr.dtype.kind not in "biuf":
        raise TypeError
    with np.errstate(over="ignore", invalid="ignore"):
        conv = arr.astype(dtype)
    if check_finite and not np.isfinite(conv).all():
        raise ValueError
    return np.ascontiguousarray(conv)


class Faults:
    """The problems an example was built with: (exception type, argument name) pairs."""

    def __init__(self):
        self.items = []

    def add(self, exc, name):
        self.items.append((exc, name))

    def convert(self, name, obj, dtype, check_finite=True):
        if obj is None:
            return None
        try:
            return convert(obj, dtype, check_finite)
        except (TypeError, ValueError) as exc:
            self.add(type(exc), name)
            return None

    def __bool__(self):
        return bool(self.items)


def snapshot(objs):
    return [(o, copy.deepcopy(o), o.flags.writeable if isinstance(o, np.ndarray) else None) for o in objs]


def assert_unmodified(snap):
    for obj, saved, writeable in snap:
        if isinstance(obj, np.ndarray):
            assert obj.dtype == saved.dtype and obj.shape == saved.shape
            if obj.dtype.kind in "OT":  # objects / variable-width strings: compare the elements
                assert list(obj.ravel()) == list(saved.ravel()), "an input was modified"
            else:
                assert obj.tobytes() == saved.tobytes(), "an input was modified"
            assert obj.flags.writeable == writeable
        else:
            assert obj == saved, "an input was modified"


def assert_no_alias(outputs, inputs):
    arrays_in = [a for a in inputs if isinstance(a, np.ndarray)]
    for out in outputs:
        for a in arrays_in:
            assert not np.may_share_memory(out, a), "an output shares memory with an input"


def call_and_classify(entry, faults, fn):
    """Run fn; with faults it must raise a ValueError/TypeError naming a faulty argument; returns the result."""
    if faults:
        with pytest.raises((ValueError, TypeError)) as info:
            fn()
        exc = info.value
        allowed = [(t, n) for t, n in faults.items if isinstance(exc, t)]
        assert allowed, f"{type(exc).__name__} for faults {faults.items}: {exc}"
        assert any(n in str(exc) for _, n in allowed), f"message names none of {allowed}: {exc}"
        OUTCOMES[entry][type(exc).__name__] += 1
        return None
    result = fn()
    OUTCOMES[entry]["ok"] += 1
    return result


def grad_slack(dtype, dy, *weights):
    """The rounding floor of a gradient: a gate derivative computed from a saturated gate value (1 - h^2,
    s (1 - s)) is off by a few ulps of 1 in absolute terms however small it is, and reaches a gradient through dy
    and the weights. 8 ulps times those scales."""
    mags = [np.max(np.abs(np.nan_to_num(np.asarray(a, np.float64), posinf=0, neginf=0)), initial=0)
            for a in weights if a is not None]
    dmax = 0 if dy is None else np.max(np.abs(np.nan_to_num(np.asarray(dy, np.float64), posinf=0, neginf=0)),
                                       initial=0)
    width = max([max(np.shape(a), default=1) for a in weights if a is not None] + [1])
    return 8 * np.finfo(dtype).eps * max(1.0, dmax) * max([1.0, *mags]) * width


def assert_matches(got, want, dtype, what, peer=None, slack=None):
    """got (compute dtype) against the float64 reference `want`: the same NaN / inf, finite values within TOL.

    peer: the reference computed in the compute dtype itself. float32 cannot always get within TOL: a saturated
    gate's derivative s (1 - s) is exactly 0 in float32 (s rounds to 1) but 1e-8 in float64, and a gradient made
    of such terms differs by ~1e-6 from a maximum that is itself small. Then got must be as close to the float64
    reference as float32 arithmetic (the peer) gets, within a factor 4 plus `slack` (grad_slack: the peer can be
    lucky) or TOL's absolute tolerance."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN where the reference has none, or not"
    assert np.array_equal(np.isposinf(got), np.isposinf(want)) and np.array_equal(np.isneginf(got),
                                                                                   np.isneginf(want)), what
    fin = np.isfinite(want)
    if not fin.any():
        return
    rtol, atol = TOL[np.dtype(dtype)]
    g, w = got[fin].astype(np.float64), want[fin]
    err = np.max(np.abs(g - w))
    if rel_err(g, w) < rtol or err < atol:
        return
    assert peer is not None, f"{what}: rel err {rel_err(g, w):.3g}"
    p = np.asarray(peer)[fin].astype(np.float64)
    peer_err = np.max(np.abs(np.where(np.isfinite(p), p, np.inf) - w))
    floor = atol if slack is None else max(atol, slack)
    assert err <= 4 * peer_err + floor, (f"{what}: rel err {rel_err(g, w):.3g}, abs {err:.3g}; the reference in "
                                         f"{np.dtype(dtype).name}: abs {peer_err:.3g}; floor {floor:.3g}")


# ---------------------------------------------------------------------------------------------------------------
# Shapes, options, lengths
# ---------------------------------------------------------------------------------------------------------------

CELL_OPTIONS = [("simple_rnn", dict(activation="tanh")), ("simple_rnn", dict(activation="relu")),
                ("lstm", {}), ("gru", dict(reset_after=True)), ("gru", dict(reset_after=False))]


@st.composite
def dims(draw, min_features=0):
    return (draw(st.sampled_from([0, 1, 2, 3, 4])), draw(st.sampled_from([0, 1, 2, 3, 5, 6])),
            draw(st.integers(min_features, 4)), draw(st.integers(1, 5)))


@st.composite
def lengths_arg(draw, B, T, faults, faulty, name="lengths"):
    """None, or per-row lengths as a list or an array of any integer dtype; if faulty maybe out of range / wrong."""
    kinds = ["none", "list", "array", "array"] + (["bad-range", "bad-dtype", "bad-shape"] if faulty else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    vals = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    if kind == "bad-range":
        if B == 0:
            return []
        k = draw(st.integers(0, B - 1))
        vals[k] = draw(st.sampled_from([-1, -(2**40), T + 1, T + 1000, 2**62]))
        faults.add(ValueError, name)
        return np.array(vals, np.int64)
    if kind == "bad-dtype":
        arr = np.array(vals, draw(st.sampled_from(["f8", "f4", "?", "O", "c8"])))
        if arr.size or arr.dtype.kind != "f":  # an empty float array is what [] converts to: accepted
            faults.add(TypeError, name)
        return arr
    if kind == "bad-shape":
        faults.add(ValueError, name)
        return np.array(vals + [0], np.int64) if draw(st.booleans()) else np.array([vals], np.int64)
    if kind == "list":
        return vals
    dt = draw(st.sampled_from(["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", ">i8"]))
    arr = np.array(vals, dt)
    return _layout(arr, draw(st.sampled_from(["C", "strided", "negative", "readonly", "unaligned"])),
                   np.random.default_rng(0))


def poison_padding(a, lengths, value):
    """A float copy of `a` (B, T, ...) with `value` at every padded position t >= lengths[b]."""
    a = np.array(a, dtype=np.asarray(a).dtype if np.asarray(a).dtype.kind == "f" else np.float64)
    for b, L in enumerate(np.asarray(lengths)):
        a[b, L:] = value
    return a


def maybe_bad_shape(draw, shape, faults, name, axes=None, faulty=True):
    """Usually `shape`; sometimes one dimension (one of `axes`, default any) off by one or an extra axis: a
    ValueError naming `name`. (Batch and timesteps of x are left alone: other arguments are checked against them,
    so that error would name those.)"""
    if not faulty or draw(st.integers(0, 5)):
        return shape
    faults.add(ValueError, name)
    axes = range(len(shape)) if axes is None else axes
    if draw(st.booleans()) or not axes:
        return shape + (1,) * (2 if len(shape) == 1 else 1)  # (D,) + (1,) would be a valid (batch=D, 1)
    k = draw(st.sampled_from(list(axes)))
    return shape[:k] + (shape[k] + 1,) + shape[k + 1:]


# ---------------------------------------------------------------------------------------------------------------
# ops.rnn_forward / ops.rnn_backward
# ---------------------------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_fuzz_rnn_forward_and_backward(data):
    draw = data.draw
    cell, options = draw(st.sampled_from(CELL_OPTIONS), "cell")
    B, T, D, U = draw(dims(), "B, T, D, U")
    backend = draw(st.sampled_from(BACKENDS), "backend")
    reverse = draw(st.booleans(), "reverse")
    training = draw(st.booleans(), "training")
    check_finite = draw(st.sampled_from([True, True, False]), "check_finite")
    faulty = draw(st.integers(0, 2), "faulty") == 0
    G = GATES[cell]
    faults = Faults()

    shape = lambda s, name, axes=None: maybe_bad_shape(draw, s, faults, name, axes, faulty)  # noqa: E731
    arr = lambda s: arrays(s, faulty, not check_finite)  # noqa: E731
    W = draw(arr(shape((D, G * U), "kernel")), "W")
    R = draw(arr(shape((U, G * U), "recurrent_kernel")), "R")
    use_bias = draw(st.booleans(), "use_bias")
    b_shape = (2, 3 * U) if cell == "gru" and options["reset_after"] else (G * U,)
    b = draw(arr(shape(b_shape, "bias")), "b") if use_bias else None
    # (x's features vs the kernel: covered by a wrong kernel shape; changing both could make them agree again)
    x = draw(arrays(shape((B, T, D), "x", axes=()), faulty, not check_finite, big=True), "x")
    kd = W.dtype.newbyteorder("=") if isinstance(W, np.ndarray) and W.dtype.kind == "f" else None
    dtype = kd if kd is not None and kd in (F32, F64) else F32  # ops: the kernel's dtype if float32/64, else float32
    if draw(st.integers(0, 4)) == 0:
        dtype = draw(st.sampled_from([F32, F64]), "dtype")
        explicit_dtype = dtype
    else:
        explicit_dtype = None
    kinds = ["none", "list", "one"] if n_states(cell) == 1 else ["none", "list"]
    states_kind = draw(st.sampled_from(kinds + (["wrong-count"] if faulty else [])), "states")
    if states_kind == "none":
        states = None
    elif states_kind == "wrong-count":
        states = [draw(arr((B, U)), "h0")] * (n_states(cell) % 2 + 1)
        faults.add(ValueError, "initial_state")
    else:
        states = [draw(arr(shape((B, U), "initial_state")), f"s{k}") for k in range(n_states(cell))]
        if cell == "lstm" and draw(st.integers(0, 4)) == 0:
            states[1] = states[0]  # one array passed as both h0 and c0
        if states_kind == "one":  # h0 itself, not in a list (then it must be an array: a list is a list of states)
            states = np.asarray(states[0]) if isinstance(states[0], list) else states[0]
    lengths = draw(lengths_arg(B, T, faults, faulty), "lengths")
    if (not check_finite and not faults and lengths is not None and np.asarray(x).dtype.kind in "biuf"
            and draw(st.booleans(), "poison padding")):
        # NaN / inf at padded positions: the contract says they never reach any result
        x = poison_padding(x, lengths, draw(st.sampled_from([np.nan, np.inf, -np.inf])))

    conv = {name: faults.convert(name, obj, dtype, check_finite) for name, obj in
            (("x", x), ("kernel", W), ("recurrent_kernel", R), ("bias", b))}
    st_list = None if states is None else (states if isinstance(states, list) else [states])
    conv_states = [faults.convert("initial_state", s, dtype, check_finite) for s in st_list or []]

    inputs = [x, W, R, b, lengths] + (st_list or [])
    snap = snapshot(inputs)
    weights = [W, R] + ([b] if use_bias else [])
    out = call_and_classify("rnn_forward", faults, lambda: ops.rnn_forward(
        cell, x, weights, states, lengths, reverse=reverse, training=training, backend=backend,
        dtype=explicit_dtype, check_finite=check_finite, **options))
    assert_unmodified(snap)
    if out is None:
        return

    lens = None if lengths is None else np.asarray(lengths).astype(np.int64)
    flush = flushes_subnormals(out.backend, B, T, D)
    c64 = lambda a: to_oracle(a, dtype, flush)  # noqa: E731
    refs = [ops.rnn_forward(cell, cv(conv["x"]), [cv(conv[k]) for k in ("kernel", "recurrent_kernel", "bias")
                                                  if conv[k] is not None],
                            [cv(s) for s in conv_states] or None, lens, reverse=reverse, training=True,
                            backend="numpy", dtype=dt, check_finite=False, **options)
            for dt, cv in ((np.float64, c64), (dtype, lambda a: None if a is None else c64(a).astype(dtype)))]
    ref, peer = refs  # the reference in float64 (the oracle) and in the compute dtype (see assert_matches)
    if backend == "auto" and B and T and D and COMPILED:
        assert out.backend == ("cython" if "cython" in COMPILED else COMPILED[0])  # ops.COMPILED_PREFERENCE
    assert_matches(out.outputs, ref.outputs, dtype, "outputs", peer.outputs)
    for k, (got, want, p) in enumerate(zip(out.states, ref.states, peer.states)):
        assert_matches(got, want, dtype, f"final state {k}", p)
    assert_no_alias([out.outputs, *out.states], inputs)
    if not training:
        assert out.tape is None
        return

    # backward, with its own fuzzed gradients
    bfaults = Faults()
    bcheck = draw(st.sampled_from([True, True, False]), "backward check_finite")
    bfaulty = draw(st.integers(0, 2), "backward faulty") == 0
    bshape = lambda s, name: maybe_bad_shape(draw, s, bfaults, name, None, bfaulty)  # noqa: E731
    barr = lambda s: arrays(s, bfaulty, not bcheck)  # noqa: E731
    dy = draw(barr(bshape((B, T, U), "d_outputs")), "dy") if draw(st.integers(0, 4)) else None
    ds = None
    if draw(st.booleans()):
        ds = [draw(barr(bshape((B, U), "d_states")), f"d_states[{k}]") if draw(st.integers(0, 3)) else None
              for k in range(n_states(cell))]
    if (not bcheck and dy is not None and not bfaults and lengths is not None
            and np.asarray(dy).dtype.kind in "biuf" and draw(st.booleans())):
        dy = poison_padding(dy, lengths, np.nan)
    cdy = bfaults.convert("d_outputs", dy, dtype, bcheck)
    cds = [bfaults.convert("d_states", g, dtype, bcheck) for g in ds or []]
    bsnap = snapshot([dy, *(ds or [])])
    grads = call_and_classify("rnn_backward", bfaults, lambda: ops.rnn_backward(out, dy, ds, check_finite=bcheck))
    assert_unmodified(bsnap)
    assert_unmodified(snap)
    if grads is None:
        return
    want = ops.rnn_backward(ref, c64(cdy), None if ds is None else [c64(g) for g in cds], check_finite=False)
    cdt = lambda a: None if a is None else c64(a).astype(dtype)  # noqa: E731
    pw = ops.rnn_backward(peer, cdt(cdy), None if ds is None else [cdt(g) for g in cds], check_finite=False)
    slack = grad_slack(dtype, cdy, conv["kernel"], conv["recurrent_kernel"], *(cds or []))
    assert_matches(grads.dx, want.dx, dtype, "dx", pw.dx, slack)
    for k, (got, w, p) in enumerate(zip(grads.d_initial_states, want.d_initial_states, pw.d_initial_states)):
        assert_matches(got, w, dtype, f"d_initial_state {k}", p, slack)
    assert len(grads.d_weights) == len(weights)
    for name, got, w, p in zip(("dW", "dR", "db"), grads.d_weights, want.d_weights, pw.d_weights):
        assert_matches(got, w, dtype, name, p, slack)
    assert_no_alias([grads.dx, *grads.d_initial_states, *grads.d_weights], inputs + [dy, *(ds or [])])


# ---------------------------------------------------------------------------------------------------------------
# Recurrent layers and Bidirectional
# ---------------------------------------------------------------------------------------------------------------

LAYERS = {"simple_rnn": fastrnn.SimpleRNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def make_layer(cell, options, units, dtype, backend, flags, bidirectional, merge_mode):
    layer = LAYERS[cell](units, dtype=dtype, backend=backend, seed=0, **options, **flags)
    return fastrnn.Bidirectional(layer, merge_mode=merge_mode) if bidirectional else layer


@st.composite
def mask_arg(draw, B, T, faults, faulty):
    bad = ["not-padded", "float", "bad-shape"] if faulty else []
    kind = draw(st.sampled_from(["bool", "int", "bool-list"] + bad))
    lens = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int64)
    mask = np.arange(T)[None, :] < lens[:, None]
    if kind == "not-padded":
        if B and T > 1:
            mask = mask.copy()
            mask[0] = ~mask[0]
            if not np.array_equal(mask[0], np.arange(T) < mask[0].sum()):
                faults.add(ValueError, "mask")
        return mask
    if kind == "float":
        faults.add(TypeError, "mask")
        return mask.astype(np.float32)
    if kind == "bad-shape":
        faults.add(ValueError, "mask")
        return np.ones((B, T + 1), bool)
    if kind == "int":
        return mask.astype(draw(st.sampled_from(["i1", "u1", "i8"])))
    if kind == "bool-list" and mask.size:  # (an empty nested list has lost its dtype and shape)
        return mask.tolist()
    return _layout(mask, draw(st.sampled_from(["C", "F", "strided", "negative"])), np.random.default_rng(0))


@FUZZ
@given(data=st.data())
def test_fuzz_recurrent_layers(data):
    draw = data.draw
    cell, options = draw(st.sampled_from(CELL_OPTIONS), "cell")
    options = dict(options)
    if "activation" in options and options["activation"] == "tanh":
        options = {}
    B, T, D, U = draw(dims(min_features=1), "B, T, D, U")
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"]), "dtype"))
    backend = draw(st.sampled_from(BACKENDS), "backend")
    flags = dict(return_sequences=draw(st.booleans()), return_state=draw(st.booleans()),
                 go_backwards=draw(st.booleans()), zero_output_for_mask=draw(st.booleans()),
                 use_bias=draw(st.booleans()))
    bidirectional = draw(st.integers(0, 4)) == 0
    merge_mode = draw(st.sampled_from(["concat", "sum", "mul", "ave", None])) if bidirectional else None
    if bidirectional:
        flags["go_backwards"] = False
    training = draw(st.booleans(), "training")
    faulty = draw(st.integers(0, 2), "faulty") == 0
    note(f"{cell} {options} {flags} bidirectional={bidirectional} merge_mode={merge_mode}")
    faults = Faults()
    layer = make_layer(cell, options, U, dtype, backend, flags, bidirectional, merge_mode)
    ref_layer = make_layer(cell, options, U, F64, "numpy", flags, bidirectional, merge_mode)

    # weights: fuzzed values (maybe NaN / inf), set through set_weights
    G = GATES[cell]
    halves = 2 if bidirectional else 1
    b_shape = (2, 3 * U) if cell == "gru" and options.get("reset_after", True) else (G * U,)
    shapes = ([(D, G * U), (U, G * U)] + ([b_shape] if flags["use_bias"] else [])) * halves
    names = ["kernel", "recurrent_kernel", "bias"][:len(shapes) // halves] * halves
    # (their dtype and shape are set_weights' business, tested in test_layers; here: values, NaN / inf included)
    weights = [draw(arrays(s, faulty and draw(st.integers(0, 3)) == 0, scale=0.5).filter(
        lambda w: np.asarray(w).dtype.kind in "biuf"), f"weight {s}") for s in shapes]
    conv_w = [faults.convert(n, w, dtype) for n, w in zip(names, weights)]
    layer.set_weights(weights)  # not checked for finiteness here: the call is

    x = draw(arrays(maybe_bad_shape(draw, (B, T, D), faults, "x", (2,), faulty), faulty, big=True), "x")
    cx = faults.convert("x", x, dtype)
    n = n_states(cell) * halves
    initial_state = None
    if draw(st.booleans()):
        initial_state = [draw(arrays(maybe_bad_shape(draw, (B, U), faults, "initial_state", None, faulty),
                                     faulty), f"s{k}") for k in range(n)]
        cstates = [faults.convert("initial_state", s, dtype) for s in initial_state]
    mask = lengths = None
    how = draw(st.sampled_from(["none", "mask", "lengths"]))
    if how == "mask":
        mask = draw(mask_arg(B, T, faults, faulty), "mask")
    elif how == "lengths":
        lengths = draw(lengths_arg(B, T, faults, faulty), "lengths")

    inputs = [x, mask, lengths, *weights, *(initial_state or [])]
    snap = snapshot(inputs)
    out = call_and_classify("layers", faults, lambda: layer(x, initial_state=initial_state, mask=mask,
                                                            lengths=lengths, training=training))
    assert_unmodified(snap)
    if out is None:
        return
    flush = flushes_subnormals(layer.backend_used, B, T)
    peer_layer = make_layer(cell, options, U, dtype, "numpy", flags, bidirectional, merge_mode)
    rmask = None if mask is None else np.asarray(mask)
    rlens = None if lengths is None else np.asarray(lengths).astype(np.int64)
    results = []
    for lyr, dt in ((ref_layer, np.float64), (peer_layer, dtype)):  # the oracle, and the peer (assert_matches)
        cv = lambda a: to_oracle(a, dtype, flush).astype(dt)  # noqa: E731
        lyr.set_weights([cv(c) for c in conv_w])
        rstate = None if initial_state is None else [cv(c) for c in cstates]
        results.append(lyr(cv(cx), initial_state=rstate, mask=rmask, lengths=rlens, training=training))
    want, peer = results
    outs, wants, peers = (out, want, peer) if isinstance(out, list) else ([out], [want], [peer])
    assert len(outs) == len(wants)
    for k, (o, w, p) in enumerate(zip(outs, wants, peers)):
        assert_matches(o, w, dtype, f"output {k}", p)
    assert_no_alias(outs, inputs + layer.weights)
    if not training or B == 0:
        return
    # backward with the output's gradient (all ones keeps every path alive)
    ones = lambda o: [np.ones_like(a) for a in o] if len(o) > 1 else np.ones_like(o[0])  # noqa: E731
    dx = layer.backward(ones(outs))
    dxw = ref_layer.backward(ones(wants))
    dxp = peer_layer.backward(ones(peers))
    slack = grad_slack(dtype, 1.0, *conv_w)
    assert_matches(dx, dxw, dtype, "dx", dxp, slack)
    for k, (g, w, p) in enumerate(zip(layer.grads, ref_layer.grads, peer_layer.grads)):
        assert_matches(g, w, dtype, f"grad {k}", p, slack)
    OUTCOMES["layers backward"]["ok"] += 1
    assert_unmodified(snap)


# ---------------------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------------------

CELLS = {"simple_rnn": fastrnn.RNNCell, "lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell}


@FUZZ
@given(data=st.data())
def test_fuzz_cells(data):
    draw = data.draw
    cell = draw(st.sampled_from(sorted(CELLS)), "cell")
    B, _, D, U = draw(dims(min_features=1), "B, _, D, U")
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"]), "dtype"))
    backend = draw(st.sampled_from(BACKENDS), "backend")
    kwargs = {}
    if cell == "simple_rnn":
        kwargs["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    bias = draw(st.booleans(), "bias")
    c = CELLS[cell](D, U, bias=bias, dtype=dtype, backend=backend, seed=0, **kwargs)
    faults = Faults()
    faulty = draw(st.integers(0, 2), "faulty") == 0
    # weights through set_weights: a bad one is rejected there, and the cell keeps working with its old ones
    new = [draw(arrays(w.shape, faulty and draw(st.integers(0, 3)) == 0, scale=0.5), f"weight {w.shape}")
           for w in c.get_weights()]
    wfaults = Faults()
    conv_w = [wfaults.convert(n, w, dtype) for n, w in zip(["kernel", "recurrent_kernel", "bias"], new)]
    wsnap = snapshot(new)
    call_and_classify("cells set_weights", wfaults, lambda: c.set_weights(new))
    assert_unmodified(wsnap)
    weights = c.get_weights()
    if not wfaults:
        for got, want in zip(weights, conv_w):
            np.testing.assert_array_equal(got, want)

    unbatched = draw(st.integers(0, 3)) == 0
    xshape = (D,) if unbatched else (B, D)
    x = draw(arrays(maybe_bad_shape(draw, xshape, faults, "x", (len(xshape) - 1,), faulty), faulty, big=True), "x")
    cx = faults.convert("x", x, dtype)
    sshape = (U,) if unbatched else (B, U)
    if draw(st.booleans()):
        state = None
        cstates = None
    elif cell == "lstm":
        kind = draw(st.sampled_from(["pair", "pair", "same"] + (["single", "triple"] if faulty else [])))
        if kind in ("single", "triple"):
            state = [draw(arrays(sshape), "state")] * (1 if kind == "single" else 3)
            state = state[0] if kind == "single" else tuple(state)
            faults.add(ValueError, "state")
            cstates = None
        else:
            h = draw(arrays(maybe_bad_shape(draw, sshape, faults, "state", None, faulty), faulty), "h")
            cc = h if kind == "same" else draw(arrays(maybe_bad_shape(draw, sshape, faults, "state", None, faulty),
                                                      faulty), "c")
            state = (h, cc)
            cstates = [faults.convert("state", s, dtype) for s in state]
    else:
        state = draw(arrays(maybe_bad_shape(draw, sshape, faults, "state", None, faulty), faulty), "state")
        cstates = [faults.convert("state", state, dtype)]

    inputs = [x, *(state if isinstance(state, tuple) else [state])]
    snap = snapshot(inputs + weights)
    out = call_and_classify("cells", faults, lambda: c(x, state))
    assert_unmodified(snap)
    for live, w in zip(c.get_weights(), weights):
        np.testing.assert_array_equal(live, w)
    if out is None:
        return
    outs = list(out) if isinstance(out, tuple) else [out]
    flush = flushes_subnormals(c.backend_used, cx.size)
    xb = to_oracle(cx, dtype, flush).reshape(-1, D)
    Bn = xb.shape[0]
    rs = None if cstates is None else [to_oracle(s, dtype, flush).reshape(Bn, U) for s in cstates]
    ref, peer = (ops.rnn_forward(cell, xb[:, None, :].astype(dt), [to_oracle(w, dtype, flush).astype(dt)
                                                                  for w in weights],
                                 None if rs is None else [s.astype(dt) for s in rs], backend="numpy", dtype=dt,
                                 activation=kwargs.get("nonlinearity", "tanh"), check_finite=False)
                 for dt in (np.float64, dtype))
    assert len(outs) == n_states(cell)
    for k, (o, w, p) in enumerate(zip(outs, ref.states, peer.states)):
        assert_matches(o, w.reshape(sshape), dtype, f"state {k}", p.reshape(sshape))
    assert_no_alias(outs, inputs + c.weights)


# ---------------------------------------------------------------------------------------------------------------
# Adapters (each skipped when its framework is not installed): the framework itself is the oracle
# ---------------------------------------------------------------------------------------------------------------

ADAPTER_EXAMPLES = max(EXAMPLES // 5, 20)
FUZZ_ADAPTERS = settings(FUZZ, max_examples=ADAPTER_EXAMPLES)


def _values(draw, shape, faulty, big=False):
    """float64 values of `shape` (small, maybe one special; +-1e4 only with big: see arrays()): a tensor's."""
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).standard_normal(shape) * draw(st.sampled_from([0.1, 0.5, 1.0, 2.0]))
    pool = SMALL + (BIG[:2] if big else []) + (NONFINITE if faulty else [])
    if values.size and draw(st.integers(0, 3)) == 0:
        special = draw(st.sampled_from(pool))
        values.flat[draw(st.integers(0, values.size - 1))] = SPECIALS[special]
        note(f"special {special}")
    return values


def _tensor(draw, torch, values, dtype, faulty, faults, name):
    """values as a tensor of `dtype` (faulty: maybe another dtype) in some memory layout."""
    if faulty and draw(st.integers(0, 4)) == 0:
        dtype = draw(st.sampled_from([torch.float16, torch.int64, torch.bool, torch.complex64, torch.bfloat16]))
        faults.add(TypeError, name)
    t = torch.tensor(values).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]))
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "strided" and t.dim() >= 1:
        big = torch.zeros((t.shape[0] * 3,) + tuple(t.shape[1:]), dtype=t.dtype)
        big[::3] = t
        t = big[::3]
    elif layout == "expanded" and t.dim() >= 1 and t.shape[0] > 0:
        t = t[:1].expand(t.shape)
    note(f"{name}: {tuple(t.shape)} {t.dtype} {layout}")
    if t.is_floating_point() and not torch.isfinite(t).all():  # (after the layout: a broadcast may drop the NaN)
        faults.add(ValueError, name)
    return t


@FUZZ_ADAPTERS
@given(data=st.data())
def test_fuzz_torch_modules(data):
    """fastrnn.torch RNN / LSTM / GRU against torch.nn with the same state_dict: outputs, final states and
    gradients; bad dtypes, shapes and NaN / inf rejected with a ValueError / TypeError naming the tensor."""
    torch = pytest.importorskip("torch")
    frt = pytest.importorskip("fastrnn.torch")
    draw = data.draw
    mode = draw(st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]), "mode")
    D, H = draw(st.integers(1, 4), "input_size"), draw(st.integers(1, 5), "hidden_size")
    kw = dict(num_layers=draw(st.integers(1, 2)), bias=draw(st.booleans()), batch_first=draw(st.booleans()),
              bidirectional=draw(st.booleans()))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    backend = draw(st.sampled_from(BACKENDS), "backend")
    faulty = draw(st.integers(0, 2), "faulty") == 0
    note(f"{mode} D={D} H={H} {kw}")
    torch.manual_seed(draw(st.integers(0, 1000)))
    if mode.startswith("RNN"):
        nl = "tanh" if mode == "RNN_TANH" else "relu"
        ref, mod = torch.nn.RNN(D, H, nonlinearity=nl, **kw), frt.RNN(D, H, nonlinearity=nl, backend=backend, **kw)
    else:
        ref, mod = getattr(torch.nn, mode)(D, H, **kw), getattr(frt, mode)(D, H, backend=backend, **kw)
    ref, mod = ref.to(dtype), mod.to(dtype)
    mod.load_state_dict(ref.state_dict())

    faults = Faults()
    B, T = draw(st.sampled_from([0, 1, 2, 3])), draw(st.sampled_from([0, 1, 2, 5]))
    unbatched = draw(st.integers(0, 4)) == 0
    shape = (T, D) if unbatched else ((B, T, D) if kw["batch_first"] else (T, B, D))
    if faulty and draw(st.integers(0, 5)) == 0:
        shape = shape[:-1] + (D + 1,)
        faults.add(ValueError, "input")
    x = _tensor(draw, torch, _values(draw, shape, faulty, big=True), dtype, faulty, faults, "input")
    LD = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    hx = None
    if draw(st.booleans()):
        hshape = (LD, H) if unbatched else (LD, B, H)
        names = ["h_0", "c_0"] if mode == "LSTM" else ["hx"]
        hs = []
        for name in names:
            hs.append(_tensor(draw, torch, _values(draw, hshape, faulty), dtype, faulty, faults, name))
        hx = tuple(hs) if mode == "LSTM" else hs[0]
    grad = not faults and draw(st.booleans(), "grad")
    if grad:
        x = x.detach().clone().requires_grad_(True)
    inputs = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    saved = [t.detach().clone() for t in inputs]

    out = call_and_classify("torch modules", faults, lambda: mod(x, hx))
    for t, s in zip(inputs, saved):
        t = t.detach()
        same = (torch.allclose(t, s, rtol=0, atol=0, equal_nan=True) if t.is_floating_point() or t.is_complex()
                else torch.equal(t, s))
        assert same, "an input was modified"
    if out is None:
        return
    # the oracle's inputs: as the kernel that ran reads them (Cython: subnormal numbers are 0)
    np_dtype = np.dtype(str(dtype).replace("torch.", ""))
    flush = flushes_subnormals(mod.backend_used, x.numel())
    oracle = lambda t: torch.from_numpy(to_oracle(t.detach().numpy(), np_dtype, flush)).to(dtype)  # noqa: E731
    xr = oracle(x).requires_grad_(grad)
    hxr = None if hx is None else tuple(map(oracle, hx)) if isinstance(hx, tuple) else oracle(hx)
    ref64 = copy.deepcopy(ref).double()  # the oracle; torch.nn in the module's dtype is the peer
    x64 = xr.detach().double().requires_grad_(grad)
    hx64 = None if hxr is None else tuple(h.double() for h in hxr) if isinstance(hxr, tuple) else hxr.double()
    try:
        want = ref(xr, hxr)
    except RuntimeError:  # torch.nn refuses zero-length sequences: fastrnn returns them empty, with h_n = h_0
        assert T == 0
        y, hn = out
        assert y.numel() == 0
        for got, h0 in zip(hn if isinstance(hn, tuple) else (hn,),
                           hx if isinstance(hx, tuple) else (hx,) if hx is not None else (None,) * 2):
            np.testing.assert_array_equal(got.detach().numpy(), 0 if h0 is None else h0.detach().numpy())
        return
    want64 = ref64(x64, hx64)
    flat = lambda o: [o[0], *(o[1] if isinstance(o[1], tuple) else (o[1],))]  # noqa: E731
    npy = lambda t: t.detach().numpy()  # noqa: E731
    flat_got, flat_peer, flat_want = flat(out), flat(want), flat(want64)
    for k, (g, p, w) in enumerate(zip(flat_got, flat_peer, flat_want)):
        assert tuple(g.shape) == tuple(w.shape)
        assert_matches(npy(g), npy(w), np_dtype, f"torch output {k}", npy(p))
    if grad and x.numel():
        gx = torch.autograd.grad(sum(t.sum() for t in flat_got), [x, *mod.parameters()])
        px = torch.autograd.grad(sum(t.sum() for t in flat_peer), [xr, *ref.parameters()])
        wx = torch.autograd.grad(sum(t.sum() for t in flat_want), [x64, *ref64.parameters()])
        for k, (g, p, w) in enumerate(zip(gx, px, wx)):
            slack = grad_slack(np_dtype, 1.0, *(npy(q) for q in ref.parameters()))
            assert_matches(g.numpy(), w.numpy(), np_dtype, f"torch gradient {k}", p.numpy(), slack)


_ONNX_CACHE = {}


@FUZZ_ADAPTERS
@given(data=st.data())
def test_fuzz_onnx_models(data):
    """A fastrnn layer exported to ONNX, loaded back with fastrnn.onnx and run on fuzzed inputs, against
    onnxruntime on the same graph and the same (converted) inputs. Like onnxruntime, NaN / inf propagate."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fonnx = pytest.importorskip("fastrnn.onnx")
    draw = data.draw
    cell, options = draw(st.sampled_from(CELL_OPTIONS), "cell")
    options = {} if options.get("activation") == "tanh" else dict(options)
    D, U = draw(st.integers(1, 4), "D"), draw(st.integers(1, 5), "U")
    dtype = draw(st.sampled_from(["float32", "float64"]), "dtype")
    flags = dict(return_sequences=draw(st.booleans()), go_backwards=draw(st.booleans()))
    bidirectional = draw(st.integers(0, 3)) == 0
    backend = draw(st.sampled_from(BACKENDS), "backend")
    key = (cell, tuple(sorted(options.items())), D, U, dtype, tuple(flags.items()), bidirectional, backend)
    if key not in _ONNX_CACHE:
        layer = LAYERS[cell](U, dtype=dtype, seed=1, **options, **flags)
        if bidirectional:
            layer = fastrnn.Bidirectional(layer)
        proto = fonnx.export(layer, input_shape=(None, D))
        reference_model = fonnx.load(proto, backend="numpy")
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = None
        if dtype == "float32":  # onnxruntime's RNN / GRU / LSTM have no double kernels: the layer is the oracle
            session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        layer.backend = "numpy"
        _ONNX_CACHE[key] = (fonnx.load(proto, backend=backend), session, layer, reference_model)
    model, session, layer, reference_model = _ONNX_CACHE[key]
    faulty = draw(st.integers(0, 2), "faulty") == 0
    faults = Faults()
    B, T = draw(st.sampled_from([0, 1, 2, 3])), draw(st.sampled_from([0, 1, 2, 5]))
    x = draw(arrays(maybe_bad_shape(draw, (B, T, D), faults, "input", (2,), faulty), faulty, True, big=True), "x")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        faults.add(TypeError, "input")
    snap = snapshot([x])
    name = model.input_names[0]
    out = call_and_classify("onnx models", faults, lambda: model.run(None, {name: x}))
    assert_unmodified(snap)
    if out is None:
        return
    with np.errstate(all="ignore"):
        xc = arr.astype(dtype)
    if not np.isfinite(xc).all():
        # onnxruntime does not propagate NaN (its RNN Relu gives 0, its LSTM / GRU gates saturate), fastrnn does,
        # as the layer API would with check_finite=False: the oracle is the same graph on the NumPy reference.
        want = reference_model.run(None, {name: xc})
    elif session is None or xc.size == 0:
        # (onnxruntime aborts the process on some empty inputs: not fed any)
        want = layer(xc)
        want = want if isinstance(want, list) else [want]
    else:
        want = session.run(None, {name: xc})
    assert len(out) == len(want)
    for k, (g, w) in enumerate(zip(out, want)):
        assert_matches(g, np.asarray(w, np.float64), np.dtype(dtype), f"onnx output {k}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own, about numpy 2's __array__(copy=)
@FUZZ_ADAPTERS
@given(data=st.data())
def test_fuzz_keras_layers(data):
    """A Keras 3 layer converted with fastrnn.interop.keras.from_keras, on fuzzed inputs, against the Keras layer
    on the same (converted) inputs. Unlike Keras, fastrnn rejects NaN / inf (a ValueError naming x)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from fastrnn.interop.keras import from_keras
    draw = data.draw
    cell = draw(st.sampled_from(["SimpleRNN", "LSTM", "GRU"]), "cell")
    D, U = draw(st.integers(1, 4), "D"), draw(st.integers(1, 5), "U")
    kw = dict(return_sequences=draw(st.booleans()), return_state=draw(st.booleans()),
              go_backwards=draw(st.booleans()), use_bias=draw(st.booleans()))
    if cell == "GRU":
        kw["reset_after"] = draw(st.booleans())
    if cell == "SimpleRNN":
        kw["activation"] = draw(st.sampled_from(["tanh", "relu"]))
    kl = getattr(keras.layers, cell)(U, **kw)
    kl.build((None, None, D))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    kl.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in kl.get_weights()])
    fl = from_keras(kl)
    fl.backend = draw(st.sampled_from(BACKENDS), "backend")
    faulty = draw(st.integers(0, 2), "faulty") == 0
    faults = Faults()
    B, T = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 5]))
    x = draw(arrays(maybe_bad_shape(draw, (B, T, D), faults, "x", (2,), faulty), faulty, big=True), "x")
    xc = faults.convert("x", x, np.float32)
    snap = snapshot([x])
    out = call_and_classify("keras layers", faults, lambda: fl(x))
    assert_unmodified(snap)
    if out is None:
        return
    want = kl(xc)
    outs = out if isinstance(out, list) else [out]
    wants = want if isinstance(want, (list, tuple)) else [want]
    assert len(outs) == len(wants)
    for k, (g, w) in enumerate(zip(outs, wants)):
        assert_matches(g, np.asarray(keras.ops.convert_to_numpy(w), np.float64), F32, f"keras output {k}")
