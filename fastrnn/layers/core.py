"""Keras-style core layers: Input (a spec), Dense, Embedding, Dropout, Activation, Flatten, RepeatVector.

    model_layers = [fastrnn.Input((None,), dtype="int32"),
                    fastrnn.Embedding(1000, 32, mask_zero=True),    # mask = x != 0 -> the LSTM's lengths
                    fastrnn.LSTM(64), fastrnn.Dropout(0.5), fastrnn.Dense(10, activation="softmax")]

Dense works on the last axis ((batch, features) and (batch, timesteps, features)) and passes the mask on; so do
Dropout and Activation. Embedding starts a mask with mask_zero=True; its backward scatters the output gradient
into the embedding gradient and returns None (indices are not differentiable). RepeatVector(n) turns (batch,
features) into (batch, n, features): the bridge from a many-to-one encoder to a sequence decoder (seq2seq).
"""
import numbers

import numpy as np

from .. import _checks, initializers
from . import activations
from .base import Layer, as_shape
from .recurrent import _seed

_INITIALIZER_ALIASES = {"uniform": "random_uniform", "normal": "random_normal"}  # Keras short names


def _initializer(value, argname):
    if isinstance(value, str):
        value = _INITIALIZER_ALIASES.get(value, value)
    return initializers.get(value, argname)


class Input:
    """What a Sequential can start with, like keras.Input: the shape of one sample (no batch), an optional
    fixed batch size and the dtype of the data.

    `shape` and `batch_input_shape` include the batch dimension (None unless batch_size is given), as the shape
    of keras.Input's tensor does; `input_shape` excludes it.
    """

    def __init__(self, shape, batch_size=None, dtype=None, name=None):
        self.input_shape = as_shape("shape", shape)
        if batch_size is not None:
            batch_size = _checks.positive_int("batch_size", batch_size)
        self.batch_size = batch_size
        if dtype is None:
            dtype = "float32"
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be a numpy dtype or its name; got {dtype!r}") from None
        if self.dtype.kind not in "biuf":
            raise TypeError(f"dtype must be a real numeric dtype (bool, int or float); got {self.dtype}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None; got {name!r}")
        self.name = name or "input"

    @property
    def shape(self):
        return (self.batch_size,) + self.input_shape

    batch_input_shape = shape

    def __repr__(self):
        return f"Input(shape={self.shape}, dtype={self.dtype.name}, name={self.name!r})"


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis. kernel (input_dim, units), bias (units,)."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", seed=None, name=None, dtype="float32", input_shape=None,
                 batch_input_shape=None, trainable=True):
        self.units = _checks.positive_int("units", units)
        self.activation, self._act, self._act_grad = activations.get(activation)
        self.use_bias = _checks.boolean("use_bias", use_bias)
        self._initializer_args = (kernel_initializer, bias_initializer)
        self.kernel_initializer = _initializer(kernel_initializer, "kernel_initializer")
        self.bias_initializer = _initializer(bias_initializer, "bias_initializer")
        self.seed = _seed(seed)
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        if self.batch_input_shape is not None and len(self.batch_input_shape) < 2:
            raise ValueError(f"{self.name}: batch_input_shape must be (batch, ..., features); "
                             f"got {self.batch_input_shape}")
        self.input_dim = None
        self.kernel = self.bias = None
        self._tape = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: input_shape must be (batch, ..., features); got {input_shape}")
        self.input_dim = _checks.positive_int("input_shape[-1] (features)", input_shape[-1])
        rng = np.random.default_rng(self.seed)
        self.kernel = np.ascontiguousarray(
            self.kernel_initializer((self.input_dim, self.units), self.dtype, rng), self.dtype)
        self.bias = (np.ascontiguousarray(self.bias_initializer((self.units,), self.dtype, rng), self.dtype)
                     if self.use_bias else None)
        self.built = True

    def _weight_names(self):
        return ["kernel", "bias"] if self.use_bias else ["kernel"]

    def _weight_shapes(self, input_shape=None):
        input_dim = self.input_dim if input_shape is None else input_shape[-1]
        return [(input_dim, self.units)] + ([(self.units,)] if self.use_bias else [])

    def _input_shape_from_weights(self, arrays):
        if arrays[0].ndim != 2:
            raise ValueError(f"{self.name}: kernel must have shape (input_dim, units={self.units}); "
                             f"got shape {arrays[0].shape}")
        return (None, _checks.positive_int("kernel.shape[0] (input_dim)", arrays[0].shape[0]))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        x = self._as_float_input(x, 2, "(batch, ..., features)")
        if not self.built:
            self.build(x.shape)
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"{self.name}: x must have shape (batch, ..., features={self.input_dim}); "
                             f"got shape {x.shape}")
        x2 = x.reshape(-1, self.input_dim)
        z = x2 @ self.kernel
        if self.use_bias:
            z += self.bias
        y = self._act(z).astype(self.dtype, copy=False)
        self._tape = (x2, z, y, x.shape) if training else None
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy):
        if self._tape is None:
            raise self._no_tape()
        x2, z, y, shape = self._tape
        dy = self._as_output_grad(dy, shape[:-1] + (self.units,)).reshape(-1, self.units)
        dz = self._act_grad(z, y, dy).astype(self.dtype, copy=False)
        dW = x2.T @ dz
        self._grads = [dW, dz.sum(axis=0)] if self.use_bias else [dW]
        return (dz @ self.kernel.T).reshape(shape)

    def get_config(self):
        kernel_init, bias_init = self._initializer_args
        return dict(super().get_config(), units=self.units, activation=self.activation, use_bias=self.use_bias,
                    kernel_initializer=kernel_init, bias_initializer=bias_init, seed=self.seed)

    def __repr__(self):
        return f"Dense(units={self.units}, activation={self.activation!r}, name={self.name!r})"


