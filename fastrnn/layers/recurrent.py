"""Keras-style recurrent layers: SimpleRNN, LSTM, GRU.

A layer holds its parameters in the Keras layout and gate order, builds them on first call from the input
shape, checks its arguments and calls fastrnn.ops. It has no time loop of its own.

    layer = fastrnn.LSTM(64, return_sequences=True, return_state=True)
    y, h, c = layer(x)                         # x: (batch, timesteps, features)
    layer.set_weights(keras_layer.get_weights())
"""
import numpy as np

from .. import _checks, initializers, ops


class RecurrentLayer:
    """What SimpleRNN, LSTM and GRU share. Subclasses set `cell` and may add options."""
    cell = None

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", return_sequences=False,
                 return_state=False, go_backwards=False, zero_output_for_mask=False, dtype="float32",
                 backend="auto", seed=None, name=None):
        self.units = _checks.positive_int("units", units)
        self.use_bias = _checks.boolean("use_bias", use_bias)
        self.return_sequences = _checks.boolean("return_sequences", return_sequences)
        self.return_state = _checks.boolean("return_state", return_state)
        self.go_backwards = _checks.boolean("go_backwards", go_backwards)
        self.zero_output_for_mask = _checks.boolean("zero_output_for_mask", zero_output_for_mask)
        self.dtype = _checks.float_dtype(dtype, "dtype")
        self.backend = _checks.choice("backend", backend, ops.BACKENDS)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.seed = seed
        self.name = name or type(self).__name__.lower()
        self.built = False
        self.input_dim = None
        self.kernel = self.recurrent_kernel = self.bias = None
        self.backend_used = None  # the backend that ran the last call

    # -- what subclasses vary ------------------------------------------------------------------------------------
    gates = 1

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _init_bias(self, rng):
        return self.bias_initializer(self._bias_shape(), self.dtype, rng)

    def _options(self):
        """Extra keyword arguments for ops.rnn_forward."""
        return {}

    # -- parameters ----------------------------------------------------------------------------------------------
    def build(self, input_shape):
        """Create the weights for inputs of shape (batch, timesteps, features) (batch/timesteps may be None)."""
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: input_shape must be (batch, timesteps, features); got {input_shape}")
        input_dim = _checks.positive_int("input_shape[-1] (features)", input_shape[-1])
        rng = np.random.default_rng(self.seed)
        gu = self.gates * self.units
        self.input_dim = input_dim
        self.kernel = np.ascontiguousarray(self.kernel_initializer((input_dim, gu), self.dtype, rng), self.dtype)
        self.recurrent_kernel = np.ascontiguousarray(
            self.recurrent_initializer((self.units, gu), self.dtype, rng), self.dtype)
        self.bias = np.ascontiguousarray(self._init_bias(rng), self.dtype) if self.use_bias else None
        self.built = True

    def _weight_shapes(self):
        shapes = [(self.input_dim, self.gates * self.units), (self.units, self.gates * self.units)]
        if self.use_bias:
            shapes.append(self._bias_shape())
        return shapes

    @property
    def weights(self):
        """The live parameter arrays in Keras order: kernel, recurrent_kernel[, bias]."""
        if not self.built:
            return []
        return [self.kernel, self.recurrent_kernel] + ([self.bias] if self.use_bias else [])

    def get_weights(self):
        """Copies of the parameters, in the Keras layout: [kernel, recurrent_kernel, bias]."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Load parameters in the Keras layout (a Keras layer's get_weights() loads unchanged).

        An unbuilt layer is built from the kernel's shape.
        """
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.name}: weights must be a list of arrays; got {type(weights).__name__}")
        n = 3 if self.use_bias else 2
        if len(weights) != n:
            raise ValueError(f"{self.name}: set_weights needs {n} arrays [kernel, recurrent_kernel"
                             f"{', bias' if self.use_bias else ''}]; got {len(weights)}")
        arrays = [_checks.as_array(label, w, self.dtype, check_finite=False)
                  for label, w in zip(("kernel", "recurrent_kernel", "bias"), weights)]
        if not self.built:
            if arrays[0].ndim != 2:
                raise ValueError(f"{self.name}: kernel must have shape (input_dim, {self.gates}*units="
                                 f"{self.gates * self.units}); got shape {arrays[0].shape}")
            self.input_dim = _checks.positive_int("kernel.shape[0] (input_dim)", arrays[0].shape[0])
        for label, arr, shape in zip(("kernel", "recurrent_kernel", "bias"), arrays, self._weight_shapes()):
            _checks.check_shape(f"{self.name}: {label}", arr, shape, str(shape))
        self.kernel, self.recurrent_kernel = arrays[0].copy(), arrays[1].copy()
        self.bias = arrays[2].copy() if self.use_bias else None
        self.built = True

    def count_params(self):
        if not self.built:
            raise ValueError(f"{self.name}: count_params needs a built layer; call it on data or build(input_shape)")
        return int(sum(int(np.prod(s)) for s in self._weight_shapes()))

    # -- call ----------------------------------------------------------------------------------------------------
    def __call__(self, x, initial_state=None, mask=None, lengths=None, training=False):
        """Run the layer on x (batch, timesteps, features).

        initial_state: h0, or [h0] / [h0, c0] for LSTM.  mask: a (batch, timesteps) right-padded boolean mask,
        or lengths: (batch,) ints.  Returns the output ((batch, timesteps, units) with return_sequences, else
        (batch, units)); with return_state, a list [output, h] (LSTM: [output, h, c]).
        """
        x = _checks.as_array("x", x, self.dtype, check_finite=False)  # ops checks finiteness
        _checks.check_rank("x", x, 3, "(batch, timesteps, features)")
        if not self.built:
            self.build(x.shape)
        if x.shape[2] != self.input_dim:
            raise ValueError(f"{self.name}: x must have shape (batch, timesteps, features={self.input_dim}); "
                             f"got shape {x.shape}")
        B, T, _ = x.shape
        if mask is not None and lengths is not None:
            raise ValueError(f"{self.name}: pass mask or lengths, not both")
        lens = _checks.mask_to_lengths(mask, B, T) if mask is not None else _checks.as_lengths(lengths, B, T)

        out = ops.rnn_forward(self.cell, x, self.weights, initial_state, lens, reverse=self.go_backwards,
                              backend=self.backend, dtype=self.dtype, **self._options())
        self.backend_used = out.backend
        return self._format(out, lens)

    def _format(self, out, lens):
        """Keras conventions for the kernel's input-aligned outputs."""
        y, states = out.outputs, out.states
        B, T = y.shape[:2]
        if self.return_sequences:
            if self.go_backwards:
                y = y[:, ::-1]  # Keras: output step s is processing step s over the flipped sequence
            elif lens is not None and not self.zero_output_for_mask:
                # Keras carries the last valid output over masked steps (zeros before the first valid one)
                padded = np.arange(T)[None, :] >= lens[:, None]
                carry = np.where(lens[:, None] > 0, states[0], 0)
                y = np.where(padded[:, :, None], carry[:, None, :], y)
            output = np.ascontiguousarray(y)
        else:
            output = states[0].copy()
            if lens is not None:
                # Keras returns its last output step: zeros for a row with no valid step (its state stays h0),
                # and, with zero_output_for_mask, zeros for a row whose last step is padding.
                output[lens == 0] = 0
                if self.zero_output_for_mask and not self.go_backwards:
                    output[lens < T] = 0
        if self.return_state:
            return [output, *states]
        return output

    def __repr__(self):
        return f"{type(self).__name__}(units={self.units}, name={self.name!r})"


