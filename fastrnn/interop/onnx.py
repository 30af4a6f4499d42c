"""ONNX import and export: run ONNX graphs whose RNN / GRU / LSTM nodes go through fastrnn's kernels, and write
fastrnn models as ONNX graphs that onnxruntime runs with the same outputs.

    import fastrnn.onnx
    model = fastrnn.onnx.load("model.onnx")                  # or an onnx.ModelProto, or its serialized bytes
    y, = model.run(None, {model.input_names[0]: x})           # like onnxruntime.InferenceSession.run

    proto = fastrnn.onnx.export(seq_model, "model.onnx", input_shape=(None, 16))   # -> onnx.ModelProto

Import (`load`) is an interpreter over the graph in topological order. Recurrent nodes (RNN, GRU, LSTM) run through
fastrnn.ops.rnn_forward after their weights are converted to fastrnn's (Keras) layout, once at load time when they
are initializers; the simple ops around them (MatMul, Gemm, Add, Transpose, Squeeze, Slice, Concat, Gather, Shape,
Cast, Where, ...; see SUPPORTED_OPS) are evaluated with NumPy. Conventions, checked against onnxruntime:

- ONNX gate order LSTM i, o, f, c (Keras i, f, c, o); GRU z, r, h (the same as Keras). B = [Wb, Rb]: LSTM and RNN
  use Wb + Rb; GRU linear_before_reset=1 is fastrnn's reset_after=True with bias [Wb, Rb], linear_before_reset=0 is
  reset_after=False with bias Wb + Rb.
- direction forward / reverse / bidirectional; layout 0 (time-major) and 1 (batch-major); initial_h / initial_c.
- sequence_lens: outputs are zero at padded positions; Y_h / Y_c are the states at each row's own length, and zero
  for a row of length 0 (onnxruntime's behaviour, even with a non-zero initial state).

Not supported (a ValueError names the node, the attribute and its value): clip, activations other than the ONNX
defaults (except Relu for RNN), LSTM input_forget=1, non-zero peepholes P, a hidden_size that does not match R.
Op types outside SUPPORTED_OPS (and non-default domains) are listed in a ValueError at load time.

Export (`export`) covers a fastrnn Sequential or a single layer: SimpleRNN / LSTM / GRU (both reset_after) with
return_sequences, return_state (last layer), go_backwards, Bidirectional (merge modes concat, sum, mul, ave, None),
Dense and Activation (every fastrnn activation), Embedding (Gather; mask_zero becomes sequence_lens computed inside
the graph, with Keras' masked-output conventions), Dropout (identity), Flatten, RepeatVector; stacked layers. The
batch and time axes are dynamic. Masks must be right-padded (as fastrnn itself requires).
"""
import numbers
import os

import numpy as np
from scipy import special

from .. import _checks, ops

__all__ = ["load", "export", "OnnxModel", "SUPPORTED_OPS", "onnx_to_keras_weights", "keras_to_onnx_weights"]

CELL_OF_OP = {"RNN": "simple_rnn", "LSTM": "lstm", "GRU": "gru"}
OP_OF_CELL = {cell: op for op, cell in CELL_OF_OP.items()}
# Keras gate block k is ONNX gate block _KERAS_FROM_ONNX[cell][k], and the other way round.
_KERAS_FROM_ONNX = {"simple_rnn": (0,), "lstm": (0, 2, 3, 1), "gru": (0, 1, 2)}
_ONNX_FROM_KERAS = {"simple_rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (0, 1, 2)}
# ONNX default activations of one direction, and the extra ones fastrnn's kernels have.
_DEFAULT_ACTIVATIONS = {"RNN": ("tanh",), "LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
_RECURRENT_ATTRIBUTES = {
    "RNN": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"},
    "GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout",
            "linear_before_reset"},
    "LSTM": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout",
             "input_forget"},
}
MIN_EXPORT_OPSET = 13


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastrnn.onnx needs the 'onnx' package (pip install onnx)") from exc
    return onnx


# ---------------------------------------------------------------------------------------------------------------
# Weights: ONNX layout <-> fastrnn (Keras) layout, one direction
# ---------------------------------------------------------------------------------------------------------------

def _blocks(a, order, H, axis=0):
    return np.concatenate([np.take(a, np.arange(k * H, (k + 1) * H), axis=axis) for k in order], axis=axis)


def onnx_to_keras_weights(cell, W, R, B=None, linear_before_reset=0):
    """One direction of an ONNX recurrent node -> (fastrnn weights [kernel, recurrent_kernel, bias], reset_after).

    W (G*H, input_size), R (G*H, H), B (2*G*H,) or None, in ONNX gate order.
    """
    H = R.shape[-1]
    order = _KERAS_FROM_ONNX[cell]
    GH = len(order) * H
    kernel = np.ascontiguousarray(_blocks(W, order, H).T)
    recurrent = np.ascontiguousarray(_blocks(R, order, H).T)
    if B is None:
        B = np.zeros(2 * GH, W.dtype)
    wb, rb = _blocks(B[:GH], order, H), _blocks(B[GH:], order, H)
    reset_after = cell == "gru" and bool(linear_before_reset)
    bias = np.stack([wb, rb]) if reset_after else wb + rb
    return [kernel, recurrent, np.ascontiguousarray(bias)], reset_after


def keras_to_onnx_weights(cell, weights, reset_after=True):
    """fastrnn (Keras) weights [kernel, recurrent_kernel(, bias)] -> (W (G*H, I), R (G*H, H), B (2*G*H,),
    linear_before_reset), one direction in ONNX gate order."""
    kernel, recurrent = np.asarray(weights[0]), np.asarray(weights[1])
    H = recurrent.shape[0]
    order = _ONNX_FROM_KERAS[cell]
    GH = len(order) * H
    W = _blocks(kernel.T, order, H)
    R = _blocks(recurrent.T, order, H)
    bias = weights[2] if len(weights) > 2 and weights[2] is not None else None
    two = cell == "gru" and reset_after
    if bias is None:
        B = np.zeros(2 * GH, kernel.dtype)
    elif two:
        B = np.concatenate([_blocks(bias[0], order, H), _blocks(bias[1], order, H)])
    else:
        B = np.concatenate([_blocks(np.asarray(bias), order, H), np.zeros(GH, kernel.dtype)])
    return W, R, B, int(two)


# ---------------------------------------------------------------------------------------------------------------
# Import: the interpreter
# ---------------------------------------------------------------------------------------------------------------

