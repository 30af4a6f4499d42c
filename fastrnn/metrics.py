"""Metrics for the Keras-style model API (Keras 3 semantics).

Every metric is an object with a `.name` (the name Keras logs it under) and

    metric(y_true, y_pred) -> float     # the mean over the batch (and over timesteps, for sequence outputs)

Metrics are stateless: a caller that wants an epoch value averages the per-batch values weighted by batch size
(Keras' Mean reduction gives the same number).

- binary_accuracy: mean(y_true == (y_pred > threshold)), threshold 0.5; y_pred are probabilities.
- categorical_accuracy: argmax(y_true) == argmax(y_pred) over the last axis (one-hot y_true).
- sparse_categorical_accuracy: y_true == argmax(y_pred); y_true has y_pred's shape without the last axis
  (or with a trailing axis of size 1).
- mae / mse: mean absolute / squared error.
- "accuracy" / "acc": chosen as Keras 3's compile does, from the shapes of the first batch it sees:
  binary_accuracy if y_pred's last axis has size 1; else sparse_categorical_accuracy if y_true has fewer axes than
  y_pred or a last axis of size 1; else categorical_accuracy. (Keras 3 decides from shapes alone, so a multi-label
  model trained with binary_crossentropy on outputs (B, C > 1) gets categorical_accuracy: ask for
  "binary_accuracy" there.)

As for losses, y_true may differ from y_pred by a trailing axis of size 1 for the element-wise metrics.
"""
import numpy as np

__all__ = ["Metric", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy", "MeanAbsoluteError",
           "MeanSquaredError", "AutoAccuracy", "FunctionMetric", "get", "names"]


def _array(name, value):
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array; could not convert {type(value).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def _pred(y_pred):
    p = _array("y_pred", y_pred)
    if p.ndim == 0:
        raise ValueError("y_pred must have at least one axis (batch, ..., outputs); got a 0-d array (shape ())")
    if p.size == 0:
        raise ValueError(f"y_pred must not be empty; got shape {p.shape}")
    return p


def _same_shape(y_true, y_pred):
    """Keras' squeeze_or_expand_to_same_rank, restricted to what it is for: a trailing axis of size 1."""
    p = _pred(y_pred)
    t = _array("y_true", y_true)
    if t.shape != p.shape:
        if ((t.ndim == p.ndim - 1 and p.shape[-1] == 1 and t.shape == p.shape[:-1])
                or (t.ndim == p.ndim + 1 and t.shape[-1] == 1 and t.shape[:-1] == p.shape)):
            t = t.reshape(p.shape)
        else:
            raise ValueError(f"y_true and y_pred must have the same shape (or differ only by a trailing axis of "
                             f"size 1); got y_true shape {t.shape} and y_pred shape {p.shape}")
    return t, p


def _name(name, default):
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string; got {name!r}")
    return name


class Metric:
    name = "metric"

    def __call__(self, y_true, y_pred):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class BinaryAccuracy(Metric):
    def __init__(self, threshold=0.5, name=None):
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)):
            raise TypeError(f"threshold must be a number in (0, 1); got {threshold!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1); got {threshold!r}")
        self.threshold = float(threshold)
        self.name = _name(name, "binary_accuracy")

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}

    def __call__(self, y_true, y_pred):
        t, p = _same_shape(y_true, y_pred)
        return float(np.mean(t == (p > self.threshold)))


class CategoricalAccuracy(Metric):
    def __init__(self, name=None):
        self.name = _name(name, "categorical_accuracy")

    def __call__(self, y_true, y_pred):
        p = _pred(y_pred)
        t = _array("y_true", y_true)
        if t.shape != p.shape:
            hint = (" (y_true looks like integer class ids: use sparse_categorical_accuracy)"
                    if t.shape in (p.shape[:-1], p.shape[:-1] + (1,)) else "")
            raise ValueError(f"y_true must be one-hot with y_pred's shape {p.shape}; got y_true shape "
                             f"{t.shape}{hint}")
        return float(np.mean(np.argmax(t, axis=-1) == np.argmax(p, axis=-1)))


