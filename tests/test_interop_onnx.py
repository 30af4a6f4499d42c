"""fastrnn.onnx: ONNX graphs with RNN / GRU / LSTM nodes run by fastrnn equal onnxruntime, and fastrnn models
exported to ONNX run in onnxruntime (and back in fastrnn.onnx) with the outputs of the fastrnn model.

onnxruntime's CPU kernels have no layout=1 (batch-major) recurrent nodes: those graphs are compared with
onnxruntime running the same weights as a layout=0 graph, inputs and outputs transposed.
"""
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.onnx as fonnx  # noqa: E402

ort.set_default_logger_severity(3)
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
TOL = dict(rtol=1e-5, atol=1e-5)
F = TensorProto.FLOAT


def ort_run(model, feed, outputs=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feed)


def assert_outputs_equal(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype, (g.shape, r.shape, g.dtype, r.dtype)
        np.testing.assert_allclose(g, r, **TOL)


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def recurrent_weights(op, nd, H, I, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[op]
    W = (rng.standard_normal((nd, G * H, I)) * 0.5).astype(np.float32)
    R = (rng.standard_normal((nd, G * H, H)) * 0.5).astype(np.float32)
    B = (rng.standard_normal((nd, 2 * G * H)) * 0.5).astype(np.float32)
    return W, R, B


def recurrent_model(op, direction="forward", layout=0, H=4, I=3, seq=False, init=False, weights_as_inputs=False,
                    seed=0, P=None, **attrs):
    """A graph holding one recurrent node, its weights as initializers (or graph inputs)."""
    nd = 2 if direction == "bidirectional" else 1
    W, R, B = recurrent_weights(op, nd, H, I, seed)
    tensors = {"W": W, "R": R, "B": B}
    if P is not None:
        tensors["P"] = P
    state = [nd, "N", H] if layout == 0 else ["N", nd, H]
    ins = [helper.make_tensor_value_info("X", F, ["T", "N", I] if layout == 0 else ["N", "T", I])]
    names = ["X", "W", "R", "B", "seq" if seq else ""]
    if seq:
        ins.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["N"]))
    names += ["h0" if init else ""]
    if init:
        ins.append(helper.make_tensor_value_info("h0", F, state))
    if op == "LSTM":
        names += ["c0" if init else ""]
        if init:
            ins.append(helper.make_tensor_value_info("c0", F, state))
        if P is not None:
            names.append("P")
    while names[-1] == "":
        names.pop()
    if layout:
        attrs["layout"] = layout
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, name=f"{op.lower()}0", hidden_size=H, direction=direction, **attrs)
    if weights_as_inputs:
        ins += [helper.make_tensor_value_info(k, F, list(v.shape)) for k, v in tensors.items()]
        inits = []
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    model = make_model([node], ins, [helper.make_tensor_value_info(o, F, None) for o in outs], inits)
    return model, tensors


def recurrent_feed(op, nd, H, seq, init, B=5, T=6, I=3, seed=1):
    rng = np.random.default_rng(seed)
    feed = {"X": rng.standard_normal((T, B, I)).astype(np.float32)}
    if seq:
        feed["seq"] = np.array([T, 3, 0, 1, T - 1], np.int32)[:B]   # full, partial, empty rows
    if init:
        feed["h0"] = rng.standard_normal((nd, B, H)).astype(np.float32)
        if op == "LSTM":
            feed["c0"] = rng.standard_normal((nd, B, H)).astype(np.float32)
    return feed


def to_layout1(feed):
    out = dict(feed)
    out["X"] = feed["X"].transpose(1, 0, 2)
    for k in ("h0", "c0"):
        if k in out:
            out[k] = feed[k].transpose(1, 0, 2)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Import: recurrent nodes against onnxruntime
# ---------------------------------------------------------------------------------------------------------------

CELLS = [("RNN", {}), ("RNN", {"activations": ["Relu"]}), ("LSTM", {}),
         ("GRU", {"linear_before_reset": 0}), ("GRU", {"linear_before_reset": 1})]
CELL_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru-lbr0", "gru-lbr1"]
STATES = [(False, False), (True, False), (False, True), (True, True)]
STATE_IDS = ["plain", "seq_lens", "init", "seq_lens+init"]