class _Node:
    __slots__ = ("op", "domain", "name", "inputs", "outputs", "attrs", "desc", "rnn")

    def __init__(self, proto, index, attrs):
        self.op, self.domain, self.name = proto.op_type, proto.domain, proto.name
        self.inputs, self.outputs = list(proto.input), list(proto.output)
        self.attrs = attrs
        where = f"{self.name!r}" if self.name else f"#{index} (outputs {self.outputs})"
        self.desc = f"{self.op} node {where}"
        self.rnn = None


def _attributes(onnx, proto):
    out = {}
    for a in proto.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            value = onnx.numpy_helper.to_array(a.t)
        elif a.type == onnx.AttributeProto.TENSORS:
            value = [onnx.numpy_helper.to_array(t) for t in a.tensors]
        else:
            value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        out[a.name] = value
    return out


_OPS = {}


def _op(*names):
    def register(fn):
        for n in names:
            _OPS[n] = fn
        return fn
    return register


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _opt(inputs, k):
    return inputs[k] if len(inputs) > k else None


# -- element-wise ---------------------------------------------------------------------------------------------------
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Greater": np.greater,
           "Less": np.less, "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
           "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


def _binary(m, node, inputs):
    return _BINARY[node.op](inputs[0], inputs[1])


for _name in _BINARY:
    _OPS[_name] = _binary


@_op("Div")
def _div(m, node, inputs):
    a, b = inputs
    if a.dtype.kind in "iu":  # C-style integer division (truncation toward zero)
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(a.dtype)
    return np.divide(a, b)


@_op("Pow")
def _pow(m, node, inputs):
    return np.power(inputs[0], inputs[1]).astype(inputs[0].dtype, copy=False)


def _sigmoid(x):
    return special.expit(x)


_UNARY = {
    "Relu": lambda x: np.maximum(x, 0).astype(x.dtype, copy=False),
    "Tanh": np.tanh, "Sigmoid": _sigmoid, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Neg": np.negative,
    "Abs": np.abs, "Erf": special.erf, "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil,
    "Sign": np.sign, "Not": np.logical_not,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": lambda x: np.logaddexp(x.dtype.type(0), x),
}


def _unary(m, node, inputs):
    return _UNARY[node.op](inputs[0])


for _name in _UNARY:
    _OPS[_name] = _unary


@_op("Identity", "Dropout")
def _identity(m, node, inputs):
    x = inputs[0]
    if node.op == "Dropout" and len(node.outputs) > 1:
        return x, np.ones(x.shape, bool)
    return x


@_op("Elu")
def _elu(m, node, inputs):
    x = inputs[0]
    alpha = node.attrs.get("alpha", 1.0)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False)


@_op("Selu")
def _selu(m, node, inputs):
    x = inputs[0]
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    return (gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))).astype(x.dtype, copy=False)


@_op("LeakyRelu")
def _leaky_relu(m, node, inputs):
    x = inputs[0]
    return np.where(x > 0, x, node.attrs.get("alpha", 0.01) * x).astype(x.dtype, copy=False)


@_op("HardSigmoid")
def _hard_sigmoid(m, node, inputs):
    x = inputs[0]
    y = node.attrs.get("alpha", 0.2) * x + node.attrs.get("beta", 0.5)
    return np.clip(y, 0, 1).astype(x.dtype, copy=False)


@_op("Gelu")
def _gelu(m, node, inputs):
    x = inputs[0]
    if node.attrs.get("approximate", "none") == "tanh":
        y = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    else:
        y = 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
    return y.astype(x.dtype, copy=False)


@_op("Clip")
def _clip(m, node, inputs):
    x = inputs[0]
    if m.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo, hi = _opt(inputs, 1), _opt(inputs, 2)
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x.astype(inputs[0].dtype, copy=False)


@_op("Where")
def _where(m, node, inputs):
    return np.where(inputs[0], inputs[1], inputs[2])


@_op("Min", "Max", "Sum", "Mean")
def _variadic(m, node, inputs):
    fn = {"Min": np.minimum, "Max": np.maximum, "Sum": np.add, "Mean": np.add}[node.op]
    out = inputs[0]
    for x in inputs[1:]:
        out = fn(out, x)
    if node.op == "Mean":
        out = (out / len(inputs)).astype(inputs[0].dtype, copy=False)
    return out


def _softmax_axis(m, node, x):
    axis = node.attrs.get("axis", -1 if m.opset >= 13 else 1)
    return axis + x.ndim if axis < 0 else axis


@_op("Softmax", "LogSoftmax")
def _softmax(m, node, inputs):
    x = inputs[0]
    axis = _softmax_axis(m, node, x)
    shape = x.shape
    if m.opset < 13:  # the input is coerced to 2-D at axis
        x = x.reshape(int(np.prod(shape[:axis])), -1)
        axis = 1
    s = x - x.max(axis=axis, keepdims=True)
    if node.op == "Softmax":
        e = np.exp(s)
        y = e / e.sum(axis=axis, keepdims=True)
    else:
        y = s - np.log(np.exp(s).sum(axis=axis, keepdims=True))
    return y.reshape(shape)


# -- linear algebra -------------------------------------------------------------------------------------------------
@_op("MatMul")
def _matmul(m, node, inputs):
    return np.matmul(inputs[0], inputs[1])


@_op("Gemm")
def _gemm(m, node, inputs):
    a, b = inputs[0], inputs[1]
    c = _opt(inputs, 2)
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = np.matmul(a, b)
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y.astype(inputs[0].dtype, copy=False)


# -- shapes ---------------------------------------------------------------------------------------------------------
@_op("Transpose")
def _transpose(m, node, inputs):
    x = inputs[0]
    perm = node.attrs.get("perm")
    return np.transpose(x, perm if perm is not None else tuple(reversed(range(x.ndim))))


def _axes(m, node, inputs, k, attr_until):
    """axes from input k (newer opsets) or from the attribute (opset < attr_until); None when absent."""
    if m.opset >= attr_until:
        a = _opt(inputs, k)
        return None if a is None else _ints(a)
    a = node.attrs.get("axes")
    return None if a is None else list(a)


@_op("Squeeze")
def _squeeze(m, node, inputs):
    x = inputs[0]
    axes = _axes(m, node, inputs, 1, 13)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(a + x.ndim if a < 0 else a for a in axes))


@_op("Unsqueeze")
def _unsqueeze(m, node, inputs):
    x = inputs[0]
    axes = _axes(m, node, inputs, 1, 13)
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a + rank if a < 0 else a for a in axes)))