class Embedding(Layer):
    """Integer indices (batch, ...) in [0, input_dim) -> vectors (batch, ..., output_dim).

    mask_zero=True: index 0 is padding; the mask the next layer receives is x != 0 (a recurrent layer turns a
    right-padded mask into lengths).
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False, seed=None,
                 name=None, dtype="float32", input_shape=None, batch_input_shape=None, trainable=True):
        self.input_dim = _checks.positive_int("input_dim", input_dim)
        self.output_dim = _checks.positive_int("output_dim", output_dim)
        self._initializer_args = (embeddings_initializer,)
        self.embeddings_initializer = _initializer(embeddings_initializer, "embeddings_initializer")
        self.mask_zero = _checks.boolean("mask_zero", mask_zero)
        self.seed = _seed(seed)
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        self.embeddings = None
        self._tape = None
        self._mask = None

    def build(self, input_shape=None):
        rng = np.random.default_rng(self.seed)
        self.embeddings = np.ascontiguousarray(
            self.embeddings_initializer((self.input_dim, self.output_dim), self.dtype, rng), self.dtype)
        self.built = True

    def _weight_names(self):
        return ["embeddings"]

    def _weight_shapes(self, input_shape=None):
        return [(self.input_dim, self.output_dim)]

    def _input_shape_from_weights(self, arrays):
        return (None, None)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def compute_mask(self, mask=None, inputs=None):
        """mask_zero: inputs != 0 (by default the inputs of the last forward); else None (Keras)."""
        if not self.mask_zero:
            return None
        if inputs is not None:
            return self._indices(inputs) != 0
        return self._mask

    def _indices(self, x):
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{self.name}: x must be an array of integer indices; could not convert "
                            f"{type(x).__name__}: {exc}") from None
        if arr.dtype.kind == "f":
            if not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
                raise ValueError(f"{self.name}: x must hold integer indices; got non-integer float values")
        elif arr.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: x must be an array of integer indices; got dtype {arr.dtype}")
        if arr.ndim < 1:
            raise ValueError(f"{self.name}: x must have shape (batch, ...) (at least 1-D); got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.input_dim):
            raise ValueError(f"{self.name}: indices in x must be in [0, input_dim={self.input_dim}); "
                             f"got values from {arr.min()} to {arr.max()}")
        return arr.astype(np.intp)

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        idx = self._indices(x)
        if not self.built:
            self.build(idx.shape)
        self._mask = (idx != 0) if self.mask_zero else None
        self._tape = idx if training else None
        return self.embeddings[idx]

    def backward(self, dy):
        if self._tape is None:
            raise self._no_tape()
        idx = self._tape
        dy = self._as_output_grad(dy, idx.shape + (self.output_dim,))
        dE = np.zeros_like(self.embeddings)
        np.add.at(dE, idx, dy)
        self._grads = [dE]
        return None

    def get_config(self):
        return dict(super().get_config(), input_dim=self.input_dim, output_dim=self.output_dim,
                    embeddings_initializer=self._initializer_args[0], mask_zero=self.mask_zero, seed=self.seed)

    def __repr__(self):
        return f"Embedding({self.input_dim}, {self.output_dim}, name={self.name!r})"


class Dropout(Layer):
    """Inverted dropout: in training, zero each entry with probability `rate` and scale the rest by
    1/(1-rate); identity at inference. noise_shape (Keras) shares the drop pattern along axes of size 1."""

    def __init__(self, rate, noise_shape=None, seed=None, name=None, dtype="float32", input_shape=None,
                 batch_input_shape=None, trainable=True):
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
            raise TypeError(f"rate must be a number in [0, 1); got {rate!r}")
        if not 0 <= rate < 1:
            raise ValueError(f"rate must be in [0, 1); got {rate}")
        self.rate = float(rate)
        if noise_shape is not None:
            if not isinstance(noise_shape, (tuple, list)):
                raise TypeError(f"noise_shape must be a tuple of positive integers or None; got {noise_shape!r}")
            noise_shape = tuple(None if s is None else _checks.positive_int("noise_shape entries", s)
                                for s in noise_shape)
        self.noise_shape = noise_shape
        self.seed = _seed(seed)
        self._rng = np.random.default_rng(self.seed)
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        self.built = True  # no parameters
        self.noise = None   # the multiplier (0 or 1/(1-rate)) of the last training forward

    def _noise_shape(self, shape):
        if self.noise_shape is None:
            return shape
        if len(self.noise_shape) != len(shape):
            raise ValueError(f"{self.name}: noise_shape {self.noise_shape} must have the rank of x; "
                             f"got x of shape {shape}")
        out = tuple(s if n is None else n for n, s in zip(self.noise_shape, shape))
        for n, s in zip(out, shape):
            if n not in (1, s):
                raise ValueError(f"{self.name}: noise_shape {self.noise_shape} must broadcast to x's shape {shape}")
        return out

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        x = self._as_float_input(x, 1, "(batch, ...)")
        if not training or self.rate == 0:
            self.noise = None
            return x
        keep = self._rng.random(self._noise_shape(x.shape)) >= self.rate
        self.noise = keep.astype(self.dtype) / self.dtype.type(1.0 - self.rate)
        self._shape = x.shape
        return x * self.noise

    def backward(self, dy):
        if self.noise is None:  # inference or rate 0: the identity
            return _checks.as_array("dy", dy, self.dtype)
        dy = self._as_output_grad(dy, self._shape)
        return dy * self.noise

    def get_config(self):
        return dict(super().get_config(), rate=self.rate, noise_shape=self.noise_shape, seed=self.seed)

    def __repr__(self):
        return f"Dropout(rate={self.rate}, name={self.name!r})"


class Activation(Layer):
    """An activation by Keras name, element-wise (softmax / log_softmax on the last axis); passes the mask on."""

    def __init__(self, activation, name=None, dtype="float32", input_shape=None, batch_input_shape=None,
                 trainable=True):
        self.activation, self._act, self._act_grad = activations.get(activation)
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        self.built = True
        self._tape = None

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        x = self._as_float_input(x, 1, "(batch, ...)")
        y = self._act(x).astype(self.dtype, copy=False)
        self._tape = (x, y) if training else None
        return y

    def backward(self, dy):
        if self._tape is None:
            raise self._no_tape()
        x, y = self._tape
        dy = self._as_output_grad(dy, y.shape)
        return self._act_grad(x, y, dy).astype(self.dtype, copy=False)

    def get_config(self):
        return dict(super().get_config(), activation=self.activation)


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...). The mask stops here."""

    def __init__(self, name=None, dtype="float32", input_shape=None, batch_input_shape=None, trainable=True):
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        self.built = True
        self._shape = None

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else int(np.prod(rest)))

    def compute_mask(self, mask):
        return None

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        x = self._as_float_input(x, 1, "(batch, ...)")
        self._shape = x.shape if training else None
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))

    def backward(self, dy):
        if self._shape is None:
            raise self._no_tape()
        B = self._shape[0]
        dy = self._as_output_grad(dy, (B, int(np.prod(self._shape[1:]))))
        return dy.reshape(self._shape)


