"""Keras 3 <-> fastrnn: layers and Sequential models, with their options and weights.

    from fastrnn.interop.keras import from_keras, to_keras, load_keras_weights

    model = from_keras(keras_model)            # a fastrnn.Sequential: same layers, options, weights and outputs
    layer = from_keras(keras_layer)            # SimpleRNN / LSTM / GRU / Bidirectional / Dense / Embedding / ...
    kmodel = to_keras(model)                   # back to a keras.Sequential (keras is imported here, lazily)
    load_keras_weights(model, keras_model)     # weights only, into an existing fastrnn object of the same shape

Supported: keras.Sequential (optionally starting with keras.Input), SimpleRNN (tanh / relu), LSTM, GRU (reset_after
True or False), Bidirectional (every merge mode, with or without backward_layer), Dense, Embedding, Dropout,
Activation, Flatten, RepeatVector, InputLayer; float32 and float64 dtype policies.

Keras objects are read only through their public `get_config()` and `get_weights()` (and a Sequential's `layers`
list). Weights need no conversion: fastrnn uses Keras' layout and gate order (LSTM i, f, c, o; GRU z, r, h; GRU
reset_after=True bias (2, 3*units)). Masks (Embedding(mask_zero=True) on right-padded data) follow Keras:
`zero_output_for_mask` (default False, True inside Bidirectional with return_sequences) is carried over.

Options that change the outputs and that fastrnn has no equivalent for (a recurrent_activation other than sigmoid,
an unsupported activation, a mixed-precision or float16 dtype policy, another layer type, a functional model...)
raise a ValueError naming the layer and the option. Options that only matter while training in Keras (dropout and
recurrent_dropout of a recurrent layer, regularizers, constraints) raise too by default; with strict=False they are
dropped with a warning, which keeps inference outputs equal. Initializers are carried over when fastrnn has the same
one (they matter only for layers that are not built yet). The states of a stateful layer are not transferred (a
converted stateful layer starts from zeros).
"""
import warnings

import numpy as np

from .. import ops
from ..layers.base import Layer
from ..layers.core import Activation, Dense, Dropout, Embedding, Flatten, Input, RepeatVector
from ..layers.recurrent import GRU, LSTM, RecurrentLayer, SimpleRNN
from ..layers.wrappers import Bidirectional
from ..models import Sequential

__all__ = ["from_keras", "to_keras", "load_keras_weights"]

# Keras config keys that only matter while training with Keras (defaults: None, or 0.0 for the dropouts).
_TRAINING_ONLY = ("dropout", "recurrent_dropout", "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                  "activity_regularizer", "embeddings_regularizer", "kernel_constraint", "recurrent_constraint",
                  "bias_constraint", "embeddings_constraint")
# Keras config keys with no effect on outputs: implementation choices of a recurrent layer.
_IGNORED = ("unroll", "use_cudnn")

# Keras initializer class -> (fastrnn name, the Keras parameters it assumes)
_INITIALIZERS = {
    "GlorotUniform": ("glorot_uniform", {}), "GlorotNormal": ("glorot_normal", {}),
    "HeUniform": ("he_uniform", {}), "HeNormal": ("he_normal", {}),
    "Orthogonal": ("orthogonal", {"gain": 1.0}), "Zeros": ("zeros", {}), "Ones": ("ones", {}),
    "RandomUniform": ("random_uniform", {"minval": -0.05, "maxval": 0.05}),
    "RandomNormal": ("random_normal", {"mean": 0.0, "stddev": 0.05}),
}
_INITIALIZER_ALIASES = {"uniform": "random_uniform", "normal": "random_normal"}


def _keras():
    """Import Keras 3 (lazily: only the functions that build Keras objects need it)."""
    try:
        import keras
    except ImportError as exc:
        raise ImportError("fastrnn.interop.keras needs Keras 3 (pip install 'keras>=3' and a backend, e.g. "
                          "torch with KERAS_BACKEND=torch)") from exc
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ImportError(f"fastrnn.interop.keras needs Keras 3; found keras {version}")
    return keras


