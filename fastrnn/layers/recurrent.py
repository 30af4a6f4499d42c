"""Keras-style recurrent layers: SimpleRNN, LSTM, GRU.

A layer holds its parameters in the Keras layout and gate order, builds them on first call from the input
shape, checks its arguments and calls fastrnn.ops. It has no time loop of its own.

    layer = fastrnn.LSTM(64, return_sequences=True, return_state=True)
    y, h, c = layer(x)                         # x: (batch, timesteps, features)
    layer.set_weights(keras_layer.get_weights())

Training: `forward(x, mask, training=True)` keeps the kernel's tape; `backward(dy, d_states)` maps the gradient of
the Keras-formatted output back to the kernel's input-aligned outputs and final states, runs ops.rnn_backward and
returns dx (the weight gradients go to `grads`, those of the initial states to `d_initial_states`).

stateful=True (Keras): the final states of a call are the initial states of the next one (same, fixed batch size);
`reset_states()` zeros them. Gradients stop at call boundaries (truncated BPTT).

Per-call cost: each call checks x, the states and the mask / lengths as ops.rnn_forward does, but the weights only
when they may have changed (new arrays, set_weights, or a training call, after which an optimizer writes into them):
values written into the live arrays by hand between inference calls are not checked for NaN / inf (as for cells).

freeze(): for inference only (a service). The weight arrays become read-only and W and R are packed once into the
Cython kernel's panels, which inference calls otherwise redo on every call (kernels/README.md, "Packed weights");
training calls are refused until unfreeze(). set_weights still works (it packs again).
"""
import numbers
import threading

import numpy as np

from .. import _checks, initializers, ops
from .base import Layer


def _seed(seed):
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative integer or None; got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed}")
    return int(seed)


_BUILD_LOCK = threading.Lock()