@_op("Reshape")
def _reshape(m, node, inputs):
    x = inputs[0]
    shape = _ints(inputs[1]) if m.opset >= 5 else list(node.attrs["shape"])
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("Flatten")
def _flatten(m, node, inputs):
    x = inputs[0]
    axis = node.attrs.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


@_op("Slice")
def _slice(m, node, inputs):
    x = inputs[0]
    if m.opset >= 10:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _opt(inputs, 3)
        steps = _opt(inputs, 4)
        axes = _ints(axes) if axes is not None else list(range(len(starts)))
        steps = _ints(steps) if steps is not None else [1] * len(starts)
    else:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a + x.ndim if a < 0 else a] = slice(s, e, st)  # Python's slice clamps exactly as ONNX does
    return x[tuple(index)]


@_op("Concat")
def _concat(m, node, inputs):
    return np.concatenate([x for x in inputs if x is not None], axis=node.attrs["axis"])


@_op("Split")
def _split(m, node, inputs):
    x = inputs[0]
    axis = node.attrs.get("axis", 0)
    n = len(node.outputs)
    split = _opt(inputs, 1) if m.opset >= 13 else node.attrs.get("split")
    dim = x.shape[axis]
    if split is None:
        n = node.attrs.get("num_outputs", n)
        size = -(-dim // n)
        split = [min(size, dim - k * size) for k in range(n)]
    bounds = np.cumsum(_ints(split))[:-1]
    return tuple(np.split(x, bounds, axis=axis))


@_op("Gather")
def _gather(m, node, inputs):
    return np.take(inputs[0], inputs[1].astype(np.int64), axis=node.attrs.get("axis", 0))


@_op("Shape")
def _shape(m, node, inputs):
    shape = inputs[0].shape
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end")
    return np.array(shape[start:end], np.int64)


@_op("Size")
def _size(m, node, inputs):
    return np.array(inputs[0].size, np.int64)


@_op("Expand")
def _expand(m, node, inputs):
    x = inputs[0]
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))).copy()


@_op("Tile")
def _tile(m, node, inputs):
    return np.tile(inputs[0], _ints(inputs[1]))


@_op("Range")
def _range(m, node, inputs):
    start, limit, delta = inputs
    return np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


# -- types and constants --------------------------------------------------------------------------------------------
@_op("Cast")
def _cast(m, node, inputs):
    return inputs[0].astype(m.np_dtype(node.attrs["to"]))


@_op("CastLike")
def _cast_like(m, node, inputs):
    return inputs[0].astype(inputs[1].dtype)


@_op("Constant")
def _constant(m, node, inputs):
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    if "value_string" in a:
        return np.array(a["value_string"], object)
    if "value_strings" in a:
        return np.array(a["value_strings"], object)
    raise ValueError(f"{node.desc}: Constant needs one of the attributes value, value_float(s), value_int(s), "
                     f"value_string(s); got {sorted(a)}")


@_op("ConstantOfShape")
def _constant_of_shape(m, node, inputs):
    value = node.attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(_ints(inputs[0]), value[0], value.dtype)


# -- reductions -----------------------------------------------------------------------------------------------------
_REDUCE = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min,
           "ReduceProd": np.prod}


@_op(*_REDUCE)
def _reduce(m, node, inputs):
    x = inputs[0]
    axes = _axes(m, node, inputs, 1, 13 if node.op == "ReduceSum" else 18)
    keepdims = bool(node.attrs.get("keepdims", 1))
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = None
    axis = None if axes is None else tuple(a + x.ndim if a < 0 else a for a in axes)
    kw = {"dtype": x.dtype} if node.op in ("ReduceSum", "ReduceMean", "ReduceProd") else {}
    return np.asarray(_REDUCE[node.op](x, axis=axis, keepdims=keepdims, **kw))


@_op("ArgMax", "ArgMin")
def _argmax(m, node, inputs):
    x = inputs[0]
    axis = node.attrs.get("axis", 0)
    fn = np.argmax if node.op == "ArgMax" else np.argmin
    if node.attrs.get("select_last_index", 0):
        y = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
    else:
        y = fn(x, axis=axis)
    if node.attrs.get("keepdims", 1):
        y = np.expand_dims(y, axis)
    return y.astype(np.int64)