@pytest.mark.parametrize("seq,init", STATES, ids=STATE_IDS)
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op,attrs", CELLS, ids=CELL_IDS)
def test_recurrent_node_matches_onnxruntime(op, attrs, direction, layout, seq, init):
    nd = 2 if direction == "bidirectional" else 1
    attrs = dict(attrs)
    if "activations" in attrs:
        attrs["activations"] = attrs["activations"] * nd
    H = 4
    feed = recurrent_feed(op, nd, H, seq, init)
    model0, _ = recurrent_model(op, direction, 0, H, seq=seq, init=init, **attrs)
    ref = ort_run(model0, feed)
    model, _ = recurrent_model(op, direction, layout, H, seq=seq, init=init, **attrs)
    if layout == 1:
        feed = to_layout1(feed)
        ref = [ref[0].transpose(2, 0, 1, 3)] + [r.transpose(1, 0, 2) for r in ref[1:]]
    m = fonnx.load(model)
    assert m.input_names == [i.name for i in model.graph.input]
    assert m.output_names == ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    assert_outputs_equal(m.run(None, feed), ref)


def test_mixed_activations_per_direction_and_backends():
    model, _ = recurrent_model("RNN", "bidirectional", seq=True, init=True, activations=["Relu", "Tanh"])
    feed = recurrent_feed("RNN", 2, 4, True, True)
    ref = ort_run(model, feed)
    for backend in ("numpy", "auto"):
        assert_outputs_equal(fonnx.load(model, backend=backend).run(None, feed), ref)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_weights_as_graph_inputs(op):
    """Weights fed at run time are converted at run time (not at load time)."""
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    model, tensors = recurrent_model(op, "bidirectional", seq=True, weights_as_inputs=True, **extra)
    feed = dict(recurrent_feed(op, 2, 4, True, False), **tensors)
    assert_outputs_equal(fonnx.load(model).run(["Y_h", "Y"], feed), ort_run(model, feed, ["Y_h", "Y"]))


def test_optional_outputs_and_zero_peepholes():
    H = 4
    model, _ = recurrent_model("LSTM", "reverse", H=H, seq=True, init=True, P=np.zeros((1, 3 * H), np.float32))
    node = model.graph.node[0]
    node.output[:] = ["", "Y_h"]                      # Y absent: only the final state
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("Y_h", F, None))
    feed = recurrent_feed("LSTM", 1, H, True, True)
    m = fonnx.load(model.SerializeToString())         # serialized bytes load too
    assert m.get_inputs() == [("X", np.float32, (None, None, 3)), ("seq", np.int32, (None,)),
                              ("h0", np.float32, (1, None, H)), ("c0", np.float32, (1, None, H))]
    assert m.output_names == ["Y_h"]
    assert_outputs_equal(m.run(None, feed), ort_run(model, feed))


def test_pytorch_style_graph():
    """The ops torch.onnx.export puts around an LSTM: initial states built from Shape / Gather / ConstantOfShape,
    Transpose, Squeeze, Slice, Gemm, Softmax."""
    H, I = 4, 3
    W, R, B = recurrent_weights("LSTM", 2, H, I)
    rng = np.random.default_rng(3)
    Wd, bd = rng.standard_normal((5, 2 * H)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(W, "W"), (R, "R"), (B, "B"), (Wd, "Wd"), (bd, "bd")]]
    c = {"two": np.array([2], np.int64), "hid": np.array([H], np.int64), "zero": np.array(0, np.int64),
         "ax0": np.array([0], np.int64), "ax1": np.array([1], np.int64), "last": np.array([-1], np.int64),
         "big": np.array([np.iinfo(np.int64).max], np.int64), "shp": np.array([0, -1], np.int64)}
    inits += [numpy_helper.from_array(v, k) for k, v in c.items()]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
        helper.make_node("Concat", ["two", "batch1", "hid"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("ConstantOfShape", ["state_shape"], ["c0"]),
        helper.make_node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], hidden_size=H,
                         direction="bidirectional"),
        helper.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]),          # (T, B, 2, H)
        helper.make_node("Reshape", ["Yt", "shp"], ["Yr"]),                       # 0 copies T: (T, B*2*H)
        helper.make_node("Slice", ["Y", "last", "big", "ax0"], ["Ylast"]),        # (1, 2, B, H)
        helper.make_node("Squeeze", ["Ylast", "ax0"], ["Ysq"]),                   # (2, B, H)
        helper.make_node("Transpose", ["Ysq"], ["Yb"], perm=[1, 0, 2]),
        helper.make_node("Flatten", ["Yb"], ["feat"], axis=1),                    # (B, 2H)
        helper.make_node("Gemm", ["feat", "Wd", "bd"], ["logits"], transB=1, alpha=0.7, beta=1.3),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["T", "N", I])],
                       [helper.make_tensor_value_info(n, F, None) for n in ("probs", "Yr", "Y_c")], inits)
    feed = {"x": rng.standard_normal((6, 4, I)).astype(np.float32)}
    assert_outputs_equal(fonnx.load(model).run(None, feed), ort_run(model, feed))