def _is_keras_object(obj):
    """A Keras layer or model (also a user's subclass of one, which from_keras then rejects by its class name)."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__) and hasattr(obj, "get_config")


# ---------------------------------------------------------------------------------------------------------------
# Keras -> fastrnn
# ---------------------------------------------------------------------------------------------------------------
class _Config:
    """A Keras layer's config, consumed key by key; `finish` rejects whatever is left that matters."""

    def __init__(self, kind, config, strict):
        self.kind = kind
        self.config = dict(config)
        self.name = self.config.get("name", kind.lower())
        self.strict = strict

    def where(self):
        return f"Keras layer {self.name!r} ({self.kind})"

    def error(self, message):
        return ValueError(f"{self.where()}: {message}")

    def pop(self, key, default=None):
        return self.config.pop(key, default)

    def choice(self, key, allowed, default, why):
        value = self.config.pop(key, default)
        if value not in allowed:
            raise self.error(f"{key}={value!r} is not supported ({why})")
        return value

    def dtype(self):
        return _policy_name(self.config.pop("dtype", None), self)

    def initializer(self, key, default):
        """The fastrnn initializer equal to Keras' one, or fastrnn's default (it only matters before weights load)."""
        value = self.config.pop(key, None)
        if isinstance(value, str):
            value = _INITIALIZER_ALIASES.get(value, value)
            return value if value in _fastrnn_initializers() else default
        if isinstance(value, dict):
            name, params = _INITIALIZERS.get(value.get("class_name"), (None, None))
            cfg = value.get("config") or {}
            if name is not None and all(np.isclose(cfg.get(k, v), v) for k, v in params.items()):
                return name
        return default

    def finish(self):
        """Training-only options (strict: error, else warning) and unknown options that are set (error)."""
        dropped = []
        for key in _TRAINING_ONLY:
            value = self.config.pop(key, None)
            if value not in (None, 0, 0.0):
                if self.strict:
                    raise self.error(f"{key}={_short(value)} is not supported (fastrnn has no {key}); it only "
                                     "matters while training, so from_keras(..., strict=False) drops it "
                                     "(inference outputs stay equal)")
                dropped.append(key)
        if dropped:
            warnings.warn(f"{self.where()}: dropped {', '.join(dropped)} (training-only; strict=False)",
                          UserWarning, stacklevel=2)
        for key in _IGNORED:
            self.config.pop(key, None)
        for key, value in self.config.items():
            if value is None or value is False or (isinstance(value, (int, float)) and value == 0) or value in ("",):
                continue  # an option left at its "off" value
            if isinstance(value, (dict, list, tuple)) and not value:
                continue
            raise self.error(f"option {key}={_short(value)} is not supported by fastrnn")


def _fastrnn_initializers():
    from .. import initializers
    return initializers.INITIALIZERS


def _short(value):
    if isinstance(value, dict) and "class_name" in value:
        return f"{value['class_name']}({value.get('config') or ''})"
    return repr(value)


def _policy_name(value, cfg):
    """float32 / float64 from a Keras dtype or DTypePolicy config; anything else is an error."""
    if value is None:
        return "float32"
    name = value
    if isinstance(value, dict):
        name = (value.get("config") or {}).get("name")
    if name not in ("float32", "float64"):
        raise cfg.error(f"dtype {_short(value) if isinstance(value, dict) else repr(value)} is not supported "
                        "(fastrnn runs float32 or float64; no mixed precision)")
    return name


def _activation(cfg, key, default, allowed, why):
    value = cfg.pop(key, default)
    if isinstance(value, dict):  # a serialized function (custom, or a built-in in some versions)
        value = value.get("config") if isinstance(value.get("config"), str) else value
    if value not in allowed:
        raise cfg.error(f"{key}={_short(value)} is not supported ({why})")
    return value


def _common(cfg):
    return dict(name=cfg.pop("name"), trainable=bool(cfg.pop("trainable", True)), dtype=cfg.dtype())