# -- recurrent nodes ------------------------------------------------------------------------------------------------
class _RecurrentSpec:
    """What a recurrent node needs at run time, validated at load time."""

    def __init__(self, node, initializers):
        op, a = node.op, node.attrs
        self.cell = CELL_OF_OP[op]
        self.G = ops.GATES[self.cell]
        for name in sorted(set(a) - _RECURRENT_ATTRIBUTES[op]):
            raise ValueError(f"{node.desc}: attribute {name}={a[name]!r} is not supported (unknown to {op})")
        if "clip" in a:
            raise ValueError(f"{node.desc}: attribute clip={a['clip']!r} is not supported: fastrnn's kernels do "
                             "not clip gate pre-activations (remove the attribute to run without clipping)")
        self.direction = a.get("direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{node.desc}: attribute direction={self.direction!r} is not supported: it must be "
                             "'forward', 'reverse' or 'bidirectional'")
        self.nd = 2 if self.direction == "bidirectional" else 1
        self.reverse = (False, True) if self.nd == 2 else (self.direction == "reverse",)
        self.layout = a.get("layout", 0)
        if self.layout not in (0, 1):
            raise ValueError(f"{node.desc}: attribute layout={self.layout!r} is not supported: it must be 0 or 1")
        if op == "LSTM" and a.get("input_forget", 0) != 0:
            raise ValueError(f"{node.desc}: attribute input_forget={a['input_forget']!r} is not supported: "
                             "fastrnn's LSTM has independent input and forget gates (input_forget=0)")
        self.linear_before_reset = a.get("linear_before_reset", 0)
        if self.linear_before_reset not in (0, 1):
            raise ValueError(f"{node.desc}: attribute linear_before_reset={self.linear_before_reset!r} is not "
                             "supported: it must be 0 or 1")
        self.activations = self._activations(node, op, a.get("activations"))
        self.hidden_size = a.get("hidden_size")
        if self.hidden_size is not None and self.hidden_size <= 0:
            raise ValueError(f"{node.desc}: attribute hidden_size={self.hidden_size!r} is not supported: it must "
                             "be a positive integer")
        self.desc = node.desc
        self.op = op
        # Weights that are initializers are converted once, here.
        names = node.inputs
        self.static = None
        has_b = len(names) > 3 and bool(names[3])
        if all(len(names) > k and names[k] in initializers for k in (1, 2)) and \
                (not has_b or names[3] in initializers):
            W, R = initializers[names[1]], initializers[names[2]]
            self.static = self._convert(W, R, initializers[names[3]] if has_b else None, W.shape[-1] if W.ndim else 0)
        if op == "LSTM" and len(names) > 7 and names[7] in initializers:
            self._check_peepholes(initializers[names[7]])

    def _activations(self, node, op, acts):
        default = _DEFAULT_ACTIVATIONS[op]
        k = len(default)
        if acts is None:
            acts = list(default) * self.nd
        if len(acts) != k * self.nd:
            raise ValueError(f"{node.desc}: attribute activations={acts!r} is not supported: {op} with direction "
                             f"{self.direction!r} needs {k * self.nd} activation(s)")
        per_dir = []
        for d in range(self.nd):
            mine = tuple(s.lower() for s in acts[d * k:(d + 1) * k])
            if mine == default:
                per_dir.append("tanh")
            elif op == "RNN" and mine == ("relu",):
                per_dir.append("relu")
            else:
                allowed = " or ".join(repr([s.capitalize() for s in v]) for v in
                                      ([default, ("relu",)] if op == "RNN" else [default]))
                raise ValueError(f"{node.desc}: attribute activations={acts!r} is not supported: fastrnn's kernels "
                                 f"run {op} with activations {allowed} per direction")
        return tuple(per_dir)

    def _check_peepholes(self, P):
        if P is not None and np.any(np.asarray(P) != 0):
            raise ValueError(f"{self.desc}: input P (peepholes) with non-zero values is not supported: fastrnn's "
                             "LSTM has no peephole connections (only an all-zero P is accepted)")

    def _convert(self, W, R, B, input_size):
        """Validate the ONNX weights and return, per direction, (fastrnn weights, reset_after)."""
        nd, G = self.nd, self.G
        W, R = np.asarray(W), np.asarray(R)
        if R.ndim != 3 or R.shape[0] != nd or R.shape[1] != G * R.shape[2] or R.shape[2] == 0:
            raise ValueError(f"{self.desc}: input R must have shape (num_directions={nd}, {G}*hidden_size, "
                             f"hidden_size); got shape {R.shape}")
        H = R.shape[2]
        if self.hidden_size is not None and self.hidden_size != H:
            raise ValueError(f"{self.desc}: attribute hidden_size={self.hidden_size} does not match the weights: "
                             f"R of shape {R.shape} has hidden size {H}")
        if W.shape != (nd, G * H, input_size):
            raise ValueError(f"{self.desc}: input W must have shape (num_directions={nd}, {G}*hidden_size={G * H}, "
                             f"input_size={input_size}); got shape {W.shape}")
        if B is not None:
            B = np.asarray(B)
            if B.shape != (nd, 2 * G * H):
                raise ValueError(f"{self.desc}: input B must have shape (num_directions={nd}, "
                                 f"2*{G}*hidden_size={2 * G * H}); got shape {B.shape}")
        return [onnx_to_keras_weights(self.cell, W[d], R[d], None if B is None else B[d], self.linear_before_reset)
                for d in range(nd)]

    def run(self, m, inputs):
        X = inputs[0]
        if X.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"{self.desc}: input X must be float32 or float64; got dtype {X.dtype}")
        if X.ndim != 3:
            what = "(seq_length, batch_size, input_size)" if self.layout == 0 else \
                "(batch_size, seq_length, input_size)"
            raise ValueError(f"{self.desc}: input X must have shape {what} (3-D); got shape {X.shape}")
        x = X.transpose(1, 0, 2) if self.layout == 0 else X
        Bsz, T, I = x.shape
        if self.static is not None:
            weights = self.static
            if weights[0][0][0].shape[0] != I:
                raise ValueError(f"{self.desc}: input X must have input_size={weights[0][0][0].shape[0]} (the "
                                 f"size W expects) in its last axis; got shape {X.shape}")
        else:
            weights = self._convert(inputs[1], inputs[2], _opt(inputs, 3), I)
        H = weights[0][0][1].shape[0]
        seq = _opt(inputs, 4)
        h0, c0 = _opt(inputs, 5), _opt(inputs, 6)
        if self.cell == "lstm":
            self._check_peepholes(_opt(inputs, 7))
        lens = None
        if seq is not None:
            seq = np.asarray(seq)
            if seq.dtype.kind not in "iu" or seq.shape != (Bsz,):
                raise ValueError(f"{self.desc}: input sequence_lens must be integers of shape (batch_size={Bsz},); "
                                 f"got {seq.dtype} of shape {seq.shape}")
            if seq.size and (seq.min() < 0 or seq.max() > T):
                raise ValueError(f"{self.desc}: input sequence_lens must be in [0, seq_length={T}]; got values "
                                 f"from {seq.min()} to {seq.max()}")
            lens = seq.astype(np.int64)
        states_in = []
        for label, s in (("initial_h", h0), ("initial_c", c0)):
            if s is None:
                states_in.append(None)
                continue
            s = np.asarray(s)
            want = (self.nd, Bsz, H) if self.layout == 0 else (Bsz, self.nd, H)
            if s.shape != want:
                what = ("(num_directions={}, batch_size={}, hidden_size={})" if self.layout == 0 else
                        "(batch_size={1}, num_directions={0}, hidden_size={2})").format(self.nd, Bsz, H)
                raise ValueError(f"{self.desc}: input {label} must have shape {what}; got shape {s.shape}")
            states_in.append(s if self.layout == 0 else s.transpose(1, 0, 2))
        ys, hs, cs = [], [], []
        for d in range(self.nd):
            w, reset_after = weights[d]
            init = None
            if states_in[0] is not None or (self.cell == "lstm" and states_in[1] is not None):
                zeros = np.zeros((Bsz, H), X.dtype)
                init = [zeros if states_in[0] is None else states_in[0][d]]
                if self.cell == "lstm":
                    init.append(zeros if states_in[1] is None else states_in[1][d])
            out = ops.rnn_forward(self.cell, x, w, init, lens, reverse=self.reverse[d],
                                  activation=self.activations[d], reset_after=reset_after, backend=m.backend,
                                  dtype=X.dtype, check_finite=False)
            states = [s.copy() for s in out.states]
            if lens is not None and (lens == 0).any():
                for s in states:  # onnxruntime: a row of length 0 has zero final states
                    s[lens == 0] = 0
            ys.append(out.outputs)
            hs.append(states[0])
            if self.cell == "lstm":
                cs.append(states[1])
        if self.layout == 0:
            Y = np.stack([y.transpose(1, 0, 2) for y in ys], axis=1)     # (T, nd, B, H)
            states = [np.stack(hs)] + ([np.stack(cs)] if cs else [])       # (nd, B, H)
        else:
            Y = np.stack(ys, axis=2)                                       # (B, T, nd, H)
            states = [np.stack(hs, axis=1)] + ([np.stack(cs, axis=1)] if cs else [])
        return (np.ascontiguousarray(Y), *states)


