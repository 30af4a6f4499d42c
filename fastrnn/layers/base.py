"""`Layer`: the protocol every fastrnn layer follows, and what a model relies on.

    layer = fastrnn.Dense(8, input_shape=(16,))       # input_shape excludes the batch; batch_input_shape includes it
    layer.build((None, 16))                           # creates the parameters (or: the first call builds)
    y = layer.forward(x, mask=None, training=True)    # keeps what backward needs
    mask = layer.compute_mask(mask)                   # the mask the next layer receives
    dx = layer.backward(dy)                           # fills layer.grads (aligned with layer.weights)
    for w, g in zip(layer.weights, layer.grads):      # the live parameter arrays: update them in place
        w -= 0.1 * g

Parameters are numpy arrays of the layer's dtype (float32 or float64). `weights` returns the live arrays (in Keras
order); `set_weights` writes into them in place once the layer is built, so references held by an optimizer stay
valid. `backward` overwrites `grads` (it never accumulates). Layers never modify their inputs.
"""
import numbers

import re

import numpy as np

from .. import _checks


def _shape_entry(name, value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} entries must be positive integers or None; got {value!r}")
    return int(value)


def as_shape(name, shape):
    """A shape given by a user: a tuple of positive ints or None (an int n means (n,))."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of positive integers or None; got {shape!r}")
    return tuple(_shape_entry(name, s) for s in shape)


def batch_shape(input_shape=None, batch_input_shape=None):
    """Keras: input_shape excludes the batch, batch_input_shape includes it. Returns the batch shape or None."""
    if input_shape is not None and batch_input_shape is not None:
        raise ValueError("pass input_shape or batch_input_shape, not both")
    if batch_input_shape is not None:
        shape = as_shape("batch_input_shape", batch_input_shape)
        if not shape:
            raise ValueError("batch_input_shape must include the batch dimension; got ()")
        return shape
    if input_shape is not None:
        return (None,) + as_shape("input_shape", input_shape)
    return None


class Layer:
    """Base class: name, dtype, build, weights / grads, get/set_weights, count_params, masks, forward / backward.

    Subclasses implement `build`, `_weight_names` and `_weight_shapes` (if they have parameters), `forward`,
    `backward`, and `compute_output_shape`; they override `compute_mask` when they change the mask.
    """

    def __init__(self, name=None, dtype="float32", input_shape=None, batch_input_shape=None, trainable=True):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None; got {name!r}")
        self.name = name or _snake_case(type(self).__name__)
        self.dtype = _checks.float_dtype(dtype, "dtype")
        self.trainable = _checks.boolean("trainable", trainable)
        self.batch_input_shape = batch_shape(input_shape, batch_input_shape)
        self.built = False
        self._grads = None

    # -- parameters ----------------------------------------------------------------------------------------------
    def build(self, input_shape):
        """Create the parameters for inputs of `input_shape` (batch included; entries may be None)."""
        self.built = True

    def _weight_names(self):
        """Names (attributes) of the parameters, in Keras order."""
        return []

    def _weight_shapes(self, input_shape=None):
        """Shapes of the parameters of the built layer, or of the layer once built for `input_shape`."""
        return []

    def _input_shape_from_weights(self, arrays):
        """For set_weights on an unbuilt layer: the input shape the given weights imply (validated)."""
        raise ValueError(f"{self.name}: set_weights needs a built layer; call it on data or build(input_shape) first")

    @property
    def weights(self):
        """The live parameter arrays in Keras order ([] before the layer is built)."""
        if not self.built:
            return []
        return [getattr(self, n) for n in self._weight_names()]

    @property
    def trainable_weights(self):
        return self.weights if self.trainable else []

    @property
    def grads(self):
        """Gradients aligned with `weights`, written by the last backward (zeros before any backward)."""
        if self._grads is None:
            return [np.zeros_like(w) for w in self.weights]
        return list(self._grads)

    def get_weights(self):
        """Copies of the parameters, in Keras order."""
        return [w.copy() for w in self.weights]

    def _prepare_weights(self, weights):
        """Validate a set_weights argument without changing anything: (input_shape or None, arrays)."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.name}: weights must be a list of arrays; got {type(weights).__name__}")
        names = self._weight_names()
        if len(weights) != len(names):
            raise ValueError(f"{self.name}: set_weights needs {len(names)} arrays [{', '.join(names)}]; "
                             f"got {len(weights)}")
        arrays = [_checks.as_array(label, w, self.dtype, check_finite=False) for label, w in zip(names, weights)]
        input_shape = None
        if not self.built:
            input_shape = self._input_shape_from_weights(arrays)
        for label, arr, shape in zip(names, arrays, self._weight_shapes(input_shape)):
            _checks.check_shape(f"{self.name}: {label}", arr, tuple(shape), str(tuple(shape)))
        return input_shape, arrays

    def _apply_weights(self, input_shape, arrays):
        if not self.built:
            self.build(input_shape)
        for live, arr in zip(self.weights, arrays):
            np.copyto(live, arr)

    def set_weights(self, weights):
        """Load parameters (Keras order and shapes), copied into the live arrays; shapes are checked by name.

        An unbuilt layer whose input size follows from the weights is built from them.
        """
        input_shape, arrays = self._prepare_weights(weights)
        self._apply_weights(input_shape, arrays)

    def count_params(self):
        if not self.built:
            raise ValueError(f"{self.name}: count_params needs a built layer; call it on data or build(input_shape)")
        return int(sum(int(np.prod(s)) for s in self._weight_shapes()))

    # -- shapes and masks ----------------------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        """The output shape for `input_shape` (batch included; None for unknown sizes)."""
        return tuple(input_shape)

    def compute_mask(self, mask):
        """The mask the next layer receives, given the mask this layer received (default: passed on)."""
        return mask

    # -- running -------------------------------------------------------------------------------------------------
    def forward(self, x, mask=None, training=False):
        """Run the layer; with training=True keep what backward needs."""
        raise NotImplementedError

    def backward(self, dy):
        """Gradient of the input given the gradient of the output; fills `grads`. Needs a training forward."""
        raise NotImplementedError

    def __call__(self, x, mask=None, training=False, **kwargs):
        """Build on the first call (from x's shape), then forward."""
        return self.forward(x, mask=mask, training=training, **kwargs)

    def _no_tape(self):
        return ValueError(f"{self.name}: backward needs a forward with training=True first")

    def _as_float_input(self, x, min_rank, what):
        x = _checks.as_array("x", x, self.dtype, check_finite=True)
        if x.ndim < min_rank:
            raise ValueError(f"{self.name}: x must have shape {what} (at least {min_rank}-D); "
                             f"got shape {x.shape} ({x.ndim}-D)")
        return x

    def _as_output_grad(self, dy, shape):
        dy = _checks.as_array("dy", dy, self.dtype, check_finite=True)
        _checks.check_shape(f"{self.name}: dy", dy, tuple(shape), f"{tuple(shape)} (the output's shape)")
        return dy

    # -- config --------------------------------------------------------------------------------------------------
    def get_config(self):
        """Constructor arguments: `type(layer).from_config(layer.get_config())` makes a fresh, unbuilt copy."""
        return {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable,
                "batch_input_shape": self.batch_input_shape}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _snake_case(class_name):
    """Keras' default layer names: SimpleRNN -> simple_rnn, RepeatVector -> repeat_vector, LSTM -> lstm."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", class_name).lower()