def _recurrent_from_config(kind, config, strict, backend):
    cls = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}[kind]
    cfg = _Config(kind, config, strict)
    kwargs = _common(cfg)
    kwargs.update(
        units=cfg.pop("units"), use_bias=bool(cfg.pop("use_bias", True)),
        return_sequences=bool(cfg.pop("return_sequences", False)), return_state=bool(cfg.pop("return_state", False)),
        go_backwards=bool(cfg.pop("go_backwards", False)), stateful=bool(cfg.pop("stateful", False)),
        zero_output_for_mask=bool(cfg.pop("zero_output_for_mask", False)), backend=backend,
        kernel_initializer=cfg.initializer("kernel_initializer", "glorot_uniform"),
        recurrent_initializer=cfg.initializer("recurrent_initializer", "orthogonal"),
        bias_initializer=cfg.initializer("bias_initializer", "zeros"))
    if kind == "SimpleRNN":
        kwargs["activation"] = _activation(cfg, "activation", "tanh", ("tanh", "relu"),
                                           "fastrnn's SimpleRNN runs tanh or relu")
    else:
        _activation(cfg, "activation", "tanh", ("tanh",), f"fastrnn's {kind} runs tanh")
        _activation(cfg, "recurrent_activation", "sigmoid", ("sigmoid",), f"fastrnn's {kind} gates use sigmoid")
    if kind == "LSTM":
        kwargs["unit_forget_bias"] = bool(cfg.pop("unit_forget_bias", True))
    if kind == "GRU":
        kwargs["reset_after"] = bool(cfg.pop("reset_after", True))
    cfg.pop("seed")  # seeds Keras' dropout masks only
    _shape_options(cfg, kwargs)
    cfg.finish()
    return cls(**kwargs)


def _shape_options(cfg, kwargs):
    """Keras 3 layers normally carry no input shape (keras.Input does); accept the Keras 2 style keys if present."""
    for key in ("batch_input_shape", "batch_shape"):
        value = cfg.pop(key)
        if value is not None:
            kwargs["batch_input_shape"] = tuple(value)
    value = cfg.pop("input_shape")
    if value is not None and "batch_input_shape" not in kwargs:
        kwargs["input_shape"] = tuple(value)


def _bidirectional_from_config(config, strict, backend):
    cfg = _Config("Bidirectional", config, strict)
    name, trainable = cfg.pop("name"), bool(cfg.pop("trainable", True))
    dtype = cfg.dtype()
    merge_mode = cfg.choice("merge_mode", ("concat", "sum", "mul", "ave", None), "concat",
                            "fastrnn merges with concat, sum, mul, ave or None")
    halves = []
    for key in ("layer", "backward_layer"):
        sub = cfg.pop(key)
        if sub is None:
            halves.append(None)
            continue
        kind = sub.get("class_name")
        if kind not in ("SimpleRNN", "LSTM", "GRU"):
            raise cfg.error(f"{key} {kind!r} is not supported (fastrnn wraps SimpleRNN, LSTM or GRU)")
        try:
            halves.append(_recurrent_from_config(kind, sub["config"], strict, backend))
        except ValueError as exc:
            raise cfg.error(f"its {key}: {exc}") from None
    forward, backward = halves
    for half in halves:
        if half is not None and half.dtype.name != dtype:
            raise cfg.error(f"dtype {dtype!r} differs from its layer's dtype {half.dtype.name!r} (Keras would cast "
                            "the input to the wrapper's dtype first); give both the same dtype")
    kwargs = {}
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Bidirectional(forward, merge_mode=merge_mode, backward_layer=backward, name=name, trainable=trainable,
                         **kwargs)


def _dense_from_config(config, strict):
    from ..layers import activations
    cfg = _Config("Dense", config, strict)
    kwargs = _common(cfg)
    kwargs.update(units=cfg.pop("units"), use_bias=bool(cfg.pop("use_bias", True)),
                  activation=_activation(cfg, "activation", "linear", tuple(activations.ACTIVATIONS),
                                         f"fastrnn's activations are {', '.join(sorted(activations.ACTIVATIONS))}"),
                  kernel_initializer=cfg.initializer("kernel_initializer", "glorot_uniform"),
                  bias_initializer=cfg.initializer("bias_initializer", "zeros"))
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Dense(**kwargs)