def _recurrent(m, node, inputs):
    return node.rnn.run(m, inputs)


for _name in CELL_OF_OP:
    _OPS[_name] = _recurrent

SUPPORTED_OPS = tuple(sorted(_OPS))


class OnnxModel:
    """An ONNX model run by fastrnn: `run(output_names_or_None, {input_name: array}) -> list of arrays`,
    like onnxruntime.InferenceSession.run. Build it with `fastrnn.onnx.load`."""

    def __init__(self, model, backend="auto"):
        onnx = _onnx()
        self.backend = _checks.choice("backend", backend, ops.BACKENDS)
        self.model = model
        graph = model.graph
        self.opset = 1
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        self._np_dtype = onnx.helper.tensor_dtype_to_np_dtype
        self._initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        for t in graph.sparse_initializer:
            raise ValueError(f"sparse initializer {t.values.name!r} is not supported")
        self._inputs = [i for i in graph.input if i.name not in self._initializers]
        self.input_names = [i.name for i in self._inputs]
        self.output_names = [o.name for o in graph.output]
        self._input_specs = {i.name: self._spec(i) for i in self._inputs}

        nodes = [_Node(p, k, _attributes(onnx, p)) for k, p in enumerate(graph.node)]
        unsupported = {}
        for n in nodes:
            if n.domain not in ("", "ai.onnx") or n.op not in _OPS:
                key = n.op if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op}"
                unsupported.setdefault(key, []).append(n.name or (n.outputs[0] if n.outputs else ""))
        if unsupported:
            listing = "; ".join(f"{op} (nodes {names})" for op, names in sorted(unsupported.items()))
            raise ValueError(f"the ONNX graph has op types fastrnn.onnx does not support: {listing}. "
                             f"Supported: {', '.join(SUPPORTED_OPS)}")
        self._nodes = self._toposort(nodes)
        for n in self._nodes:
            if n.op in CELL_OF_OP:
                n.rnn = _RecurrentSpec(n, self._initializers)
        self._producers = {o for n in self._nodes for o in n.outputs if o}
        known = set(self._initializers) | set(self.input_names) | self._producers
        for name in self.output_names:
            if name not in known:
                raise ValueError(f"graph output {name!r} is not produced by any node, input or initializer")

    def np_dtype(self, elem_type):
        return self._np_dtype(elem_type)

    def _spec(self, value_info):
        t = value_info.type
        if not t.HasField("tensor_type"):
            return None, None
        tt = t.tensor_type
        dtype = self._np_dtype(tt.elem_type) if tt.elem_type else None
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        return dtype, shape

    def _toposort(self, nodes):
        available = set(self._initializers) | {i.name for i in self._inputs} | {""}
        pending, order = list(nodes), []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.inputs)]
            if not ready:
                n = pending[0]
                missing = [i for i in n.inputs if i not in available]
                raise ValueError(f"{n.desc}: inputs {missing} are not produced by any node, graph input or "
                                 "initializer (or the graph has a cycle)")
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
            for n in ready:
                order.append(n)
                available.update(n.outputs)
        return order

    def get_inputs(self):
        """[(name, dtype, shape)] of the graph inputs (shape entries None where the graph has no fixed size)."""
        return [(name, *self._input_specs[name]) for name in self.input_names]

    def get_outputs(self):
        """[(name, dtype, shape)] of the graph outputs, as the graph declares them (None where it does not)."""
        specs = {o.name: self._spec(o) for o in self.model.graph.output}
        return [(name, *specs[name]) for name in self.output_names]

    def _feed(self, input_feed):
        if not isinstance(input_feed, dict):
            raise TypeError(f"input_feed must be a dict {{input name: array}}; got {type(input_feed).__name__}")
        unknown = sorted(set(input_feed) - set(self.input_names))
        if unknown:
            raise ValueError(f"input_feed has names {unknown} that are not graph inputs; the inputs are "
                             f"{self.input_names}")
        missing = [n for n in self.input_names if n not in input_feed]
        if missing:
            raise ValueError(f"input_feed is missing graph inputs {missing}")
        env = {}
        for name in self.input_names:
            arr = np.asarray(input_feed[name])
            dtype, shape = self._input_specs[name]
            if dtype is not None and arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, "same_kind"):
                    raise TypeError(f"input {name!r} must have dtype {np.dtype(dtype)}; got {arr.dtype}")
                arr = arr.astype(dtype)
            if shape is not None:
                if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
                    want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
                    raise ValueError(f"input {name!r} must have shape {want}; got shape {arr.shape}")
            env[name] = arr
        return env

    def run(self, output_names=None, input_feed=None, run_options=None):
        """Outputs `output_names` (None: every graph output; intermediate values may be named too) for the inputs
        in `input_feed`, as a list of arrays."""
        if output_names is None:
            output_names = list(self.output_names)
        elif isinstance(output_names, str) or not isinstance(output_names, (list, tuple)):
            raise TypeError(f"output_names must be a list of names or None; got {output_names!r}")
        known = set(self._initializers) | set(self.input_names) | self._producers
        for name in output_names:
            if name not in known:
                raise ValueError(f"{name!r} is not a value of the graph; its outputs are {self.output_names}")
        feeds = self._feed(input_feed if input_feed is not None else {})
        env = dict(self._initializers)
        env.update(feeds)
        needed = self._needed(output_names)
        for node in self._nodes:
            if not any(o in needed for o in node.outputs):
                continue
            args = [env[i] if i else None for i in node.inputs]
            try:
                result = _OPS[node.op](self, node, args)
            except (ValueError, TypeError, IndexError) as exc:
                if str(exc).startswith(node.desc):
                    raise
                raise type(exc)(f"{node.desc}: {exc}") from exc
            if not isinstance(result, tuple):
                result = (result,)
            for name, value in zip(node.outputs, result):
                if name:
                    env[name] = np.asarray(value)
        out = []
        for name in output_names:
            value = env[name]
            if name in self._initializers or name in feeds:
                value = value.copy()
            out.append(np.ascontiguousarray(value))
        return out

    def _needed(self, output_names):
        needed = set(output_names)
        for node in reversed(self._nodes):
            if any(o in needed for o in node.outputs):
                needed.update(i for i in node.inputs if i)
        return needed

    def __repr__(self):
        return f"OnnxModel(inputs={self.input_names}, outputs={self.output_names}, backend={self.backend!r})"