@pytest.mark.parametrize("opset", [11, 17])
def test_simple_ops_match_onnxruntime(opset):
    """Element-wise, comparison, reduction and shape ops, in an old (axes as attributes) and a new opset."""
    rng = np.random.default_rng(4)
    c = {"half": np.array(0.5, np.float32), "two": np.array(2.0, np.float32), "tenth": np.array(0.1, np.float32),
         "zero": np.array(0.0, np.float32), "M": rng.standard_normal((3, 2)).astype(np.float32),
         "ax1": np.array([1], np.int64), "ax2": np.array([2], np.int64),
         "starts": np.array([1, 0], np.int64), "ends": np.array([-1, 100], np.int64),
         "sl_axes": np.array([1, 2], np.int64), "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32),
         "idx": np.array([[2, 0], [1, 1]], np.int64)}
    new = opset >= 13

    def axes_node(op, x, out, axes, **kw):
        if new:
            name = f"{out}_axes"
            c[name] = np.array(axes, np.int64)
            return helper.make_node(op, [x, name], [out], **kw)
        return helper.make_node(op, [x], [out], axes=axes, **kw)

    nodes = [
        helper.make_node("Mul", ["x", "half"], ["a"]),
        helper.make_node("Div", ["x", "two"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Add", ["d", "x"], ["e"]),
        helper.make_node("Sigmoid", ["e"], ["s"]),
        helper.make_node("Tanh", ["e"], ["t"]),
        helper.make_node("Relu", ["e"], ["r"]),
        helper.make_node("Greater", ["e", "zero"], ["gt"]),
        helper.make_node("Less", ["e", "tenth"], ["lt"]),
        helper.make_node("Equal", ["gt", "lt"], ["eq"]),
        helper.make_node("Not", ["eq"], ["neq"]),
        helper.make_node("Where", ["neq", "s", "t"], ["w"]),
        helper.make_node("Cast", ["neq"], ["neqf"], to=F),
        axes_node("ReduceSum", "w", "rs", [1], keepdims=0),
        helper.make_node("ReduceMean", ["w"], ["rm"], axes=[2], keepdims=1),
        axes_node("Unsqueeze", "rs", "rsu", [1]),
        axes_node("Squeeze", "rm", "rms", [2]),
        helper.make_node("MatMul", ["r", "M"], ["mm"]),
        helper.make_node("Slice", ["x", "starts", "ends", "sl_axes"], ["sl"]),
        helper.make_node("Concat", ["sl", "sl"], ["cat"], axis=-1),
        helper.make_node("Clip", ["cat", "lo", "hi"], ["clip"]),
        helper.make_node("Softmax", ["x"], ["sm"], axis=1),
        helper.make_node("Gather", ["x", "idx"], ["gat"], axis=1),
        helper.make_node("Flatten", ["gat"], ["flat"], axis=2),
        helper.make_node("Identity", ["flat"], ["ident"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Mul", ["ident", "k"], ["scaled"]),
    ]
    outs = ["w", "neqf", "rsu", "rms", "mm", "clip", "sm", "scaled"]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4, 3])],
                       [helper.make_tensor_value_info(n, F, None) for n in outs],
                       [numpy_helper.from_array(v, k) for k, v in c.items()], opset=opset)
    feed = {"x": rng.standard_normal((2, 4, 3)).astype(np.float32)}
    assert_outputs_equal(fonnx.load(model).run(None, feed), ort_run(model, feed))