class RecurrentLayer(Layer):
    """What SimpleRNN, LSTM and GRU share. Subclasses set `cell` and may add options."""
    cell = None

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", return_sequences=False,
                 return_state=False, go_backwards=False, zero_output_for_mask=False, dtype="float32",
                 backend="auto", seed=None, name=None, stateful=False, input_shape=None, batch_input_shape=None,
                 trainable=True):
        self.units = _checks.positive_int("units", units)
        self.use_bias = _checks.boolean("use_bias", use_bias)
        self.return_sequences = _checks.boolean("return_sequences", return_sequences)
        self.return_state = _checks.boolean("return_state", return_state)
        self.go_backwards = _checks.boolean("go_backwards", go_backwards)
        self.zero_output_for_mask = _checks.boolean("zero_output_for_mask", zero_output_for_mask)
        self.stateful = _checks.boolean("stateful", stateful)
        self.dtype = _checks.float_dtype(dtype, "dtype")
        self.backend = _checks.choice("backend", backend, ops.BACKENDS)
        self._initializer_args = (kernel_initializer, recurrent_initializer, bias_initializer)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.seed = _seed(seed)
        super().__init__(name=name, dtype=dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        if self.batch_input_shape is not None and len(self.batch_input_shape) != 3:
            raise ValueError(f"{self.name}: batch_input_shape must be (batch, timesteps, features); "
                             f"got {self.batch_input_shape}")
        self.input_dim = None
        self.kernel = self.recurrent_kernel = self.bias = None
        self.backend_used = None  # the backend that ran the last call
        self.d_initial_states = None  # gradients of the last backward with respect to the initial states
        self._tape = None
        self._weights_checked = None  # see _checked_weights
        self._frozen = False
        self._packed = None  # frozen: (kernel, recurrent_kernel, bias, ops.PackedWeights or None), see _packed_for
        # Reused between calls: (backend, dtype, the kernel select_kernel chose for them on non-empty calls), and see
        # _defaults.
        self._kernel = (None, None, None)
        self._last_defaults = (None, None, None)
        # stateful: the batch size is fixed by batch_input_shape or by the first call
        self._batch_size = self.batch_input_shape[0] if (self.stateful and self.batch_input_shape) else None
        self.states = None

    # -- what subclasses vary ------------------------------------------------------------------------------------
    gates = 1

    @property
    def n_states(self):
        return ops.N_STATES[self.cell]

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _init_bias(self, rng):
        return self.bias_initializer(self._bias_shape(), self.dtype, rng)

    def _options(self):
        """(activation, reset_after) of ops.Problem: what the kernel needs beyond the cell."""
        return "tanh", True

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

    def _weight_names(self):
        return ["kernel", "recurrent_kernel"] + (["bias"] if self.use_bias else [])

    def _weight_shapes(self, input_shape=None):
        input_dim = self.input_dim if input_shape is None else input_shape[-1]
        shapes = [(input_dim, self.gates * self.units), (self.units, self.gates * self.units)]
        if self.use_bias:
            shapes.append(self._bias_shape())
        return shapes

    def _apply_weights(self, input_shape, arrays):
        self._weights_checked = None  # the live arrays change in place: check them again at the next call
        if not self._frozen:
            super()._apply_weights(input_shape, arrays)
            return
        # Frozen: the read-only arrays take the new values (nothing else writes them), then are packed again.
        self._packed = None
        for live in self.weights:
            live.flags.writeable = True
        try:
            super()._apply_weights(input_shape, arrays)
        finally:
            self._freeze_arrays()
        self._pack()

    # -- inference with packed weights ---------------------------------------------------------------------------
    @property
    def frozen(self):
        """Whether freeze() holds: inference only, read-only weights, W and R packed once."""
        return self._frozen

    def freeze(self):
        """Inference only from now on, with W and R packed once into the Cython kernel's panels (as ONNX Runtime
        prepacks a session's weights, or torch.jit.freeze folds a module's): an inference call no longer packs
        them (LSTM 512 units, batch 1, T=100: ~12% of its time).

        The weight arrays become read-only (an in-place write raises, and cannot leave the packed copy stale);
        set_weights still loads new values and packs them again; arrays assigned to kernel / recurrent_kernel /
        bias are made read-only at the next call (copied first unless they own their data) and packed. Training
        calls raise until unfreeze() (unlike Keras' trainable=False, which keeps training-mode calls).
        Returns the layer.
        """
        if not self.built:
            raise ValueError(f"{self.name}: freeze needs a built layer; call it on data, build(input_shape) or "
                             "set_weights first")
        self._frozen = True
        self._packed = None
        self._weights_checked = None
        self._freeze_arrays()
        self._pack()
        return self

    def unfreeze(self):
        """Back to a trainable layer: writable weights, packed copy dropped. Returns the layer."""
        if self._frozen:
            self._frozen = False
            self._packed = None
            for w in self.weights:
                w.flags.writeable = True  # arrays of its own (_freeze_arrays)
        return self

    def _freeze_arrays(self):
        """Make each weight attribute a read-only array of the layer's dtype that owns its data: itself (made
        read-only in place) when it already is one, else a copy (a view's base would stay writable)."""
        for name in self._weight_names():
            w = getattr(self, name)
            if not (isinstance(w, np.ndarray) and w.base is None and w.dtype == self.dtype
                    and w.flags.c_contiguous):
                w = np.array(w, dtype=self.dtype, order="C")
                setattr(self, name, w)
            w.flags.writeable = False

    def _pack(self):
        """Check the weights (as a call would) and pack W and R for the Cython kernel (None without it)."""
        W, R, _, _ = self._checked_weights((0, 0, self.input_dim), False)
        packed = ops.PackedWeights(self.cell, W, R, self._options()[1]) if self.backend in ("auto", "cython") \
            else None
        self._packed = (self.kernel, self.recurrent_kernel, self.bias, packed)

    def _packed_for(self, W, R):
        """A frozen layer's ops.PackedWeights for a call whose checked weights are W, R: packed again (and the
        arrays made read-only) when kernel / recurrent_kernel / bias were assigned other arrays since."""
        pk = self._packed
        if pk is None or pk[0] is not self.kernel or pk[1] is not self.recurrent_kernel or pk[2] is not self.bias:
            self._freeze_arrays()
            self._pack()
            pk = self._packed
        # W, R are the attributes themselves (read-only, of the layer's dtype: check_weights converts nothing),
        # unless they were reassigned after this call's check: then its W, R are not what was packed.
        return pk[3] if (W is pk[0] and R is pk[1]) else None

    def __getstate__(self):
        # pickle / deepcopy: without the kernel chosen last (it holds a module and a lock: chosen again at the next
        # call) and the packed array (a copy may start off its 64-byte boundary: packed again at the next call).
        state = self.__dict__.copy()
        state["_kernel"] = (None, None, None)
        state["_packed"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._frozen:
            self._freeze_arrays()  # copies of read-only arrays come back writable

    def _checked_weights(self, x_shape, training):
        """(W, R, b, has_bias) for ops.Problem, checked by ops.check_weights like every argument of rnn_forward.

        Inference calls reuse the result while the weight attributes are the same arrays with the same shapes:
        their dtype, layout and finiteness were checked when first used (checking them again would cost ~2 us of
        a 10 us call). What changes them in place drops it: set_weights, and a training call (an optimizer step
        follows it). Assigning new arrays to kernel / recurrent_kernel / bias is seen here. Writing into the live arrays
        by hand between inference calls skips the finiteness check (as for the cells).
        """
        W, R, b = self.kernel, self.recurrent_kernel, (self.bias if self.use_bias else None)
        c = self._weights_checked
        if (c is not None and not training and c[0] is W and c[1] is R and c[2] is b and c[3] == W.shape
                and c[4] == R.shape and (b is None or c[5] == b.shape)):
            return c[6]
        checked = ops.check_weights(self.cell, [W, R, b], self.dtype, x_shape, self._options()[1])
        # Cache only arrays used as they are: a converted copy would miss later in-place changes of the original.
        unconverted = checked[0] is W and checked[1] is R and (b is None or checked[2] is b)
        self._weights_checked = (W, R, b, W.shape, R.shape, None if b is None else b.shape, checked) \
            if unconverted and not training else None
        return checked

    def _defaults(self, B, T, U):
        """(lengths of an unpadded batch, zero initial states) for (batch, timesteps, units). Made for the last
        (B, T, U) and reused: kernels never write their inputs, and these arrays are never handed out."""
        key, full_lengths, zero_states = self._last_defaults
        if key != (B, T, U):
            full_lengths = ops.full_lengths(B, T)
            zero_states = ops.check_initial_states(self.cell, None, B, U, self.dtype)
            self._last_defaults = ((B, T, U), full_lengths, zero_states)
        return full_lengths, zero_states

    def _input_shape_from_weights(self, arrays):
        if arrays[0].ndim != 2:
            raise ValueError(f"{self.name}: kernel must have shape (input_dim, {self.gates}*units="
                             f"{self.gates * self.units}); got shape {arrays[0].shape}")
        return (None, None, _checks.positive_int("kernel.shape[0] (input_dim)", arrays[0].shape[0]))

    # -- shapes and masks ----------------------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        """(batch, timesteps, units) with return_sequences, else (batch, units); with return_state a list
        [output shape, state shapes...]."""
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: input_shape must be (batch, timesteps, features); got {input_shape}")
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out] + [(B, self.units)] * self.n_states
        return out

    def compute_mask(self, mask):
        """Keras: the mask passes on only with return_sequences (unchanged, even with go_backwards)."""
        return mask if self.return_sequences else None

    # -- call ----------------------------------------------------------------------------------------------------
    def __call__(self, x, initial_state=None, mask=None, lengths=None, training=False):
        """Run the layer on x (batch, timesteps, features).

        initial_state: h0, or [h0] / [h0, c0] for LSTM.  mask: a (batch, timesteps) right-padded boolean mask,
        or lengths: (batch,) ints.  Returns the output ((batch, timesteps, units) with return_sequences, else
        (batch, units)); with return_state, a list [output, h] (LSTM: [output, h, c]).
        training=True keeps what backward needs.
        """
        return self._run(x, initial_state, mask, lengths, training)

    def forward(self, x, mask=None, training=False, initial_state=None, lengths=None):
        """The Layer protocol's forward: the same as calling the layer."""
        return self._run(x, initial_state, mask, lengths, training)

    def _run(self, x, initial_state, mask, lengths, training, flip_time=False):
        """flip_time=True returns sequences reversed in time relative to Keras' format (Bidirectional's backward
        half: with go_backwards that is the kernel's input-aligned output, no flip at all)."""
        training = _checks.boolean("training", training)
        # Finiteness is checked here, on the caller's array: once converted, a float64 1e300 is a float32 inf, and
        # ops could only report "contains NaN or inf" instead of "beyond the range of float32".
        x = _checks.as_array("x", x, self.dtype)
        _checks.check_rank("x", x, 3, "(batch, timesteps, features)")
        if not self.built:
            # Concurrent first calls (a service's threads) must build once: two builds would give different
            # initial weights, and calls running meanwhile a mix of both sets.
            with _BUILD_LOCK:
                if not self.built:
                    self.build(x.shape)
        if x.shape[2] != self.input_dim:
            raise ValueError(f"{self.name}: x must have shape (batch, timesteps, features={self.input_dim}); "
                             f"got shape {x.shape}")
        B, T, _ = x.shape
        if mask is not None and lengths is not None:
            raise ValueError(f"{self.name}: pass mask or lengths, not both")
        lens = _checks.mask_to_lengths(mask, B, T) if mask is not None else _checks.as_lengths(lengths, B, T)
        if self.stateful:
            if self._batch_size is not None and B != self._batch_size:
                raise ValueError(f"{self.name}: a stateful layer has a fixed batch size of {self._batch_size} "
                                 f"(from batch_input_shape or its first call); got x of shape {x.shape}")
            if initial_state is None:
                initial_state = self.states

        # ops.rnn_forward's checks, in its order, less what this layer checked at construction (options) or
        # keeps checked (weights): the same errors for the same arguments, at a third of the cost.
        if training and self._frozen:
            raise ValueError(f"{self.name}: the layer is frozen for inference (freeze()); call unfreeze() before "
                             "training calls")
        W, R, b, has_bias = self._checked_weights(x.shape, training)
        packed = self._packed_for(W, R) if self._frozen else None
        full_lengths, zero_states = self._defaults(B, T, R.shape[0])
        states = zero_states if initial_state is None else \
            ops.check_initial_states(self.cell, initial_state, B, R.shape[0], self.dtype)
        activation, reset_after = self._options()
        p = ops.Problem(self.cell, x, W, R, b, has_bias, states, full_lengths if lens is None else lens,
                        self.go_backwards, activation, reset_after, packed)
        backend, dtype, kernel = self._kernel
        if backend != self.backend or dtype != self.dtype or not (B and T):
            kernel = ops.select_kernel(self.cell, self.backend, self.dtype, p.shape)  # empty shapes: the reference
            if B and T:
                self._kernel = (self.backend, self.dtype, kernel)
        out = ops.forward_problem(p, training, kernel, self.backend)
        self.backend_used = out.backend
        if self.stateful:
            self._batch_size = B
            self.states = [s.copy() for s in out.states]
        self._tape = (out, lens, flip_time) if training else None
        return self._format(out, lens, flip_time)

    def _format(self, out, lens, flip_time=False):
        """Keras conventions for the kernel's input-aligned outputs."""
        y, states = out.outputs, out.states
        B, T = y.shape[:2]
        if self.return_sequences:
            if not self.go_backwards and lens is not None and not self.zero_output_for_mask:
                # Keras carries the last valid output over masked steps (zeros before the first valid one)
                padded = np.arange(T)[None, :] >= lens[:, None]
                carry = np.where(lens[:, None] > 0, states[0], 0)
                y = np.where(padded[:, :, None], carry[:, None, :], y)
            if self.go_backwards != flip_time:
                y = y[:, ::-1]  # Keras go_backwards: output step s is processing step s over the flipped sequence
            output = np.ascontiguousarray(y)
        else:
            # h is fresh from the kernel: copy it only where the same array would be returned twice (with the
            # states) or written to below (the tape keeps the states, but rnn_backward does not read them).
            output = states[0].copy() if (self.return_state or lens is not None) else states[0]
            if lens is not None:
                # Keras returns its last output step: zeros for a row with no valid step (its state stays h0),
                # and, with zero_output_for_mask, zeros for a row whose last step is padding.
                output[lens == 0] = 0
                if self.zero_output_for_mask and not self.go_backwards:
                    output[lens < T] = 0
        if self.return_state:
            return [output, *states]
        return output

    # -- backward ------------------------------------------------------------------------------------------------
    def backward(self, dy, d_states=None):
        """Gradients for the last forward(training=True).

        dy: gradient of the output (None for zeros); with return_state it may also be the list
        [d_output, d_h (, d_c)] matching the returned list. d_states: gradients of the returned final states
        (list, entries may be None). Returns dx (batch, timesteps, features); fills `grads` (kernel,
        recurrent_kernel[, bias]) and `d_initial_states`.
        """
        if self._tape is None:
            raise self._no_tape()
        out, lens, flip_time = self._tape
        n = self.n_states
        if self.return_state and isinstance(dy, (list, tuple)):
            if d_states is not None:
                raise ValueError(f"{self.name}: pass the state gradients in dy's list or as d_states, not both")
            if len(dy) != 1 + n:
                raise ValueError(f"{self.name}: dy must be [d_output] + {n} state gradient(s) like the output "
                                 f"list; got a list of {len(dy)}")
            dy, d_states = dy[0], list(dy[1:])
        B, T, U = out.outputs.shape
        if d_states is None:
            d_states = [None] * n
        elif isinstance(d_states, np.ndarray) or not isinstance(d_states, (list, tuple)):
            d_states = [d_states]
        if len(d_states) != n:
            raise ValueError(f"{self.name}: d_states must hold {n} array(s); got {len(d_states)}")
        ds = []
        for k, g in enumerate(d_states):
            if g is None:
                ds.append(np.zeros((B, U), self.dtype))
            else:
                g = _checks.as_array(f"d_states[{k}]", g, self.dtype)
                _checks.check_shape(f"{self.name}: d_states[{k}]", g, (B, U), f"(batch={B}, units={U})")
                ds.append(g.copy())

        d_outputs = None
        if dy is not None:
            dy = self._as_output_grad(dy, (B, T, U) if self.return_sequences else (B, U))
            if self.return_sequences:
                d = dy[:, ::-1] if self.go_backwards != flip_time else dy
                if not self.go_backwards and lens is not None and not self.zero_output_for_mask:
                    # padded steps carried the final output h_T (rows with a valid step): their gradient goes there
                    padded = np.arange(T)[None, :] >= lens[:, None]
                    carried = padded & (lens[:, None] > 0)
                    ds[0] += (d * carried[:, :, None]).sum(axis=1)
                d_outputs = d  # the kernel ignores entries at padded positions
            else:
                g = dy.copy()
                if lens is not None:
                    g[lens == 0] = 0
                    if self.zero_output_for_mask and not self.go_backwards:
                        g[lens < T] = 0
                ds[0] += g
        grads = ops.rnn_backward(out, d_outputs, ds)
        self._grads = list(grads.d_weights)
        self.d_initial_states = tuple(grads.d_initial_states)
        return grads.dx

    # -- stateful ------------------------------------------------------------------------------------------------
    def reset_states(self, states=None):
        """Stateful layers: zero the states (states=None), or set them to `states` (h, or [h] / [h, c])."""
        if not self.stateful:
            raise ValueError(f"{self.name}: reset_states needs a stateful layer (stateful=True)")
        n = self.n_states
        if states is None:
            self.states = (None if self._batch_size is None else
                           [np.zeros((self._batch_size, self.units), self.dtype) for _ in range(n)])
            return
        if isinstance(states, np.ndarray) or not isinstance(states, (list, tuple)):
            states = [states]
        if len(states) != n:
            raise ValueError(f"{self.name}: states must hold {n} array(s) {'[h, c]' if n == 2 else '[h]'}; "
                             f"got {len(states)}")
        arrays = []
        for label, s in zip(("states h", "states c"), states):
            s = _checks.as_array(label, s, self.dtype)
            _checks.check_rank(label, s, 2, "(batch, units)")
            B = self._batch_size if self._batch_size is not None else s.shape[0]
            _checks.check_shape(f"{self.name}: {label}", s, (B, self.units), f"(batch={B}, units={self.units})")
            arrays.append(s.copy())
        self._batch_size = arrays[0].shape[0]
        self.states = arrays

    reset_state = reset_states  # Keras 3 name

    # -- config --------------------------------------------------------------------------------------------------
    def get_config(self):
        kernel_init, recurrent_init, bias_init = self._initializer_args
        config = super().get_config()
        config.update(units=self.units, use_bias=self.use_bias, kernel_initializer=kernel_init,
                      recurrent_initializer=recurrent_init, bias_initializer=bias_init,
                      return_sequences=self.return_sequences, return_state=self.return_state,
                      go_backwards=self.go_backwards, zero_output_for_mask=self.zero_output_for_mask,
                      backend=self.backend, seed=self.seed, stateful=self.stateful)
        return config

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
        return self.activation, True

    def get_config(self):
        return dict(super().get_config(), activation=self.activation)


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

    def get_config(self):
        return dict(super().get_config(), unit_forget_bias=self.unit_forget_bias)


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
        return "tanh", self.reset_after

    def get_config(self):
        return dict(super().get_config(), reset_after=self.reset_after)