def load(model_or_path, backend="auto"):
    """An ONNX model (a path, serialized bytes or an onnx.ModelProto) as an OnnxModel that runs its recurrent nodes
    in fastrnn's kernels. backend: "auto", "cython", "numba" or "numpy" (for the recurrent nodes)."""
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    elif isinstance(model_or_path, (bytes, bytearray)):
        model = onnx.load_model_from_string(bytes(model_or_path))
    elif isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(os.fspath(model_or_path))
    else:
        raise TypeError("model_or_path must be a path, serialized bytes or an onnx.ModelProto; got "
                        f"{type(model_or_path).__name__}")
    return OnnxModel(model, backend)


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

class _Builder:
    """Nodes and initializers of a graph under construction, with unique value names."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.initializers, self.used = [], [], set()
        self._ints = {}

    def fresh(self, base):
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, value, base):
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values, base="ints"):
        """An int64 constant (shared by every node that needs the same values)."""
        key = tuple(values)
        if key not in self._ints:
            self._ints[key] = self.const(np.array(values, np.int64), base)
        return self._ints[key]

    def node(self, op, inputs, base=None, n_out=1, outputs=None, **attrs):
        base = base or op.lower()
        if outputs is None:
            outputs = [self.fresh(f"{base}_out{k}" if n_out > 1 else base) for k in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), list(outputs), name=self.fresh(f"{base}_node"),
                                                     **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


class _Mask:
    """A right-padded (batch, timesteps) boolean mask in the graph, and what recurrent layers derive from it."""

    def __init__(self, name):
        self.name = name
        self._lens = self._padded = self._last_padded = None

    def lens(self, b):
        if self._lens is None:
            as_int = b.node("Cast", [self.name], "mask_int", to=b.onnx.TensorProto.INT32)
            self._lens = b.node("ReduceSum", [as_int, b.ints([1], "axis1")], "sequence_lens", keepdims=0)
        return self._lens

    def padded(self, b):
        """(batch, timesteps, 1): True at padded steps."""
        if self._padded is None:
            self._padded = b.node("Unsqueeze", [b.node("Not", [self.name], "padded"), b.ints([2], "axis2")],
                                  "padded_3d")
        return self._padded

    def last_padded(self, b):
        """(batch, 1): True for rows whose last step is padding (length < timesteps)."""
        if self._last_padded is None:
            last = b.node("Gather", [self.name, b.const(np.array(-1, np.int64), "last_step")], "last_valid",
                          axis=1)
            self._last_padded = b.node("Unsqueeze", [b.node("Not", [last], "last_padded"), b.ints([1], "axis1")],
                                       "last_padded_2d")
        return self._last_padded


_INT64_MIN = np.iinfo(np.int64).min


def _activation(b, x, name, dtype, prefix):
    """Emit a fastrnn (Keras) activation by name on value x; returns the output name."""

    def c(v):
        return b.const(np.array(v, dtype), f"{prefix}_c")

    if name == "linear":
        return x
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus", "softsign": "Softsign",
              "exponential": "Exp"}
    if name in simple:
        return b.node(simple[name], [x], f"{prefix}_{name}")
    if name in ("softmax", "log_softmax"):
        return b.node("Softmax" if name == "softmax" else "LogSoftmax", [x], f"{prefix}_{name}", axis=-1)
    if name == "elu":
        return b.node("Elu", [x], f"{prefix}_elu", alpha=1.0)
    if name == "selu":
        return b.node("Selu", [x], f"{prefix}_selu", alpha=1.6732632423543772848170429916717,
                      gamma=1.0507009873554804934193349852946)
    if name == "leaky_relu":
        return b.node("LeakyRelu", [x], f"{prefix}_leaky_relu", alpha=0.2)
    if name == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
        return b.node("HardSigmoid", [x], f"{prefix}_hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)
    if name == "relu6":
        return b.node("Clip", [x, c(0), c(6)], f"{prefix}_relu6")
    if name in ("swish", "silu"):
        return b.node("Mul", [x, b.node("Sigmoid", [x], f"{prefix}_sigmoid")], f"{prefix}_{name}")
    if name == "gelu":
        if b.opset >= 20:
            return b.node("Gelu", [x], f"{prefix}_gelu")
        erf = b.node("Erf", [b.node("Mul", [x, c(1 / np.sqrt(2))], f"{prefix}_scaled")], f"{prefix}_erf")
        half = b.node("Mul", [x, b.node("Add", [erf, c(1)], f"{prefix}_erf1")], f"{prefix}_xerf")
        return b.node("Mul", [half, c(0.5)], f"{prefix}_gelu")
    raise ValueError(f"activation {name!r} cannot be exported to ONNX")


def _emit_recurrent(b, layer, x, mask, flip_time, dtype):
    """One fastrnn recurrent layer (Keras conventions of RecurrentLayer._format). Returns (output, [states])."""
    from ..layers.recurrent import GRU, SimpleRNN
    if layer.stateful:
        raise ValueError(f"{layer.name}: stateful recurrent layers cannot be exported to ONNX (their states live "
                         "between calls); export a copy with stateful=False")
    cell = layer.cell
    reset_after = layer.reset_after if isinstance(layer, GRU) else True
    W, R, B, lbr = keras_to_onnx_weights(cell, layer.weights, reset_after)
    p = layer.name
    xt = b.node("Transpose", [x], f"{p}_X", perm=[1, 0, 2])
    lens = mask.lens(b) if mask is not None else ""
    attrs = dict(hidden_size=layer.units, direction="reverse" if layer.go_backwards else "forward")
    if cell == "gru":
        attrs["linear_before_reset"] = lbr
    if isinstance(layer, SimpleRNN) and layer.activation != "tanh":
        attrs["activations"] = [layer.activation.capitalize()]
    outs = [b.fresh(f"{p}_Y"), b.fresh(f"{p}_Y_h")] + ([b.fresh(f"{p}_Y_c")] if cell == "lstm" else [])
    inputs = [xt, b.const(W[None].astype(dtype), f"{p}_W"), b.const(R[None].astype(dtype), f"{p}_R"),
              b.const(B[None].astype(dtype), f"{p}_B"), lens]
    b.node(OP_OF_CELL[cell], inputs, p, outputs=outs, **attrs)
    axis0 = b.ints([0], "axis0")
    h = b.node("Squeeze", [outs[1], axis0], f"{p}_state_h")                  # (batch, units)
    states = [h]
    if layer.return_state and cell == "lstm":
        states.append(b.node("Squeeze", [outs[2], axis0], f"{p}_state_c"))
    if layer.return_sequences:
        y = b.node("Squeeze", [outs[0], b.ints([1], "axis1")], f"{p}_Y_tbh")
        y = b.node("Transpose", [y], f"{p}_Y_bth", perm=[1, 0, 2])              # (batch, timesteps, units)
        if mask is not None and not layer.go_backwards and not layer.zero_output_for_mask:
            # Keras carries the last valid output over padded steps (onnxruntime's Y_h is 0 for empty rows)
            h3 = b.node("Unsqueeze", [h, b.ints([1], "axis1")], f"{p}_h_b1h")
            y = b.node("Where", [mask.padded(b), h3, y], f"{p}_carried")
        if layer.go_backwards != flip_time:
            y = b.node("Slice", [y, b.ints([-1], "start_last"), b.ints([_INT64_MIN], "end_before_first"),
                                 b.ints([1], "axis1"), b.ints([-1], "step_back")], f"{p}_flipped")
        output = y
    else:
        output = h
        if mask is not None and layer.zero_output_for_mask and not layer.go_backwards:
            zero = b.const(np.zeros((1, 1), dtype), f"{p}_zero")
            output = b.node("Where", [mask.last_padded(b), zero, h], f"{p}_masked")
    return output, states


def _output_shapes(layers, shape, n_out):
    """The graph outputs' shapes: the batch axis named "batch", unknown sizes (such as the time axis) left open."""
    shapes = [tuple(shape)]
    for layer in layers:
        shapes = layer.compute_output_shape(shapes[0])
        if not isinstance(shapes, list):
            shapes = [shapes]
        shapes = [tuple(s) for s in shapes]
    shapes = (shapes + shapes[-1:] * n_out)[:n_out]
    return [["batch"] + [d if isinstance(d, numbers.Integral) else None for d in s[1:]] for s in shapes]