class SimpleRNN(RecurrentLayer):
    """Fully connected RNN: h_t = activation(x_t W + h_{t-1} R + b); activation "tanh" (default) or "relu"."""
    cell = "simple_rnn"
    gates = 1

    def __init__(self, units, activation="tanh", **kwargs):
        self.activation = _checks.choice("activation", activation, ops.ACTIVATIONS)
        super().__init__(units, **kwargs)

    def _options(self):
        return {"activation": self.activation}


class LSTM(RecurrentLayer):
    """Long short-term memory, Keras gate order i, f, c, o. unit_forget_bias adds 1 to the forget-gate bias."""
    cell = "lstm"
    gates = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", unit_forget_bias=True, **kwargs):
        _checks.choice("activation", activation, ("tanh",))
        _checks.choice("recurrent_activation", recurrent_activation, ("sigmoid",))
        self.unit_forget_bias = _checks.boolean("unit_forget_bias", unit_forget_bias)
        super().__init__(units, **kwargs)

    def _init_bias(self, rng):
        if not self.unit_forget_bias:
            return super()._init_bias(rng)
        # Keras: bias_initializer for i, c, o and ones for the forget gate
        u = self.units
        return np.concatenate([self.bias_initializer((u,), self.dtype, rng), np.ones(u, self.dtype),
                               self.bias_initializer((2 * u,), self.dtype, rng)])


class GRU(RecurrentLayer):
    """Gated recurrent unit, Keras gate order z, r, h. reset_after=True (Keras default, = PyTorch and
    ONNX linear_before_reset=1) applies the reset gate after the recurrent matmul and has bias (2, 3*units)."""
    cell = "gru"
    gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", reset_after=True, **kwargs):
        _checks.choice("activation", activation, ("tanh",))
        _checks.choice("recurrent_activation", recurrent_activation, ("sigmoid",))
        self.reset_after = _checks.boolean("reset_after", reset_after)
        super().__init__(units, **kwargs)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _options(self):
        return {"reset_after": self.reset_after}