def _embedding_from_config(config, strict):
    cfg = _Config("Embedding", config, strict)
    kwargs = _common(cfg)
    kwargs.update(input_dim=cfg.pop("input_dim"), output_dim=cfg.pop("output_dim"),
                  mask_zero=bool(cfg.pop("mask_zero", False)),
                  embeddings_initializer=cfg.initializer("embeddings_initializer", "random_uniform"))
    cfg.pop("input_length")  # Keras 2 only
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Embedding(**kwargs)


def _dropout_from_config(config, strict):
    cfg = _Config("Dropout", config, strict)
    kwargs = _common(cfg)
    noise_shape = cfg.pop("noise_shape")
    kwargs.update(rate=cfg.pop("rate"), seed=cfg.pop("seed"),
                  noise_shape=None if noise_shape is None else tuple(noise_shape))
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Dropout(**kwargs)


def _activation_layer_from_config(config, strict):
    from ..layers import activations
    cfg = _Config("Activation", config, strict)
    kwargs = _common(cfg)
    kwargs["activation"] = _activation(cfg, "activation", "linear", tuple(activations.ACTIVATIONS),
                                       f"fastrnn's activations are {', '.join(sorted(activations.ACTIVATIONS))}")
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Activation(**kwargs)


def _flatten_from_config(config, strict):
    cfg = _Config("Flatten", config, strict)
    kwargs = _common(cfg)
    cfg.choice("data_format", ("channels_last", None), "channels_last",
               "fastrnn's Flatten keeps the channels-last order")
    _shape_options(cfg, kwargs)
    cfg.finish()
    return Flatten(**kwargs)


def _repeat_vector_from_config(config, strict):
    cfg = _Config("RepeatVector", config, strict)
    kwargs = _common(cfg)
    kwargs["n"] = cfg.pop("n")
    _shape_options(cfg, kwargs)
    cfg.finish()
    return RepeatVector(**kwargs)


def _input_from_config(config, strict):
    cfg = _Config("InputLayer", config, strict)
    name = cfg.pop("name")
    shape = cfg.pop("batch_shape") or cfg.pop("batch_input_shape")
    if shape is None:
        raise cfg.error("needs a batch_shape")
    dtype = cfg.pop("dtype") or "float32"
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise cfg.error(f"dtype {dtype!r} is not supported") from None
    cfg.pop("optional")
    cfg.finish()
    return Input(tuple(shape[1:]), batch_size=shape[0], dtype=dtype, name=name)


_FROM_CONFIG = {
    "Dense": _dense_from_config, "Embedding": _embedding_from_config, "Dropout": _dropout_from_config,
    "Activation": _activation_layer_from_config, "Flatten": _flatten_from_config,
    "RepeatVector": _repeat_vector_from_config, "InputLayer": _input_from_config,
}


def _layer_from_config(kind, config, strict, backend):
    if kind in ("SimpleRNN", "LSTM", "GRU"):
        return _recurrent_from_config(kind, config, strict, backend)
    if kind == "Bidirectional":
        return _bidirectional_from_config(config, strict, backend)
    if kind in _FROM_CONFIG:
        return _FROM_CONFIG[kind](config, strict)
    name = config.get("name", "?") if isinstance(config, dict) else "?"
    raise ValueError(f"Keras layer {name!r} ({kind}): layer type {kind} is not supported by fastrnn (supported: "
                     "SimpleRNN, LSTM, GRU, Bidirectional, Dense, Embedding, Dropout, Activation, Flatten, "
                     "RepeatVector, InputLayer, and Sequential models of them)")


def _kind(obj):
    return type(obj).__name__


def _convert_layer(klayer, strict, backend):
    """A Keras layer -> the fastrnn layer, with its weights when the Keras layer has them (is built)."""
    layer = _layer_from_config(_kind(klayer), klayer.get_config(), strict, backend)
    if isinstance(layer, Layer):
        weights = klayer.get_weights()
        if weights or not layer._weight_names():
            try:
                layer.set_weights(weights)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"Keras layer {layer.name!r} ({_kind(klayer)}): its weights do not fit: {exc}") \
                    from None
    return layer


def _check_sequential(kmodel):
    kind = _kind(kmodel)
    if kind != "Sequential":
        raise ValueError(f"Keras model {getattr(kmodel, 'name', '?')!r} ({kind}): only keras.Sequential models "
                         "(and single layers) are supported; a functional or subclassed model is not")