def _layer_list(model):
    from ..layers.base import Layer
    from ..models import Sequential
    if isinstance(model, Sequential):
        return list(model.layers), model.input_spec
    if isinstance(model, Layer):
        return [model], None
    raise TypeError(f"model must be a fastrnn Sequential or layer; got {type(model).__name__}")


def export(model, path=None, input_shape=None, sample=None, opset=17, input_dtype=None, input_name="input",
           output_names=None, graph_name=None):
    """Write a fastrnn model as an ONNX graph; returns the onnx.ModelProto (also saved to `path` if given).

    model: a Sequential or a single layer (SimpleRNN, LSTM, GRU, Bidirectional, Dense, ...).
    input_shape: the shape of one sample without the batch axis (e.g. (None, 16) or (timesteps,) for token ids);
    needed when the model has no input shape of its own (fastrnn.Input or input_shape=...). sample: an array
    (batch first) that gives the shape and builds an unbuilt model. The batch and time axes are dynamic.
    input_dtype: the graph input's dtype (default: the model's float dtype, or Input's / int64 for token ids).
    output_names: names for the graph outputs; by default "output" (Bidirectional with merge_mode=None:
    "output_forward", "output_backward"), then with return_state "state_h" (, "state_c") or, for Bidirectional,
    "forward_state_h", ..., "backward_state_h", ....
    opset: 13 or newer (the ops' current forms: axes as inputs); float64 models export as double graphs, which
    onnxruntime's CPU recurrent kernels do not run (fastrnn.onnx.load does).
    """
    onnx = _onnx()
    from ..layers.core import Activation, Dense, Dropout, Embedding, Flatten, RepeatVector
    from ..layers.recurrent import RecurrentLayer
    from ..layers.wrappers import Bidirectional
    from ..models import Sequential

    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset must be an integer; got {opset!r}")
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be in [{MIN_EXPORT_OPSET}, {max_opset}]; got {opset}")
    layers, spec = _layer_list(model)
    if not layers:
        raise ValueError("the model has no layers to export")
    supported = (RecurrentLayer, Bidirectional, Dense, Embedding, Dropout, Activation, Flatten, RepeatVector)
    bad = [f"{layer.name} ({type(layer).__name__})" for layer in layers if not isinstance(layer, supported)]
    if bad:
        raise ValueError(f"layers {bad} cannot be exported to ONNX; supported: "
                         f"{', '.join(c.__name__ for c in supported)}")

    # -- the input shape, and a built model ----------------------------------------------------------------------
    if sample is not None:
        sample = np.asarray(sample)
        if sample.ndim < 1:
            raise ValueError(f"sample must have a batch axis; got shape {sample.shape}")
        shape = (None,) + tuple(sample.shape[1:])
    elif input_shape is not None:
        if isinstance(input_shape, numbers.Integral):
            input_shape = (input_shape,)
        shape = (None,) + tuple(input_shape)
    elif spec is not None:
        shape = tuple(spec.batch_input_shape)
    elif layers[0].batch_input_shape is not None:
        shape = tuple(layers[0].batch_input_shape)
    elif all(layer.built for layer in layers) and isinstance(layers[0], (RecurrentLayer, Bidirectional)):
        half = layers[0] if isinstance(layers[0], RecurrentLayer) else layers[0].forward_layer
        shape = (None, None, half.input_dim)
    elif all(layer.built for layer in layers) and isinstance(layers[0], Dense):
        shape = (None, layers[0].input_dim)
    else:
        raise ValueError("export needs the input shape: pass input_shape=(timesteps or None, features) or "
                         "sample=..., or give the model fastrnn.Input(...)")
    if isinstance(model, Sequential):
        if sample is not None and not model.built:
            model.predict(sample[:1])
        elif not model.built:
            model.build(shape)
    elif not layers[0].built:
        layers[0].build(shape)

    first = layers[0]
    sequence_model = isinstance(first, (RecurrentLayer, Bidirectional, Embedding))
    if isinstance(first, Embedding):
        if input_dtype is None:
            src = sample.dtype if sample is not None else (spec.dtype if spec is not None else np.dtype(np.int64))
            input_dtype = src if np.dtype(src) in (np.dtype(np.int32), np.dtype(np.int64)) else np.int64
    elif input_dtype is None:
        input_dtype = first.dtype
    input_dtype = np.dtype(input_dtype)
    dims = []
    for k, s in enumerate(shape):
        if k == 0:
            dims.append("batch")
        elif k == 1 and sequence_model:
            dims.append("time")
        else:
            dims.append(s if s is not None else f"dim_{k}")

    b = _Builder(onnx, opset)
    b.used.add(input_name)
    cur, cur_dtype, mask = input_name, input_dtype, None
    outputs = []  # the graph outputs: the last layer's output(s), then its states with return_state
    sentinel = object()

    def cast_to(value, value_dtype, dtype):
        if np.dtype(value_dtype) == np.dtype(dtype):
            return value
        return b.node("Cast", [value], "cast", to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        p = layer.name
        result = None  # the layer's outputs when it has more than one
        if isinstance(layer, Embedding):
            if cur_dtype.kind not in "iu":
                cur = b.node("Cast", [cur], f"{p}_indices", to=onnx.TensorProto.INT64)
                cur_dtype = np.dtype(np.int64)
            new_mask = None
            if layer.mask_zero:
                zero = b.const(np.array(0, cur_dtype), f"{p}_zero")
                new_mask = _Mask(b.node("Not", [b.node("Equal", [cur, zero], f"{p}_is_pad")], f"{p}_mask"))
            cur = b.node("Gather", [b.const(layer.embeddings, f"{p}_embeddings"), cur], p, axis=0)
            cur_dtype = layer.dtype
            mask = new_mask
            if last:
                outputs = [cur]
            continue
        cur = cast_to(cur, cur_dtype, layer.dtype)
        cur_dtype = layer.dtype
        if isinstance(layer, (RecurrentLayer, Bidirectional)):
            if layer.return_state and not last:
                raise ValueError(f"{p}: return_state=True is only exported for the last layer of a model")
            if isinstance(layer, RecurrentLayer):
                y, states = _emit_recurrent(b, layer, cur, mask, False, layer.dtype)
                result = [y]
            else:
                y_f, s_f = _emit_recurrent(b, layer.forward_layer, cur, mask, False, layer.dtype)
                y_b, s_b = _emit_recurrent(b, layer.backward_layer, cur, mask, layer.return_sequences, layer.dtype)
                states = s_f + s_b
                mode = layer.merge_mode
                if mode is None:
                    if not last:
                        raise ValueError(f"{p}: merge_mode=None (two outputs) is only exported for the last layer")
                    result = [y_f, y_b]
                elif mode == "concat":
                    result = [b.node("Concat", [y_f, y_b], f"{p}_concat", axis=-1)]
                elif mode == "sum":
                    result = [b.node("Add", [y_f, y_b], f"{p}_sum")]
                elif mode == "mul":
                    result = [b.node("Mul", [y_f, y_b], f"{p}_mul")]
                else:
                    two = b.const(np.array(2, layer.dtype), f"{p}_two")
                    result = [b.node("Div", [b.node("Add", [y_f, y_b], f"{p}_sum"), two], f"{p}_ave")]
            if layer.return_state:
                result = result + states
            cur = result[0]
        elif isinstance(layer, Dense):
            cur = b.node("MatMul", [cur, b.const(layer.kernel, f"{p}_kernel")], f"{p}_matmul")
            if layer.use_bias:
                cur = b.node("Add", [cur, b.const(layer.bias, f"{p}_bias")], f"{p}_biased")
            cur = _activation(b, cur, layer.activation, layer.dtype, p)
        elif isinstance(layer, Activation):
            cur = _activation(b, cur, layer.activation, layer.dtype, p)
        elif isinstance(layer, Flatten):
            cur = b.node("Flatten", [cur], p, axis=1)
        elif isinstance(layer, RepeatVector):
            cur = b.node("Unsqueeze", [cur, b.ints([1], "axis1")], f"{p}_b1f")
            cur = b.node("Expand", [cur, b.ints([1, layer.n, 1], f"{p}_shape")], p)
        # Dropout: the identity at inference
        passed = layer.compute_mask(sentinel)
        if not (passed is sentinel or (isinstance(passed, list) and passed and passed[0] is sentinel)):
            mask = None
        if last:
            outputs = result if result is not None else [cur]

    # -- graph outputs ----------------------------------------------------------------------------------------------
    n_out = len(outputs)
    if output_names is None:
        last = layers[-1]
        main = 2 if (isinstance(last, Bidirectional) and last.merge_mode is None) else 1
        names = ["output"] if main == 1 else ["output_forward", "output_backward"]
        if n_out > main:
            if isinstance(last, Bidirectional):
                kinds = ["h", "c"][:last.forward_layer.n_states]
                bk = ["h", "c"][:last.backward_layer.n_states]
                names += [f"forward_state_{s}" for s in kinds] + [f"backward_state_{s}" for s in bk]
            else:
                names += ["state_h", "state_c"][:n_out - main]
    else:
        names = list(output_names)
        if len(names) != n_out:
            raise ValueError(f"output_names must name the model's {n_out} output(s); got {len(names)}")
        if len(set(names)) != len(names) or input_name in names:
            raise ValueError(f"output_names must be distinct and differ from input_name={input_name!r}; got {names}")
    out_dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(cur_dtype))
    out_shapes = _output_shapes(layers, tuple(None if d in ("batch", "time") else d for d in dims), n_out)
    for value, name in zip(outputs, names):
        if name in b.used and name != value:
            raise ValueError(f"output name {name!r} is already used in the graph; pass other output_names")
        b.node("Identity", [value], name, outputs=[name])
    graph_inputs = [onnx.helper.make_tensor_value_info(input_name, onnx.helper.np_dtype_to_tensor_dtype(input_dtype),
                                                       dims)]
    graph_outputs = [onnx.helper.make_tensor_value_info(n, out_dtype, shp) for n, shp in zip(names, out_shapes)]
    graph = onnx.helper.make_graph(b.nodes, graph_name or getattr(model, "name", "fastrnn"), graph_inputs,
                                   graph_outputs, b.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fastrnn",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
