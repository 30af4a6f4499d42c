"""Keras weight initializers (same names and distributions; numbers come from numpy's Generator).

Each takes (shape, dtype, rng) and returns a new array. Layers accept a name or any callable(shape, dtype, rng).
"""
import numpy as np


def _fans(shape):
    # Keras: a 2-D (fan_in, fan_out) kernel; receptive fields multiply both for higher ranks.
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(shape, dtype, rng):
    return np.zeros(shape, dtype)


def ones(shape, dtype, rng):
    return np.ones(shape, dtype)


def glorot_uniform(shape, dtype, rng):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_normal(shape, dtype, rng):
    fan_in, fan_out = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def he_uniform(shape, dtype, rng):
    fan_in, _ = _fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape).astype(dtype)


def he_normal(shape, dtype, rng):
    fan_in, _ = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2.0 / fan_in)).astype(dtype)


def random_normal(shape, dtype, rng):
    return rng.normal(0.0, 0.05, shape).astype(dtype)


def random_uniform(shape, dtype, rng):
    return rng.uniform(-0.05, 0.05, shape).astype(dtype)


def orthogonal(shape, dtype, rng):
    """Keras OrthogonalInitializer: rows (or columns) orthonormal, for a recurrent kernel (U, G*U) the rows."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # makes the distribution uniform (Haar)
    if rows < cols:
        q = q.T
    return q.reshape(shape).astype(dtype)


def _truncated_normal(rng, shape, stddev):
    # Keras' variance scaling "truncated_normal": cut at 2 stddev, rescaled so the variance stays stddev**2.
    std = stddev / 0.87962566103423978
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, bad.sum())
        bad = np.abs(out) > 2 * std
    return out


INITIALIZERS = {f.__name__: f for f in (zeros, ones, glorot_uniform, glorot_normal, he_uniform, he_normal,
                                         random_normal, random_uniform, orthogonal)}


def get(name_or_fn, argname):
    """An initializer from its Keras name or a callable(shape, dtype, rng)."""
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in INITIALIZERS:
        return INITIALIZERS[name_or_fn]
    raise ValueError(f"{argname} must be one of {sorted(INITIALIZERS)} or a callable(shape, dtype, rng); "
                     f"got {name_or_fn!r}")