def from_keras(obj, backend="auto", strict=True):
    """A Keras 3 layer -> the equivalent fastrnn layer; a keras.Sequential -> a fastrnn.Sequential.

    Same options (units, activation, use_bias, return_sequences, return_state, go_backwards, stateful, reset_after,
    unit_forget_bias, zero_output_for_mask, merge_mode, mask_zero, rate, ..., name, trainable, dtype) and, once the
    Keras object is built, the same weights. backend: the fastrnn backend of the recurrent layers ("auto",
    "cython", "numba" or "numpy"). strict=False drops Keras options that only matter while training (dropout /
    recurrent_dropout of a recurrent layer, regularizers, constraints) with a warning instead of raising.

    Raises ValueError, naming the layer and the option, for anything fastrnn cannot reproduce.
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False; got {strict!r}")
    if backend not in ops.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, ops.BACKENDS))}; got {backend!r}")
    if not _is_keras_object(obj):
        raise TypeError(f"from_keras needs a Keras 3 layer or keras.Sequential; got {type(obj).__name__}")
    if hasattr(obj, "layers") and hasattr(obj, "fit"):  # a model
        _check_sequential(obj)
        config = obj.get_config()
        model = Sequential(name=config.get("name", "sequential"))
        for entry in config.get("layers", []):
            if entry.get("class_name") == "InputLayer":
                model.add(_input_from_config(entry["config"], strict))
        for klayer in obj.layers:
            if hasattr(klayer, "layers") and hasattr(klayer, "fit"):
                raise ValueError(f"Keras layer {klayer.name!r} ({_kind(klayer)}): nested models are not supported")
            model.add(_convert_layer(klayer, strict, backend))
        if model._batch_input_shape() is not None:
            model.build()
        return model
    return _convert_layer(obj, strict, backend)


# ---------------------------------------------------------------------------------------------------------------
# fastrnn -> Keras
# ---------------------------------------------------------------------------------------------------------------
def _keras_initializer(value, default):
    """A fastrnn initializer argument as Keras takes it: the same name (Keras knows every fastrnn initializer)."""
    if isinstance(value, str):
        return _INITIALIZER_ALIASES.get(value, value)
    return default  # a callable: Keras cannot take it; Keras' default (the weights are copied anyway)


def _recurrent_to_keras(keras, layer, **overrides):
    kernel_init, recurrent_init, bias_init = layer._initializer_args
    kwargs = dict(units=layer.units, use_bias=layer.use_bias, return_sequences=layer.return_sequences,
                  return_state=layer.return_state, go_backwards=layer.go_backwards, stateful=layer.stateful,
                  zero_output_for_mask=layer.zero_output_for_mask, name=layer.name, trainable=layer.trainable,
                  dtype=layer.dtype.name,
                  kernel_initializer=_keras_initializer(kernel_init, "glorot_uniform"),
                  recurrent_initializer=_keras_initializer(recurrent_init, "orthogonal"),
                  bias_initializer=_keras_initializer(bias_init, "zeros"))
    kwargs.update(overrides)
    if isinstance(layer, SimpleRNN):
        return keras.layers.SimpleRNN(activation=layer.activation, **kwargs)
    if isinstance(layer, LSTM):
        return keras.layers.LSTM(unit_forget_bias=layer.unit_forget_bias, **kwargs)
    return keras.layers.GRU(reset_after=layer.reset_after, **kwargs)


def _stateful_batch(layer):
    """The batch size a stateful layer is fixed to (Keras needs it to build), or None if not known yet."""
    if layer.batch_input_shape is not None and layer.batch_input_shape[0] is not None:
        return layer.batch_input_shape[0]
    states = layer.states
    return None if states is None else states[0].shape[0]


def _layer_to_keras(keras, layer):
    """An unbuilt Keras layer with the fastrnn layer's options."""
    if isinstance(layer, Bidirectional):
        fwd, bwd = layer.forward_layer, layer.backward_layer
        kfwd = _recurrent_to_keras(keras, fwd, name=fwd.name[len("forward_"):] if fwd.name.startswith("forward_")
                                   else fwd.name)
        kbwd = _recurrent_to_keras(keras, bwd)
        return keras.layers.Bidirectional(kfwd, merge_mode=layer.merge_mode, backward_layer=kbwd, name=layer.name,
                                          trainable=layer.trainable, dtype=fwd.dtype.name)
    if isinstance(layer, RecurrentLayer):
        return _recurrent_to_keras(keras, layer)
    common = dict(name=layer.name, trainable=layer.trainable, dtype=layer.dtype.name)
    if isinstance(layer, Dense):
        kernel_init, bias_init = layer._initializer_args
        return keras.layers.Dense(layer.units, activation=layer.activation, use_bias=layer.use_bias,
                                  kernel_initializer=_keras_initializer(kernel_init, "glorot_uniform"),
                                  bias_initializer=_keras_initializer(bias_init, "zeros"), **common)
    if isinstance(layer, Embedding):
        return keras.layers.Embedding(layer.input_dim, layer.output_dim, mask_zero=layer.mask_zero,
                                      embeddings_initializer=_keras_initializer(layer._initializer_args[0],
                                                                                "uniform"), **common)
    if isinstance(layer, Dropout):
        return keras.layers.Dropout(layer.rate, noise_shape=layer.noise_shape, seed=layer.seed, **common)
    if isinstance(layer, Activation):
        return keras.layers.Activation(layer.activation, **common)
    if isinstance(layer, Flatten):
        return keras.layers.Flatten(data_format="channels_last", **common)
    if isinstance(layer, RepeatVector):
        return keras.layers.RepeatVector(layer.n, **common)
    raise ValueError(f"fastrnn layer {layer.name!r} ({type(layer).__name__}): no Keras equivalent in "
                     "fastrnn.interop.keras")


