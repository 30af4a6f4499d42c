"""Losses for the Keras-style model API: values with Keras 3 semantics, and their gradients.

Every loss is an object with

    loss(y_true, y_pred) -> float                       # the reduced loss, as Keras computes it
    loss.gradient(y_true, y_pred) -> ndarray            # dL/dy_pred, same shape and dtype as y_pred
    loss.value_and_gradient(y_true, y_pred) -> (float, ndarray)

Reduction (Keras' default "sum_over_batch_size"): each loss first reduces the last axis (mean for
mean_squared_error, mean_absolute_error and binary_crossentropy; the sum over classes for the crossentropies),
giving one value per sample -- per (sample, timestep) for sequence outputs (B, T, C) -- and the loss is the mean
of those values. The gradient is the exact derivative of that number, including Keras' clipping of probabilities
to [1e-7, 1 - 1e-7] (zero gradient where a probability is clipped) and, for the categorical crossentropies, the
renormalisation of y_pred by its sum over classes. With from_logits=True the crossentropies use the stable
log-softmax / log-sigmoid forms, finite for any finite logits.

As in Keras, y_true may differ from y_pred by a trailing axis of size 1 ((B,) against (B, 1), or the reverse).
Computation runs in y_pred's dtype (float32 or float64; other numeric input is computed in float32, Keras' floatx);
the returned value is a Python float. Values are not checked for NaN / inf: a diverging model gives a NaN loss.

    losses.get("mse"), losses.get("sparse_categorical_crossentropy"), losses.get(BinaryCrossentropy(from_logits=True))
"""
import numpy as np

from ._checks import FLOAT_DTYPES, boolean

EPSILON = 1e-7  # keras.backend.epsilon()

__all__ = ["EPSILON", "Loss", "MeanSquaredError", "MeanAbsoluteError", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get", "names"]


# ---------------------------------------------------------------------------------------------------- input checks

def _pred_array(y_pred):
    try:
        p = np.asarray(y_pred)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"y_pred must be a numeric array; could not convert {type(y_pred).__name__}: {exc}") from None
    if p.dtype.kind not in "biuf":
        raise TypeError(f"y_pred must be a real numeric array; got dtype {p.dtype}")
    dtype = p.dtype if p.dtype in FLOAT_DTYPES else np.dtype(np.float32)
    p = p.astype(dtype, copy=False)
    if p.ndim == 0:
        raise ValueError("y_pred must have at least one axis (batch, ..., outputs); got a 0-d array (shape ())")
    if p.size == 0:
        raise ValueError(f"y_pred must not be empty; got shape {p.shape}")
    return p


def _true_array(y_true):
    try:
        t = np.asarray(y_true)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"y_true must be a numeric array; could not convert {type(y_true).__name__}: {exc}") from None
    if t.dtype.kind not in "biuf":
        raise TypeError(f"y_true must be a real numeric array; got dtype {t.dtype}")
    return t


def _dense_pair(y_true, y_pred, hint=""):
    """(t, p): y_pred as a float array, y_true in its dtype and shape (Keras' squeeze_or_expand_to_same_rank)."""
    p = _pred_array(y_pred)
    t = _true_array(y_true)
    if t.shape != p.shape:
        trailing_one = ((t.ndim == p.ndim - 1 and p.shape[-1] == 1 and t.shape == p.shape[:-1])
                        or (t.ndim == p.ndim + 1 and t.shape[-1] == 1 and t.shape[:-1] == p.shape))
        if not trailing_one:
            raise ValueError(f"y_true and y_pred must have the same shape (or differ only by a trailing axis of "
                             f"size 1); got y_true shape {t.shape} and y_pred shape {p.shape}{hint}")
        t = t.reshape(p.shape)
    return t.astype(p.dtype, copy=False), p


def _sparse_pair(y_true, y_pred):
    """(labels int64 with shape y_pred.shape[:-1], p) for the sparse crossentropy."""
    p = _pred_array(y_pred)
    t = _true_array(y_true)
    lead = p.shape[:-1]
    if t.shape != lead:
        if t.shape == lead + (1,):
            t = t.reshape(lead)
        else:
            raise ValueError(f"y_true must hold one class id per row of y_pred: shape {lead} (or {lead + (1,)}) for "
                             f"y_pred shape {p.shape}; got y_true shape {t.shape}")
    if t.dtype.kind == "f":
        if not np.all(np.isfinite(t)) or not np.array_equal(t, np.floor(t)):
            raise ValueError("y_true must hold integer class ids; got non-integer values")
    n_classes = p.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"y_true class ids must be in [0, {n_classes - 1}] (y_pred has {n_classes} classes on its "
                         f"last axis); got values from {t.min():g} to {t.max():g}")
    return t.astype(np.int64), p


