"""Keras activations by name, each with its derivative, for Dense and Activation.

ACTIVATIONS[name] = (forward(z) -> y, backward(z, y, dy) -> dz). Element-wise except softmax / log_softmax
(last axis, like Keras).
"""
import numpy as np
from scipy import special

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_LEAKY_SLOPE = 0.2  # keras.activations.leaky_relu default negative_slope


def _sigmoid(z):
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(z.dtype, copy=False)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z):
    s = z - z.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _swish_grad(z, y, dy):
    s = _sigmoid(z)
    return dy * (s + z * s * (1.0 - s))


def _gelu(z):
    return (0.5 * z * (1.0 + special.erf(z / np.sqrt(2.0)))).astype(z.dtype, copy=False)


def _gelu_grad(z, y, dy):
    cdf = 0.5 * (1.0 + special.erf(z / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    return (dy * (cdf + z * pdf)).astype(z.dtype, copy=False)


ACTIVATIONS = {
    "linear": (lambda z: z, lambda z, y, dy: dy),
    "relu": (lambda z: np.maximum(z, 0), lambda z, y, dy: dy * (z > 0)),
    "relu6": (lambda z: np.clip(z, 0, 6), lambda z, y, dy: dy * ((z > 0) & (z < 6))),
    "leaky_relu": (lambda z: np.where(z > 0, z, _LEAKY_SLOPE * z),
                   lambda z, y, dy: dy * np.where(z > 0, 1.0, _LEAKY_SLOPE).astype(z.dtype)),
    "tanh": (np.tanh, lambda z, y, dy: dy * (1.0 - y * y)),
    "sigmoid": (_sigmoid, lambda z, y, dy: dy * y * (1.0 - y)),
    # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid": (lambda z: np.clip(z + 3.0, 0, 6) / 6.0, lambda z, y, dy: dy * ((z > -3) & (z < 3)) / 6.0),
    "softmax": (_softmax, lambda z, y, dy: y * (dy - (dy * y).sum(axis=-1, keepdims=True))),
    "log_softmax": (_log_softmax, lambda z, y, dy: dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
            lambda z, y, dy: dy * np.where(z > 0, 1.0, y + 1.0)),
    "selu": (lambda z: _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * np.expm1(np.minimum(z, 0))),
             lambda z, y, dy: dy * _SELU_SCALE * np.where(z > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(z, 0)))),
    "softplus": (lambda z: np.logaddexp(0, z), lambda z, y, dy: dy * _sigmoid(z)),
    "softsign": (lambda z: z / (1.0 + np.abs(z)), lambda z, y, dy: dy / (1.0 + np.abs(z)) ** 2),
    "exponential": (np.exp, lambda z, y, dy: dy * y),
    "swish": (lambda z: z * _sigmoid(z), _swish_grad),
    "silu": (lambda z: z * _sigmoid(z), _swish_grad),
    "gelu": (_gelu, _gelu_grad),  # Keras 3 default: approximate=False (the erf form)
}


def get(name, argname="activation"):
    """(name, forward, backward) for a Keras activation name; None means "linear"."""
    if name is None:
        name = "linear"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{argname} must be None or one of {sorted(ACTIVATIONS)}; got {name!r}")
    fwd, bwd = ACTIVATIONS[name]
    return name, fwd, bwd