def _build_and_load(klayer, layer):
    """Build the Keras layer for the fastrnn layer's weights (if it has any) and copy them."""
    if not layer.built or not layer.weights:
        return
    if not klayer.built:
        if isinstance(layer, (RecurrentLayer, Bidirectional)):
            half = layer.forward_layer if isinstance(layer, Bidirectional) else layer
            batch = _stateful_batch(half) if half.stateful else None
            if half.stateful and batch is None:
                raise ValueError(f"fastrnn layer {layer.name!r}: Keras builds a stateful layer for a fixed batch "
                                 "size; give the layer batch_input_shape or call it once first")
            klayer.build((batch, None, half.input_dim))
        elif isinstance(layer, Dense):
            klayer.build((None, layer.input_dim))
        else:
            klayer.build(None)
    klayer.set_weights(layer.get_weights())


def _input_to_keras(keras, model):
    """keras.Input for the model's input spec (or its first layer's batch_input_shape), or None."""
    spec = model.input_spec
    shape = model._batch_input_shape()
    if shape is None:
        return None
    batch = shape[0]
    stateful = [layer for layer in model.layers if getattr(layer, "stateful", False)]
    if batch is None and stateful:  # Keras builds stateful layers for a fixed batch size: the one they ran with
        half = stateful[0].forward_layer if isinstance(stateful[0], Bidirectional) else stateful[0]
        batch = _stateful_batch(half)
        if batch is None:
            raise ValueError(f"fastrnn layer {stateful[0].name!r}: Keras builds a stateful layer for a fixed batch "
                             "size; give the model's Input a batch_size or call the model once first")
    if spec is not None:
        return keras.Input(shape=spec.input_shape, batch_size=batch, dtype=spec.dtype.name, name=spec.name)
    first = model.layers[0]
    dtype = "int32" if isinstance(first, Embedding) else first.dtype.name
    return keras.Input(shape=shape[1:], batch_size=batch, dtype=dtype)