class RepeatVector(Layer):
    """(batch, features) -> (batch, n, features): the input repeated n times along a new time axis (Keras).

    The encoder-decoder bridge: `LSTM(64)` (the encoding) -> `RepeatVector(T)` -> `LSTM(64, return_sequences=True)`.
    Backward sums the output gradient over the n copies. No parameters; the mask stops here, as in Keras.
    """

    def __init__(self, n, name=None, dtype="float32", input_shape=None, batch_input_shape=None, trainable=True):
        self.n = _checks.positive_int("n", n)
        super().__init__(name=name or "repeat_vector", dtype=dtype, input_shape=input_shape,
                         batch_input_shape=batch_input_shape, trainable=trainable)
        if self.batch_input_shape is not None and len(self.batch_input_shape) != 2:
            raise ValueError(f"{self.name}: batch_input_shape must be (batch, features); got {self.batch_input_shape}")
        self.built = True
        self._shape = None

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: input_shape must be (batch, features); got {input_shape}")
        return (input_shape[0], self.n, input_shape[1])

    def compute_mask(self, mask):
        return None

    def forward(self, x, mask=None, training=False):
        training = _checks.boolean("training", training)
        x = self._as_float_input(x, 2, "(batch, features)")
        if x.ndim != 2:
            raise ValueError(f"{self.name}: x must have shape (batch, features) (2-D); got shape {x.shape} "
                             f"({x.ndim}-D)")
        self._shape = x.shape if training else None
        return np.ascontiguousarray(np.broadcast_to(x[:, None, :], (x.shape[0], self.n, x.shape[1])))

    def backward(self, dy):
        if self._shape is None:
            raise self._no_tape()
        B, F = self._shape
        dy = self._as_output_grad(dy, (B, self.n, F))
        return dy.sum(axis=1)

    def get_config(self):
        return dict(super().get_config(), n=self.n)

    def __repr__(self):
        return f"RepeatVector(n={self.n}, name={self.name!r})"


__all__ = ["Input", "Dense", "Embedding", "Dropout", "Activation", "Flatten", "RepeatVector"]
