"""Argument checks shared by ops and layers.

Every public entry point runs these before any compiled code: a bad argument becomes a ValueError or TypeError
that names the argument, what it got and what it needs (DESIGN.md, "Bad input").
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# numpy kinds that convert to float without losing meaning: bool, signed, unsigned, float
_NUMERIC_KINDS = "biuf"


def float_dtype(dtype, name="dtype"):
    """The compute dtype: float32 or float64 (names, numpy dtypes and types accepted; None means float32)."""
    if dtype is None:
        return np.dtype(np.float32)  # Keras: dtype=None is the float32 policy (np.dtype(None) would be float64)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64; got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64; got {dt}")
    return dt


def as_array(name, value, dtype, check_finite=True, finite_hint=""):
    """`value` as a C-contiguous array of `dtype`; never a view that a kernel could write through to the caller.

    finite_hint: appended to the NaN/inf error, for callers that offer a way around the check (ops: check_finite).

    Kernels never write to their inputs, so an input that already has the right dtype and layout is passed on
    without a copy.
    """
    if type(value) is np.ndarray and value.dtype == dtype and (flags := value.flags).c_contiguous and flags.aligned:
        # What a kernel takes already (the common case, and every call of a step loop): nothing to convert, so
        # no conversion and no floating-point error state to set up (~1 us of a 10 us call).
        converted = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be a numeric array; could not convert {type(value).__name__}: {exc}") \
                from None
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"{name} must be a real numeric array (bool, int or float); got dtype {arr.dtype}")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range is reported below, by name
            converted = arr.astype(dtype, order="C", copy=False)  # keeps 0-d arrays 0-d (ascontiguousarray would not)
        if not converted.flags.aligned:  # e.g. np.frombuffer at an odd offset; compiled kernels need aligned data
            converted = converted.copy()
    if check_finite and not all_finite(converted):
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and np.isfinite(arr).all():
            raise ValueError(f"{name} has values beyond the range of {np.dtype(dtype)} (largest magnitude "
                             f"{np.abs(arr).max():.3g})")
        raise ValueError(f"{name} must be finite; it contains NaN or inf{finite_hint}")
    return converted


# np.vdot without the __array_function__ dispatch, which costs as much as the dot product of a small array (the
# arrays checked here are always plain ndarrays, so there is nothing to dispatch to).
_vdot = getattr(np.vdot, "_implementation", np.vdot)


def all_finite(arr):
    """Whether a float ndarray holds no NaN or inf.

    One BLAS dot product first (about 4x faster than np.isfinite(arr).all() on small arrays, and no temporary):
    a sum of squares is finite only if every element is (NaN and inf propagate; squares cannot cancel; an empty
    array's is 0). A finite array whose sum of squares overflows takes the exact check.
    """
    return math.isfinite(_vdot(arr, arr)) or bool(np.isfinite(arr).all())


def check_shape(name, arr, expected, what):
    """`expected` is a tuple of ints; `what` spells it with names, e.g. '(batch=2, units=8)'. `what` may be a
    function giving that string: per-call paths then format it only for the error (an f-string costs ~0.2 us)."""
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {_spelled(what)}; got shape {arr.shape}")


def check_rank(name, arr, rank, what):
    """`what` as for check_shape."""
    if arr.ndim != rank:
        raise ValueError(f"{name} must have shape {_spelled(what)} ({rank}-D); got shape {arr.shape} ({arr.ndim}-D)")


def _spelled(what):
    return what() if callable(what) else what


def as_lengths(lengths, batch, timesteps):
    """Per-sequence lengths as int64 (batch,), each in [0, timesteps]; None means every row is full."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)  # an empty list converts to float64
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers; got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths must have shape (batch={batch},); got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > timesteps):
        raise ValueError(f"lengths must be in [0, timesteps={timesteps}]; got values from {arr.min()} to {arr.max()}")
    return np.require(arr, np.int64, ["C", "A"])


def mask_to_lengths(mask, batch, timesteps):
    """A Keras-style (batch, timesteps) mask of a right-padded batch -> lengths.

    Only masks from padding are supported (True for the first lengths[b] steps, False after), which is what
    Embedding(mask_zero=True) and Masking give for right-padded data.
    """
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biu":
        raise TypeError(f"mask must be boolean; got dtype {arr.dtype}")
    if arr.shape != (batch, timesteps):
        raise ValueError(f"mask must have shape (batch={batch}, timesteps={timesteps}); got shape {arr.shape}")
    arr = arr.astype(bool)
    lengths = arr.sum(axis=1).astype(np.int64)
    if not np.array_equal(arr, np.arange(timesteps)[None, :] < lengths[:, None]):
        raise ValueError("mask must be right-padded: True for each row's first steps and False after them "
                         "(fastrnn supports masks that come from padding)")
    return lengths


def positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}; got {value!r}")
    return value


def boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)