class SparseCategoricalAccuracy(Metric):
    def __init__(self, name=None):
        self.name = _name(name, "sparse_categorical_accuracy")

    def __call__(self, y_true, y_pred):
        p = _pred(y_pred)
        t = _array("y_true", y_true)
        lead = p.shape[:-1]
        if t.shape != lead:
            if t.shape != lead + (1,):
                raise ValueError(f"y_true must hold one class id per row of y_pred: shape {lead} (or "
                                 f"{lead + (1,)}) for y_pred shape {p.shape}; got y_true shape {t.shape}")
            t = t.reshape(lead)
        return float(np.mean(t == np.argmax(p, axis=-1)))


class MeanAbsoluteError(Metric):
    def __init__(self, name=None):
        self.name = _name(name, "mean_absolute_error")

    def __call__(self, y_true, y_pred):
        t, p = _same_shape(y_true, y_pred)
        return float(np.mean(np.abs(p.astype(np.float64) - t), dtype=np.float64))


class MeanSquaredError(Metric):
    def __init__(self, name=None):
        self.name = _name(name, "mean_squared_error")

    def __call__(self, y_true, y_pred):
        t, p = _same_shape(y_true, y_pred)
        return float(np.mean(np.square(p.astype(np.float64) - t), dtype=np.float64))


def _keras_accuracy_kind(y_true_shape, y_pred_shape):
    """Keras 3 compile_utils: binary / sparse_categorical / categorical accuracy from the shapes."""
    if len(y_pred_shape) == 0:
        raise ValueError("y_pred must have at least one axis (batch, ..., outputs); got a 0-d array (shape ())")
    y_true_last = y_true_shape[-1] if y_true_shape else None
    if y_pred_shape[-1] == 1:
        return "binary"
    if len(y_true_shape) < len(y_pred_shape) or (y_true_last == 1 and y_pred_shape[-1] > 1):
        return "sparse"
    return "categorical"


_ACCURACY_CLASSES = {"binary": BinaryAccuracy, "sparse": SparseCategoricalAccuracy, "categorical": CategoricalAccuracy}


class AutoAccuracy(Metric):
    """The "accuracy" of compile(metrics=["accuracy"]): binary, sparse categorical or categorical accuracy, picked
    on the first call from the shapes, as Keras 3 does (see the module docstring). `.resolved` is the metric
    it picked (None before the first call); it keeps that choice afterwards."""

    def __init__(self, name=None, loss=None):
        self.name = _name(name, "accuracy")
        self.loss = loss
        self.resolved = None

    def __call__(self, y_true, y_pred):
        if self.resolved is None:
            p = _pred(y_pred)
            t = _array("y_true", y_true)
            metric = _ACCURACY_CLASSES[_keras_accuracy_kind(t.shape, p.shape)](name=self.name)
            value = metric(t, p)
            self.resolved = metric  # only once a call has succeeded
            return value
        return self.resolved(y_true, y_pred)


class FunctionMetric(Metric):
    """Any callable fn(y_true, y_pred) -> number, as a metric named `name` (default: the function's name)."""

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {fn!r}")
        self.fn = fn
        self.name = _name(name, getattr(fn, "__name__", None) or type(fn).__name__)

    def __call__(self, y_true, y_pred):
        return float(np.mean(self.fn(y_true, y_pred)))


_BY_NAME = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
}
_ACCURACY_NAMES = ("accuracy", "acc")


def names():
    """The metric names `get` accepts (case-insensitive)."""
    return sorted(set(_BY_NAME) | set(_ACCURACY_NAMES))


def get(identifier, loss=None):
    """A metric from a name, a Metric instance (returned unchanged) or a callable fn(y_true, y_pred).

    A metric got by name is named as given, as Keras logs it ("mae" stays "mae"). "accuracy" / "acc" give an
    AutoAccuracy that picks binary / sparse categorical / categorical accuracy from the shapes, like Keras 3's
    compile; `loss` (compile's loss: a name or a loss object) is recorded on it as `.loss`. Keras 3 does not use
    the loss for this choice, and neither does fastrnn: for valid data the shape rule always agrees with the
    categorical and sparse categorical crossentropies.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _ACCURACY_NAMES:
            return AutoAccuracy(name=identifier, loss=loss)
        cls = _BY_NAME.get(key)
        if cls is None:
            raise ValueError(f"unknown metric {identifier!r}; known metrics: {', '.join(names())}")
        return cls(name=identifier)
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return FunctionMetric(identifier)
    raise TypeError(f"metric must be a metric name ({', '.join(names())}), a Metric or a callable; "
                    f"got {identifier!r}")