def _n_rows(p):
    """Number of per-sample losses the mean is taken over: everything but the last axis."""
    return int(np.prod(p.shape[:-1], dtype=np.int64)) if p.ndim > 1 else 1


def _mean(per_row):
    return float(np.mean(per_row, dtype=np.float64))


# ------------------------------------------------------------------------------------------- numerically stable bits

def _sigmoid(z):
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _log_softmax(z):
    shifted = z - np.max(z, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _clip_bounds(dtype):
    return dtype.type(EPSILON), dtype.type(1.0 - EPSILON)


def _clipped(p):
    lo, hi = _clip_bounds(p.dtype)
    return np.clip(p, lo, hi), (p >= lo) & (p <= hi)  # gradient flows only where clip is the identity


# ---------------------------------------------------------------------------------------------------------- classes

class Loss:
    """Base class: subclasses implement `_value_grad(y_true, y_pred, want_grad) -> (float, ndarray or None)`."""

    name = "loss"

    def __call__(self, y_true, y_pred):
        return self._value_grad(y_true, y_pred, False)[0]

    def gradient(self, y_true, y_pred):
        """dL/dy_pred of the reduced loss; same shape and dtype as y_pred."""
        return self._value_grad(y_true, y_pred, True)[1]

    def value_and_gradient(self, y_true, y_pred):
        return self._value_grad(y_true, y_pred, True)

    def _value_grad(self, y_true, y_pred, want_grad):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _name(name, default):
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string; got {name!r}")
    return name


class MeanSquaredError(Loss):
    """mean((y_true - y_pred)**2) over the last axis, then over the batch (and timesteps)."""

    def __init__(self, name=None):
        self.name = _name(name, "mean_squared_error")

    def _value_grad(self, y_true, y_pred, want_grad):
        t, p = _dense_pair(y_true, y_pred)
        diff = p - t
        value = _mean(np.mean(np.square(diff), axis=-1))
        if not want_grad:
            return value, None
        return value, diff * p.dtype.type(2.0 / p.size)


class MeanAbsoluteError(Loss):
    """mean(|y_true - y_pred|) over the last axis, then over the batch; the gradient at y_pred == y_true is 0."""

    def __init__(self, name=None):
        self.name = _name(name, "mean_absolute_error")

    def _value_grad(self, y_true, y_pred, want_grad):
        t, p = _dense_pair(y_true, y_pred)
        diff = p - t
        value = _mean(np.mean(np.abs(diff), axis=-1))
        if not want_grad:
            return value, None
        return value, np.sign(diff) * p.dtype.type(1.0 / p.size)


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), mean over the last axis, then over the batch.

    from_logits=False: p = clip(y_pred, 1e-7, 1 - 1e-7). from_logits=True: y_pred are logits z and the loss is
    max(z, 0) - z y + log(1 + exp(-|z|)), with gradient sigmoid(z) - y.
    """

    def __init__(self, from_logits=False, name=None):
        self.from_logits = boolean("from_logits", from_logits)
        self.name = _name(name, "binary_crossentropy")

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    def _value_grad(self, y_true, y_pred, want_grad):
        t, p = _dense_pair(y_true, y_pred)
        scale = p.dtype.type(1.0 / p.size)
        if self.from_logits:
            z = p
            elementwise = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
            value = _mean(np.mean(elementwise, axis=-1))
            return value, ((_sigmoid(z) - t) * scale if want_grad else None)
        q, inside = _clipped(p)
        one = p.dtype.type(1.0)
        elementwise = -(t * np.log(q) + (one - t) * np.log(one - q))
        value = _mean(np.mean(elementwise, axis=-1))
        if not want_grad:
            return value, None
        grad = ((one - t) / (one - q) - t / q) * scale
        return value, np.where(inside, grad, p.dtype.type(0.0))


def _categorical_from_probs(t, p, want_grad):
    """Keras: q = clip(p / sum(p), eps, 1 - eps); per-row loss -sum(t log q). t is a dense (one-hot) target."""
    s = np.sum(p, axis=-1, keepdims=True)
    q = p / s
    qc, inside = _clipped(q)
    per_row = -np.sum(t * np.log(qc), axis=-1)
    if not want_grad:
        return per_row, None
    g = np.where(inside, -t / qc, p.dtype.type(0.0))           # dL/dq (per row)
    grad = (g - np.sum(g * q, axis=-1, keepdims=True)) / s      # through q = p / sum(p)
    return per_row, grad


def _categorical_from_logits(t, z, want_grad):
    log_q = _log_softmax(z)
    per_row = -np.sum(t * log_q, axis=-1)
    if not want_grad:
        return per_row, None
    return per_row, np.exp(log_q) * np.sum(t, axis=-1, keepdims=True) - t


class CategoricalCrossentropy(Loss):
    """-sum(y_true * log(softmax or normalised y_pred)) over the last axis (classes), mean over the batch.

    y_true is one-hot (or any distribution) with y_pred's shape. from_logits=False renormalises y_pred to sum to 1
    over classes and clips it to [1e-7, 1 - 1e-7], as Keras does; from_logits=True uses log_softmax(y_pred).
    """

    def __init__(self, from_logits=False, name=None):
        self.from_logits = boolean("from_logits", from_logits)
        self.name = _name(name, "categorical_crossentropy")

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    def _value_grad(self, y_true, y_pred, want_grad):
        p = _pred_array(y_pred)
        t = _true_array(y_true)
        hint = ""
        if p.ndim >= 1 and p.shape[-1] > 1 and t.shape in (p.shape[:-1], p.shape[:-1] + (1,)):
            hint = " (y_true looks like integer class ids: use sparse_categorical_crossentropy)"
        t, p = _dense_pair(t, p, hint)
        fn = _categorical_from_logits if self.from_logits else _categorical_from_probs
        per_row, grad = fn(t, p, want_grad)
        value = _mean(per_row)
        if not want_grad:
            return value, None
        return value, grad * p.dtype.type(1.0 / _n_rows(p))


class SparseCategoricalCrossentropy(Loss):
    """CategoricalCrossentropy with integer class ids: y_true has y_pred's shape without the last axis
    (or with a trailing axis of size 1); every id must be in [0, classes)."""

    def __init__(self, from_logits=False, name=None):
        self.from_logits = boolean("from_logits", from_logits)
        self.name = _name(name, "sparse_categorical_crossentropy")

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    def _value_grad(self, y_true, y_pred, want_grad):
        labels, p = _sparse_pair(y_true, y_pred)
        one_hot = np.zeros_like(p)
        np.put_along_axis(one_hot, labels[..., None], p.dtype.type(1.0), axis=-1)
        fn = _categorical_from_logits if self.from_logits else _categorical_from_probs
        per_row, grad = fn(one_hot, p, want_grad)
        value = _mean(per_row)
        if not want_grad:
            return value, None
        return value, grad * p.dtype.type(1.0 / _n_rows(p))


# ------------------------------------------------------------------------------------------------------------ lookup

_BY_NAME = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
_CLASSES = {cls.__name__: cls for cls in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy,
                                          CategoricalCrossentropy, SparseCategoricalCrossentropy)}


def names():
    """The loss names `get` accepts (Keras names and aliases)."""
    return sorted(_BY_NAME)


def get(identifier):
    """A loss object from a Keras name ("mse", "binary_crossentropy", ...), a class name ("MeanSquaredError"),
    a Loss class, or a loss instance (returned unchanged; any object with __call__ and gradient is accepted)."""
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier) or _CLASSES.get(identifier)
        if cls is None:
            raise ValueError(f"unknown loss {identifier!r}; known losses: {', '.join(names())}")
        name = identifier if identifier in _BY_NAME else None
        return cls(name=name)
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, Loss) or (callable(identifier) and callable(getattr(identifier, "gradient", None))):
        return identifier
    raise TypeError(f"loss must be a loss name ({', '.join(names())}) or a loss object with a gradient() method; "
                    f"got {identifier!r}")
