"""Bidirectional: a forward and a backward copy of a recurrent layer over the same input, merged (Keras 3).

    bi = fastrnn.Bidirectional(fastrnn.LSTM(32, return_sequences=True))     # output (batch, timesteps, 64)
    bi.get_weights()   # forward kernel, recurrent_kernel, bias, then the backward ones (Keras order)

Like Keras, the forward half is a fresh copy of `layer` named "forward_<name>" and the backward half a copy with
go_backwards flipped named "backward_<name>" (or `backward_layer`); with return_sequences both halves use
zero_output_for_mask=True, and the backward half's sequence is flipped back so that both are aligned with the
input. The backward half runs ops with reverse=True and its outputs come out input-aligned already, so it
honours lengths / masks without any flip.
"""
import numpy as np

from .. import _checks
from .base import Layer
from .recurrent import RecurrentLayer

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _removeprefix(s, prefix):
    return s[len(prefix):] if s.startswith(prefix) else s


class Bidirectional(Layer):
    """merge_mode: "concat" (default), "sum", "mul", "ave", or None (returns [forward output, backward output]).

    With return_state the result is [output(s)..., forward states..., backward states...]; initial_state takes
    the same order (forward states first).
    """

    def __init__(self, layer, merge_mode="concat", backward_layer=None, name=None, input_shape=None,
                 batch_input_shape=None, trainable=True):
        if not isinstance(layer, RecurrentLayer):
            raise TypeError(f"layer must be a recurrent layer (SimpleRNN, LSTM or GRU); got {type(layer).__name__}")
        if merge_mode is not None and (not isinstance(merge_mode, str) or merge_mode not in MERGE_MODES):
            raise ValueError(f"merge_mode must be one of 'concat', 'sum', 'mul', 'ave' or None; got {merge_mode!r}")
        config = layer.get_config()
        config["name"] = "forward_" + _removeprefix(layer.name, "forward_")
        self.forward_layer = type(layer).from_config(config)
        if backward_layer is None:
            config = layer.get_config()
            config["go_backwards"] = not layer.go_backwards
            config["name"] = "backward_" + _removeprefix(layer.name, "backward_")
            if config["seed"] is not None:  # different initial weights, still reproducible
                config["seed"] = int(np.random.SeedSequence([config["seed"], 1]).generate_state(1)[0])
            self.backward_layer = type(layer).from_config(config)
        else:
            if not isinstance(backward_layer, RecurrentLayer):
                raise TypeError("backward_layer must be a recurrent layer (SimpleRNN, LSTM or GRU) or None; "
                                f"got {type(backward_layer).__name__}")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError("backward_layer must have a go_backwards different from layer's; got "
                                 f"go_backwards={layer.go_backwards} for both")
            for attr in ("stateful", "return_sequences", "return_state", "dtype"):
                if getattr(layer, attr) != getattr(backward_layer, attr):
                    raise ValueError(f"backward_layer must have the same {attr} as layer; got "
                                     f"{getattr(backward_layer, attr)} and {getattr(layer, attr)}")
            if merge_mode in ("sum", "mul", "ave") and backward_layer.units != layer.units:
                raise ValueError(f"merge_mode={merge_mode!r} needs the same units in both halves; got "
                                 f"{layer.units} and {backward_layer.units}")
            self.backward_layer = backward_layer
        for half in (self.forward_layer, self.backward_layer):
            half.zero_output_for_mask = half.return_sequences  # Keras: masked steps give zeros
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        super().__init__(name=name, dtype=layer.dtype, input_shape=input_shape, batch_input_shape=batch_input_shape,
                         trainable=trainable)
        if self.batch_input_shape is None:
            self.batch_input_shape = layer.batch_input_shape
        self.built = self.forward_layer.built and self.backward_layer.built
        self.d_initial_states = None
        self._tape = None

    @property
    def stateful(self):
        return self.forward_layer.stateful

    @property
    def backend_used(self):
        return self.forward_layer.backend_used

    # -- parameters ----------------------------------------------------------------------------------------------
    def build(self, input_shape):
        for half in (self.forward_layer, self.backward_layer):
            if not half.built:
                half.build(input_shape)
        self.built = True

    def _weight_names(self):
        return ([f"forward {n}" for n in self.forward_layer._weight_names()]
                + [f"backward {n}" for n in self.backward_layer._weight_names()])

    def _weight_shapes(self, input_shape=None):
        return self.forward_layer._weight_shapes(input_shape) + self.backward_layer._weight_shapes(input_shape)

    @property
    def weights(self):
        if not self.built:
            return []
        return self.forward_layer.weights + self.backward_layer.weights

    @property
    def grads(self):
        return self.forward_layer.grads + self.backward_layer.grads

    def set_weights(self, weights):
        """Forward weights then backward weights (Keras get_weights order)."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{self.name}: weights must be a list of arrays; got {type(weights).__name__}")
        names = self._weight_names()
        if len(weights) != len(names):
            raise ValueError(f"{self.name}: set_weights needs {len(names)} arrays [{', '.join(names)}]; "
                             f"got {len(weights)}")
        nf = len(self.forward_layer._weight_names())
        fwd = self.forward_layer._prepare_weights(list(weights[:nf]))
        bwd = self.backward_layer._prepare_weights(list(weights[nf:]))
        if fwd[0] is not None and bwd[0] is not None and fwd[0][-1] != bwd[0][-1]:
            raise ValueError(f"{self.name}: forward and backward kernels must have the same input_dim; got "
                             f"{fwd[0][-1]} and {bwd[0][-1]}")
        self.forward_layer._apply_weights(*fwd)
        self.backward_layer._apply_weights(*bwd)
        self.built = True

    # -- inference with packed weights ---------------------------------------------------------------------------
    @property
    def frozen(self):
        return self.forward_layer.frozen and self.backward_layer.frozen

    def freeze(self):
        """Both halves frozen for inference (RecurrentLayer.freeze). Returns the layer."""
        if not self.built:
            raise ValueError(f"{self.name}: freeze needs a built layer; call it on data, build(input_shape) or "
                             "set_weights first")
        self.forward_layer.freeze()
        self.backward_layer.freeze()
        return self

    def unfreeze(self):
        self.forward_layer.unfreeze()
        self.backward_layer.unfreeze()
        return self

    def count_params(self):
        if not self.built:
            raise ValueError(f"{self.name}: count_params needs a built layer; call it on data or build(input_shape)")
        return self.forward_layer.count_params() + self.backward_layer.count_params()

    # -- shapes and masks ----------------------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        out = self.forward_layer.compute_output_shape(input_shape)
        bout = self.backward_layer.compute_output_shape(input_shape)
        states = bstates = []
        if self.return_state:
            out, states, bout, bstates = out[0], out[1:], bout[0], bout[1:]
        if self.merge_mode == "concat":
            out = out[:-1] + (out[-1] + bout[-1],)
        elif self.merge_mode is None:
            out = [out, bout]
        if self.return_state:
            return (out if self.merge_mode is None else [out]) + states + bstates
        return out

    def compute_mask(self, mask):
        out = mask if self.return_sequences else None
        return [out, out] if self.merge_mode is None else out

    # -- running -------------------------------------------------------------------------------------------------
    def __call__(self, x, initial_state=None, mask=None, lengths=None, training=False):
        return self.forward(x, mask=mask, training=training, initial_state=initial_state, lengths=lengths)

    def _split_states(self, states, what):
        nf, nb = self.forward_layer.n_states, self.backward_layer.n_states
        if not isinstance(states, (list, tuple)) or len(states) != nf + nb:
            got = f"a list of {len(states)}" if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"{self.name}: {what} must be a list of {nf + nb} arrays (forward states then "
                             f"backward states); got {got}")
        return list(states[:nf]), list(states[nf:])

    def forward(self, x, mask=None, training=False, initial_state=None, lengths=None):
        training = _checks.boolean("training", training)
        fs = bs = None
        if initial_state is not None:
            fs, bs = self._split_states(initial_state, "initial_state")
        y_f = self.forward_layer._run(x, fs, mask, lengths, training)
        y_b = self.backward_layer._run(x, bs, mask, lengths, training, flip_time=self.return_sequences)
        states = []
        if self.return_state:
            states = y_f[1:] + y_b[1:]
            y_f, y_b = y_f[0], y_b[0]
        self.built = True
        self._tape = (y_f, y_b) if training else None
        if self.merge_mode == "concat":
            out = np.concatenate([y_f, y_b], axis=-1)
        elif self.merge_mode == "sum":
            out = y_f + y_b
        elif self.merge_mode == "ave":
            out = (y_f + y_b) / self.dtype.type(2)
        elif self.merge_mode == "mul":
            out = y_f * y_b
        else:
            out = [y_f, y_b]
        if self.return_state:
            return (out if self.merge_mode is None else [out]) + states
        return out

    def backward(self, dy, d_states=None):
        """dy: gradient of the merged output (merge_mode None: [d_forward, d_backward]); with return_state it may
        also be the whole list like the output. d_states: forward then backward state gradients."""
        if self._tape is None:
            raise self._no_tape()
        y_f, y_b = self._tape
        n_out = 2 if self.merge_mode is None else 1
        nf, nb = self.forward_layer.n_states, self.backward_layer.n_states
        if self.return_state and isinstance(dy, (list, tuple)) and len(dy) == n_out + nf + nb:
            if d_states is not None:
                raise ValueError(f"{self.name}: pass the state gradients in dy's list or as d_states, not both")
            d_states = list(dy[n_out:])
            dy = dy[0] if n_out == 1 else list(dy[:2])
        fs = bs = None
        if d_states is not None:
            fs, bs = self._split_states(d_states, "d_states")
        if self.merge_mode is None:
            if dy is None:
                dy = [None, None]
            if not isinstance(dy, (list, tuple)) or len(dy) != 2:
                raise ValueError(f"{self.name}: with merge_mode=None, dy must be [d_forward, d_backward]")
            d_f, d_b = dy
        elif dy is None:
            d_f = d_b = None
        else:
            shape = y_f.shape[:-1] + (y_f.shape[-1] + y_b.shape[-1],) if self.merge_mode == "concat" else y_f.shape
            dy = self._as_output_grad(dy, shape)
            if self.merge_mode == "concat":
                d_f, d_b = dy[..., :y_f.shape[-1]], dy[..., y_f.shape[-1]:]
            elif self.merge_mode == "sum":
                d_f = d_b = dy
            elif self.merge_mode == "ave":
                d_f = d_b = dy / self.dtype.type(2)
            else:
                d_f, d_b = dy * y_b, dy * y_f
        dx = self.forward_layer.backward(d_f, fs)
        dx += self.backward_layer.backward(d_b, bs)
        self.d_initial_states = self.forward_layer.d_initial_states + self.backward_layer.d_initial_states
        return dx

    # -- stateful ------------------------------------------------------------------------------------------------
    @property
    def states(self):
        f, b = self.forward_layer.states, self.backward_layer.states
        return None if f is None or b is None else f + b

    def reset_states(self, states=None):
        """Zero both halves' states, or set them: [forward states..., backward states...]."""
        if not self.stateful:
            raise ValueError(f"{self.name}: reset_states needs a stateful layer (stateful=True)")
        fs = bs = None
        if states is not None:
            fs, bs = self._split_states(states, "states")
        self.forward_layer.reset_states(fs)
        self.backward_layer.reset_states(bs)

    reset_state = reset_states

    # -- config --------------------------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        del config["dtype"]
        config.update(merge_mode=self.merge_mode,
                      layer=(type(self.forward_layer), self.forward_layer.get_config()),
                      backward_layer=(type(self.backward_layer), self.backward_layer.get_config()))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer_cls, layer_config = config.pop("layer")
        back_cls, back_config = config.pop("backward_layer")
        return cls(layer_cls.from_config(layer_config), backward_layer=back_cls.from_config(back_config), **config)

    def __repr__(self):
        return f"Bidirectional({self.forward_layer!r}, merge_mode={self.merge_mode!r}, name={self.name!r})"