def test_torch_exported_graph():
    torch = pytest.importorskip("torch")
    import io
    import warnings

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)
            self.lstm = torch.nn.LSTM(10, 4, batch_first=True)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            y, _ = self.gru(x)
            y, _ = self.lstm(y)
            return self.fc(y[:, -1])

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 6, 3)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 1: "time"}}, opset_version=17)
        except Exception as exc:  # pragma: no cover - depends on the torch build
            pytest.skip(f"torch.onnx.export (TorchScript exporter) unavailable: {exc}")
    model = onnx.load_model_from_string(buf.getvalue())
    x2 = np.random.default_rng(5).standard_normal((3, 9, 3)).astype(np.float32)  # another batch and length
    got = fonnx.load(model).run(None, {"x": x2})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x2)).numpy()
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got, ort_run(model, {"x": x2})[0], **TOL)


# ---------------------------------------------------------------------------------------------------------------
# Import: what is not supported, and bad input
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,kwargs,match", [
    ("LSTM", dict(clip=3.0), r"LSTM node 'lstm0': attribute clip=3\.0 is not supported"),
    ("GRU", dict(clip=1.0), r"GRU node 'gru0': attribute clip=1\.0"),
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Relu"]),
     r"LSTM node 'lstm0': attribute activations=\['Sigmoid', 'Tanh', 'Relu'\] is not supported"),
    ("GRU", dict(activations=["HardSigmoid", "Tanh"]), r"GRU node 'gru0': attribute activations="),
    ("RNN", dict(activations=["Sigmoid"]), r"RNN node 'rnn0': attribute activations=\['Sigmoid'\]"),
    ("LSTM", dict(input_forget=1), r"LSTM node 'lstm0': attribute input_forget=1 is not supported"),
    ("LSTM", dict(hidden_size=5), r"LSTM node 'lstm0': attribute hidden_size=5 does not match"),
    ("GRU", dict(linear_before_reset=2), r"GRU node 'gru0': attribute linear_before_reset=2"),
    ("RNN", dict(direction="sideways"), r"RNN node 'rnn0': attribute direction='sideways'"),
])
def test_unsupported_attributes_raise(op, kwargs, match):
    kwargs = dict(kwargs)
    hidden = kwargs.pop("hidden_size", None)
    model, _ = recurrent_model(op, kwargs.pop("direction", "forward"), **kwargs)
    if hidden is not None:
        for a in model.graph.node[0].attribute:
            if a.name == "hidden_size":
                a.i = hidden
    with pytest.raises(ValueError, match=match):
        fonnx.load(model)


def test_nonzero_peepholes_raise():
    P = np.zeros((1, 12), np.float32)
    P[0, 3] = 0.5
    model, _ = recurrent_model("LSTM", P=P)
    with pytest.raises(ValueError, match=r"LSTM node 'lstm0': input P \(peepholes\) with non-zero values"):
        fonnx.load(model)