def to_keras(obj):
    """A fastrnn layer -> the equivalent Keras 3 layer; a fastrnn.Sequential -> a keras.Sequential; a fastrnn.Input
    -> a keras InputLayer. Same options and, for built layers, the same weights (Keras builds the layer first).

    Imports keras here. The states of a stateful layer are not transferred.
    """
    keras = _keras()
    if isinstance(obj, Sequential):
        kinput = _input_to_keras(keras, obj)
        klayers = [_layer_to_keras(keras, layer) for layer in obj.layers]
        kmodel = keras.Sequential(([kinput] if kinput is not None else []) + klayers, name=obj.name)
        for klayer, layer in zip(klayers, obj.layers):
            _build_and_load(klayer, layer)
        return kmodel
    if isinstance(obj, Input):
        return keras.layers.InputLayer(shape=obj.input_shape, batch_size=obj.batch_size, dtype=obj.dtype.name,
                                       name=obj.name)
    if not isinstance(obj, Layer):
        raise TypeError(f"to_keras needs a fastrnn layer, fastrnn.Input or fastrnn.Sequential; got "
                        f"{type(obj).__name__}")
    klayer = _layer_to_keras(keras, obj)
    _build_and_load(klayer, obj)
    return klayer


# ---------------------------------------------------------------------------------------------------------------
# weights only
# ---------------------------------------------------------------------------------------------------------------
# The options that decide a layer's outputs (beyond its weights), compared by load_keras_weights.
_OUTPUT_OPTIONS = ("units", "activation", "use_bias", "return_sequences", "return_state", "go_backwards",
                   "zero_output_for_mask", "reset_after", "stateful", "merge_mode", "input_dim", "output_dim",
                   "mask_zero", "n")


def _signature(layer):
    if isinstance(layer, Bidirectional):
        return {"type": "Bidirectional", "merge_mode": layer.merge_mode,
                "forward": _signature(layer.forward_layer), "backward": _signature(layer.backward_layer)}
    sig = {"type": type(layer).__name__}
    for key in _OUTPUT_OPTIONS:
        if hasattr(layer, key) and not (key == "input_dim" and isinstance(layer, (RecurrentLayer, Dense))):
            sig[key] = getattr(layer, key)
    return sig


def _diff(a, b, path=""):
    for key in a:
        if isinstance(a[key], dict):
            found = _diff(a[key], b.get(key, {}), f"{path}{key} layer: ")
            if found:
                return found
        elif a[key] != b.get(key):
            return f"{path}{key}: fastrnn has {a[key]!r}, Keras has {b.get(key)!r}"
    return None


def load_keras_weights(fastrnn_obj, keras_obj, strict=True):
    """Copy a Keras layer's or Sequential's weights into an existing fastrnn layer or Sequential of the same
    architecture (same layer types and output-deciding options, checked first: a ValueError names the first
    difference). Returns fastrnn_obj. strict as in from_keras."""
    reference = from_keras(keras_obj, strict=strict)
    if isinstance(fastrnn_obj, Sequential) != isinstance(reference, Sequential):
        raise ValueError(f"load_keras_weights needs a fastrnn.Sequential for a keras.Sequential and a layer for a "
                         f"layer; got {type(fastrnn_obj).__name__} and Keras {_kind(keras_obj)}")
    if isinstance(fastrnn_obj, Sequential):
        pairs = list(zip(fastrnn_obj.layers, reference.layers))
        if len(fastrnn_obj.layers) != len(reference.layers):
            raise ValueError(f"load_keras_weights: the fastrnn model has {len(fastrnn_obj.layers)} layers, the Keras "
                             f"model {len(reference.layers)}")
    elif isinstance(fastrnn_obj, Layer):
        pairs = [(fastrnn_obj, reference)]
    else:
        raise TypeError(f"load_keras_weights needs a fastrnn layer or Sequential; got {type(fastrnn_obj).__name__}")
    for mine, theirs in pairs:
        found = _diff(_signature(mine), _signature(theirs)) or _diff(_signature(theirs), _signature(mine))
        if found:
            raise ValueError(f"load_keras_weights: layer {mine.name!r} differs from Keras layer {theirs.name!r}: "
                             f"{found}")
    for mine, theirs in pairs:  # all checked before anything changes
        if theirs.built and theirs.weights:
            mine.set_weights(theirs.get_weights())
    if isinstance(fastrnn_obj, Sequential) and not fastrnn_obj.built and fastrnn_obj._batch_input_shape() is not None:
        fastrnn_obj.build()
    return fastrnn_obj