def test_unknown_ops_are_listed():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Conv", ["a", "w"], ["b"], name="conv1"),
             helper.make_node("LRN", ["b"], ["y"], size=3)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])],
                       [helper.make_tensor_value_info("y", F, None)],
                       [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    with pytest.raises(ValueError, match=r"op types fastrnn.onnx does not support: Conv \(nodes \['conv1'\]\); "
                                         r"LRN"):
        fonnx.load(model)


def test_bad_feeds():
    model, _ = recurrent_model("GRU", seq=True)
    m = fonnx.load(model)
    feed = recurrent_feed("GRU", 1, 4, True, False)
    with pytest.raises(ValueError, match=r"missing graph inputs \['seq'\]"):
        m.run(None, {"X": feed["X"]})
    with pytest.raises(ValueError, match=r"not graph inputs"):
        m.run(None, dict(feed, extra=feed["X"]))
    with pytest.raises(ValueError, match=r"input 'X' must have shape \(\?, \?, 3\); got shape \(6, 5, 2\)"):
        m.run(None, dict(feed, X=feed["X"][..., :2]))
    with pytest.raises(ValueError, match=r"GRU node 'gru0': input sequence_lens must be in \[0, seq_length=6\]"):
        m.run(None, dict(feed, seq=np.array([7, 1, 1, 1, 1], np.int32)))
    with pytest.raises(ValueError, match=r"'nope' is not a value of the graph"):
        m.run(["nope"], feed)
    with pytest.raises(TypeError, match="model_or_path"):
        fonnx.load(42)
    with pytest.raises(ValueError, match="backend"):
        fonnx.load(model, backend="gpu")


def test_import_is_lazy():
    """`import fastrnn.onnx` does not import onnx (the adapter imports it on first use)."""
    code = "import sys, fastrnn.onnx, fastrnn.interop; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# Export: onnxruntime (and fastrnn.onnx) run the exported graph with the fastrnn model's outputs
# ---------------------------------------------------------------------------------------------------------------

def padded_tokens(B=6, T=8, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(B, T))
    lens = np.array([T, 5, 1, 0, 3, T - 1])[:B]        # full, partial, single-step and empty rows
    tokens[np.arange(T)[None, :] >= lens[:, None]] = 0
    return tokens.astype(np.int64)


def float_inputs(B=4, T=7, D=3, seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


def embed(*layers, mask_zero=True):
    return fastrnn.Sequential([fastrnn.Input((None,), dtype="int64"),
                               fastrnn.Embedding(20, 6, mask_zero=mask_zero, seed=11), *layers])


def floats(*layers, D=3):
    return fastrnn.Sequential([fastrnn.Input((None, D)), *layers])


EXPORT_CASES = {
    "stacked-lstm-gru-dense": lambda: (floats(fastrnn.LSTM(5, return_sequences=True, seed=1), fastrnn.GRU(4, seed=2),
                                              fastrnn.Dense(2, activation="softmax", seed=3)), float_inputs()),
    "masked-bilstm-dropout-dense": lambda: (embed(fastrnn.Bidirectional(fastrnn.LSTM(5, seed=2)),
                                                  fastrnn.Dropout(0.2),
                                                  fastrnn.Dense(1, activation="sigmoid", seed=3)), padded_tokens()),
    "masked-rnn-seq-gru-backwards-rb": lambda: (embed(
        fastrnn.SimpleRNN(5, return_sequences=True, seed=2),
        fastrnn.GRU(4, return_sequences=True, reset_after=False, go_backwards=True, seed=3),
        fastrnn.Dense(3, seed=4)), padded_tokens()),
    "masked-lstm-zero-output-for-mask": lambda: (embed(
        fastrnn.LSTM(5, return_sequences=True, zero_output_for_mask=True, seed=2),
        fastrnn.LSTM(4, zero_output_for_mask=True, seed=3)), padded_tokens()),
    "masked-gru-backwards-last": lambda: (embed(fastrnn.GRU(4, go_backwards=True, seed=3)), padded_tokens()),
    "masked-dense-then-rnn-relu": lambda: (embed(fastrnn.Dense(5, activation="tanh", seed=2),
                                                 fastrnn.SimpleRNN(4, activation="relu", return_sequences=True,
                                                                   seed=3)), padded_tokens()),
    "unmasked-embedding-gru": lambda: (embed(fastrnn.GRU(4, return_sequences=True, seed=3), mask_zero=False),
                                       padded_tokens()),
    "rnn-relu-backwards-seq": lambda: (floats(fastrnn.SimpleRNN(4, activation="relu", go_backwards=True,
                                                                return_sequences=True, seed=1)), float_inputs()),
    "no-bias-layers": lambda: (embed(fastrnn.LSTM(4, use_bias=False, return_sequences=True, seed=1),
                                     fastrnn.GRU(3, reset_after=False, use_bias=False, return_sequences=True, seed=2),
                                     fastrnn.GRU(3, use_bias=False, go_backwards=True, seed=3),
                                     fastrnn.Dense(2, use_bias=False, seed=4)), padded_tokens()),
    "repeat-vector-flatten": lambda: (floats(fastrnn.GRU(4, seed=1), fastrnn.RepeatVector(3),
                                             fastrnn.LSTM(2, return_sequences=True, seed=3), fastrnn.Flatten(),
                                             fastrnn.Dense(2, seed=4)), float_inputs()),
}
for _mode in ("concat", "sum", "mul", "ave"):
    EXPORT_CASES[f"masked-bigru-seq-{_mode}"] = (lambda mode: lambda: (embed(
        fastrnn.Bidirectional(fastrnn.GRU(5, return_sequences=True, seed=2), merge_mode=mode),
        fastrnn.Bidirectional(fastrnn.LSTM(3, seed=5), merge_mode=mode)), padded_tokens()))(_mode)


def check_export(model, x, n_outputs=1, **kwargs):
    proto = fonnx.export(model, **kwargs)
    onnx.checker.check_model(proto)
    want = model.predict(x) if isinstance(model, fastrnn.Sequential) else model(x)
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    assert len(proto.graph.output) == len(want) == n_outputs
    feed = {proto.graph.input[0].name: x}
    assert_outputs_equal(ort_run(proto, feed), want)
    assert_outputs_equal(fonnx.load(proto).run(None, feed), want)      # round trip
    return proto


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_matches_model(case):
    model, x = EXPORT_CASES[case]()
    proto = check_export(model, x)
    # dynamic batch and time axes: another batch size and sequence length runs as well
    x2 = np.concatenate([x, x[:1]])[:, :-1] if x.ndim == 2 else float_inputs(B=3, T=5)
    feed = {proto.graph.input[0].name: x2}
    want = model.predict(x2)
    np.testing.assert_allclose(ort_run(proto, feed)[0], want, **TOL)


@pytest.mark.parametrize("activation", sorted(fastrnn.layers.activations.ACTIVATIONS))
def test_export_activations(activation):
    model = floats(fastrnn.GRU(4, seed=1), fastrnn.Dense(3, activation=activation, seed=2),
                   fastrnn.Activation(activation))
    check_export(model, float_inputs())


def test_export_single_layers_with_states():
    x = float_inputs()
    proto = check_export(fastrnn.LSTM(5, return_sequences=True, return_state=True, seed=3), x, 3, sample=x)
    assert [o.name for o in proto.graph.output] == ["output", "state_h", "state_c"]
    proto = check_export(fastrnn.Bidirectional(fastrnn.GRU(5, return_sequences=True, return_state=True, seed=2),
                                               merge_mode=None), x, 4, sample=x)
    assert [o.name for o in proto.graph.output] == ["output_forward", "output_backward", "forward_state_h",
                                                    "backward_state_h"]
    check_export(fastrnn.Bidirectional(fastrnn.LSTM(5, return_state=True, go_backwards=True, seed=2)), x, 5,
                 input_shape=(None, 3), output_names=["y", "fh", "fc", "bh", "bc"])
    check_export(fastrnn.SimpleRNN(4, seed=1), x, sample=x)


def test_export_to_file_and_float64(tmp_path):
    model = floats(fastrnn.LSTM(4, return_sequences=True, dtype="float64", seed=1),
                   fastrnn.GRU(3, reset_after=False, dtype="float64", seed=2), fastrnn.Dense(2, dtype="float64"))
    x = float_inputs().astype(np.float64)
    path = tmp_path / "model.onnx"
    proto = fonnx.export(model, path, opset=15)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    # onnxruntime's CPU recurrent kernels are float32 only: the double graph runs in fastrnn.onnx
    got = fonnx.load(path).run(None, {"input": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-12, atol=1e-12)


def test_export_errors():
    x = float_inputs()
    with pytest.raises(ValueError, match="stateful"):
        fonnx.export(fastrnn.LSTM(3, stateful=True), sample=x)
    with pytest.raises(ValueError, match="opset"):
        fonnx.export(floats(fastrnn.LSTM(3)), opset=9)
    with pytest.raises(ValueError, match="input shape"):
        fonnx.export(fastrnn.Sequential([fastrnn.LSTM(3)]))
    with pytest.raises(ValueError, match="output_names"):
        fonnx.export(floats(fastrnn.LSTM(3)), output_names=["a", "b"])


def test_weight_conversion_round_trip():
    rng = np.random.default_rng(7)
    for cell, G in (("simple_rnn", 1), ("lstm", 4), ("gru", 3)):
        for reset_after in (True, False):
            if cell != "gru" and not reset_after:
                continue
            H, I = 3, 2
            b = rng.standard_normal((2, G * H) if cell == "gru" and reset_after else (G * H,))
            weights = [rng.standard_normal((I, G * H)), rng.standard_normal((H, G * H)), b]
            W, R, B, lbr = fonnx.keras_to_onnx_weights(cell, weights, reset_after)
            back, ra = fonnx.onnx_to_keras_weights(cell, W, R, B, lbr)
            assert ra == (cell == "gru" and reset_after)
            for a, w in zip(back, weights):
                np.testing.assert_allclose(a, w, rtol=0, atol=1e-15)

