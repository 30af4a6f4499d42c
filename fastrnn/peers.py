"""The same recurrent layer in fastrnn, PyTorch and ONNX Runtime, for `fastrnn bench --peers`.

Every runner computes the same problem: one layer (SimpleRNN, LSTM or GRU), input width = units, float32, batch-major
x (batch, timesteps, units) in and the full output sequence (batch, timesteps, units) out, with the same weights
converted to each framework's layout. Modes:

- "inference": the forward pass (torch: eval() and torch.no_grad(); ONNX Runtime: one RNN/LSTM/GRU node).
- "training":  forward + back-propagation through time of sum(outputs), gradients for x and every weight
               (fastrnn: rnn_forward(training=True) + rnn_backward(dy=ones); torch: sum(y).backward()).
               ONNX Runtime has no training runner.

Layouts (fastrnn is Keras: W (D, G*U), R (U, G*U), gate order LSTM i,f,c,o; GRU z,r,h; GRU reset_after=True has
bias (2, 3U) = input bias, recurrent bias):

- torch: weight_ih (G*U, D) = W.T, weight_hh (G*U, U) = R.T, bias_ih, bias_hh; gate order LSTM i,f,g,o (= Keras),
  GRU r,z,n (Keras blocks 1,0,2). The GRU equals Keras reset_after=True.
- ONNX: W (1, G*U, D), R (1, G*U, U), B (1, 2*G*U) = [input biases, recurrent biases]; gate order LSTM i,o,f,c
  (Keras blocks 0,3,1,2), GRU z,r,h (= Keras), linear_before_reset=1 (= reset_after=True). ONNX Runtime's CPU
  recurrent kernels take time-major X (T, B, D) only (layout=0), so the graph transposes x in and y out; both
  transposes are part of the timed problem (all three runners map the same (B, T, D) array to a (B, T, U) array).

`check_agreement` runs every runner once and compares it with the first (which also warms every runner up): a
benchmark of different computations is worthless.
"""
import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
# Register SciPy's BLAS (used by the kernels) before any thread limit is entered: threadpoolctl only reaches
# libraries that are loaded.
import scipy.linalg.cython_blas  # noqa: F401
from threadpoolctl import ThreadpoolController

from . import layers, ops, threads

PEERS = ("torch", "onnxruntime")
FASTRNN_BACKENDS = ("numba", "cython")
MODES = ("inference", "training")

# Keras gate blocks in each framework's gate order.
TORCH_ORDER = {"simple_rnn": [0], "lstm": [0, 1, 2, 3], "gru": [1, 0, 2]}
ONNX_ORDER = {"simple_rnn": [0], "lstm": [0, 3, 1, 2], "gru": [0, 1, 2]}
ONNX_OP = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
TORCH_CLASS = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
ONNX_OPSET = 17

_modules = {}


def peer_module(name):
    """The imported peer framework, or None when it is not installed (the reason is in peer_status())."""
    if name not in _modules:
        try:
            _modules[name] = (importlib.import_module(name), None)
        except Exception as exc:  # ImportError, or a broken install
            _modules[name] = (None, f"{type(exc).__name__}: {exc}")
    return _modules[name][0]


def peer_status():
    """{peer: None if usable, else why not}; onnxruntime also needs the onnx package to build its graph."""
    out = {}
    for name in PEERS:
        peer_module(name)
        out[name] = _modules[name][1]
    if out["onnxruntime"] is None and peer_module("onnx") is None:
        out["onnxruntime"] = "onnx (needed to build the graph): " + _modules["onnx"][1]
    return out


def available_peers():
    return [name for name, reason in peer_status().items() if reason is None]


def peer_versions():
    return {name: getattr(peer_module(name), "__version__", "?") for name in available_peers()}


# ---------------------------------------------------------------------------------------------------------------
# The problem and the layout conversions
# ---------------------------------------------------------------------------------------------------------------

def make_problem(cell, batch, timesteps, units, dtype=np.float32, seed=0):
    """x (B, T, U) and Keras-layout weights [W, R, b] with a non-zero bias (so that a wrongly converted bias shows
    in the agreement check)."""
    from .benchmark import make_inputs
    x, (W, R, b) = make_inputs(cell, batch, timesteps, units, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    b = (0.1 * rng.standard_normal(b.shape)).astype(dtype)
    return x, [W, R, b]


def _blocks(a, order, U, axis):
    """Gate blocks of `a` (each U wide along `axis`) reordered: block k of the result is block order[k] of `a`."""
    return np.concatenate([np.take(a, np.arange(g * U, (g + 1) * U), axis=axis) for g in order], axis=axis)


def _inverse(order):
    inv = [0] * len(order)
    for k, g in enumerate(order):
        inv[g] = k
    return inv


def split_bias(cell, b):
    """(input bias, recurrent bias), each (G*U,): Keras has one bias except GRU reset_after=True."""
    if cell == "gru":
        return b[0], b[1]
    return b, np.zeros_like(b)


def to_torch_layout(cell, weights):
    """{torch parameter name: array} for torch.nn.RNN/LSTM/GRU (one layer, one direction) from Keras weights."""
    W, R, b = weights
    U = R.shape[0]
    order = TORCH_ORDER[cell]
    b_ih, b_hh = split_bias(cell, b)
    return {
        "weight_ih_l0": np.ascontiguousarray(_blocks(W, order, U, 1).T),
        "weight_hh_l0": np.ascontiguousarray(_blocks(R, order, U, 1).T),
        "bias_ih_l0": _blocks(b_ih, order, U, 0),
        "bias_hh_l0": _blocks(b_hh, order, U, 0),
    }


def from_torch_grads(cell, grads, U):
    """Keras-layout [dW, dR, db] from the gradients of the torch parameters (dict name -> array)."""
    inv = _inverse(TORCH_ORDER[cell])
    dW = _blocks(grads["weight_ih_l0"].T, inv, U, 1)
    dR = _blocks(grads["weight_hh_l0"].T, inv, U, 1)
    db_ih = _blocks(grads["bias_ih_l0"], inv, U, 0)
    db_hh = _blocks(grads["bias_hh_l0"], inv, U, 0)
    db = np.stack([db_ih, db_hh]) if cell == "gru" else db_ih  # d/db_ih == d/db_hh for one summed bias
    return [dW, dR, db]


def to_onnx_layout(cell, weights):
    """ONNX W (1, G*U, D), R (1, G*U, U), B (1, 2*G*U) from Keras weights."""
    W, R, b = weights
    U = R.shape[0]
    order = ONNX_ORDER[cell]
    b_in, b_rec = split_bias(cell, b)
    return (np.ascontiguousarray(_blocks(W, order, U, 1).T[None]),
            np.ascontiguousarray(_blocks(R, order, U, 1).T[None]),
            np.concatenate([_blocks(b_in, order, U, 0), _blocks(b_rec, order, U, 0)])[None])


def onnx_model(cell, weights, dtype=np.float32):
    """An ONNX model with one RNN/LSTM/GRU node: input x (B, T, D) -> output y (B, T, U), weights as initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    W, R, B = to_onnx_layout(cell, [np.asarray(w, dtype) for w in weights])
    U = weights[1].shape[0]
    D = weights[0].shape[0]
    elem = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    attrs = dict(hidden_size=U)
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),                  # (T, B, D)
        helper.make_node(ONNX_OP[cell], ["x_tm", "W", "R", "B"], ["y_tm"], **attrs),      # (T, 1, B, U)
        helper.make_node("Transpose", ["y_tm"], ["y_b1"], perm=[2, 1, 0, 3]),             # (B, 1, T, U)
        helper.make_node("Squeeze", ["y_b1", "axis1"], ["y"]),                            # (B, T, U)
    ]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, f"fastrnn_peer_{cell}",
                              [helper.make_tensor_value_info("x", elem, ["batch", "time", D])],
                              [helper.make_tensor_value_info("y", elem, ["batch", "time", U])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="fastrnn.peers")
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Thread control: BLAS pools (fastrnn's kernels and NumPy), OpenMP, torch's intra-op pool
# ---------------------------------------------------------------------------------------------------------------

class Threads:
    """`with Threads(n):` runs every framework at n threads, and restores the thread settings on exit:

    - fastrnn: fastrnn.set_num_threads(n) (the kernels split the batch over n threads, fastrnn.threads), and the
      kernels' BLAS (SciPy's) at 1 thread: fastrnn's own threads are its parallelism;
    - every other BLAS and OpenMP pool (NumPy's BLAS, torch's OpenMP) limited to n (threadpoolctl), and torch's
      intra-op threads set to n. ONNX Runtime's threads are fixed per session: pass the same n to the runner
      (intra_op_num_threads).

    peers=False: fastrnn and the BLAS pools only (neither imports nor sets up torch)."""

    def __init__(self, n, peers=True):
        self.n = int(n)
        self.peers = peers
        self._limits = None
        self._torch_old = None
        self._fastrnn_old = None

    def __enter__(self):
        # Import the peers first: threadpoolctl limits only the pools loaded when the limit is entered (torch's
        # OpenMP), and torch's own thread count can only be set once torch is imported.
        if self.peers:
            peer_status()
        self._fastrnn_old = threads.get_num_threads()
        threads.set_num_threads(self.n)
        kernel_blas = set(threads.blas_thread_counts())
        ctrl = ThreadpoolController()
        others = [lc.filepath for lc in ctrl.lib_controllers if lc.filepath not in kernel_blas]
        # SciPy's BLAS: 1 thread at any n (n = 1: the one thread; n > 1: set_num_threads has limited it already)
        self._limits = [ctrl.select(filepath=sorted(kernel_blas)).limit(limits=1),
                        ctrl.select(filepath=others).limit(limits=self.n)]
        torch = _modules.get("torch", (None,))[0] if self.peers else None
        if torch is not None:
            self._torch_old = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch = _modules.get("torch", (None,))[0] if self.peers else None
        if torch is not None and self._torch_old is not None:
            torch.set_num_threads(self._torch_old)
        for limit in reversed(self._limits):
            limit.restore_original_limits()
        threads.set_num_threads(self._fastrnn_old)
        return False


# ---------------------------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------------------------

LAYERS = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}


@dataclass
class Runner:
    """call(): one timed call; values(result of call) -> {"y": ..., and in training "dx", "dW", "dR", "db"}
    as NumPy arrays in fastrnn's (Keras) layout."""
    name: str
    call: Callable
    values: Callable


def fastrnn_runner(backend, cell, mode, x, weights):
    """Inference through a frozen layer holding the weights (what a service calls: x is checked every call, the
    weights when set; ops.rnn_forward checks W and R every call, 3-8% of a call at batch 1 with 128-1024 units; and
    W and R packed once, as ONNX Runtime's session prepacks them, where the kernels would pack them every call:
    4-22% of a call at batch 1); training through ops.rnn_forward / rnn_backward (a layer's training call checks
    its weights again too, an optimizer step following it)."""
    U = weights[1].shape[0]
    if mode == "inference":
        layer = LAYERS[cell](U, return_sequences=True, backend=backend, dtype=x.dtype)
        layer.set_weights(weights)
        layer.freeze()

        def call():
            return layer(x)

        def values(y):
            return {"y": y}
    else:
        dy = np.ones(x.shape[:2] + (U,), x.dtype)

        def call():
            out = ops.rnn_forward(cell, x, weights, backend=backend, training=True)
            return out, ops.rnn_backward(out, dy)

        def values(res):
            out, g = res
            dW, dR, db = g.d_weights
            return {"y": out.outputs, "dx": g.dx, "dW": dW, "dR": dR, "db": db}
    return Runner(f"fastrnn-{backend}", call, values)


def torch_module(cell, weights, dtype=np.float32):
    """torch.nn.RNN/LSTM/GRU (batch_first) holding `weights` (Keras layout)."""
    torch = peer_module("torch")
    D, GU = weights[0].shape
    U = weights[1].shape[0]
    cls = getattr(torch.nn, TORCH_CLASS[cell])
    mod = cls(D, U, num_layers=1, bias=True, batch_first=True)
    mod = mod.to(torch.float32 if np.dtype(dtype) == np.float32 else torch.float64)
    with torch.no_grad():
        for name, arr in to_torch_layout(cell, weights).items():
            getattr(mod, name).copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype)))
    return mod


def torch_runner(cell, mode, x, weights):
    torch = peer_module("torch")
    U = weights[1].shape[0]
    mod = torch_module(cell, weights, x.dtype)
    params = dict(mod.named_parameters())
    if mode == "inference":
        mod.eval()
        xt = torch.from_numpy(x)

        def call():
            with torch.no_grad():
                return mod(xt)[0]

        def values(y):
            return {"y": y.numpy()}
    else:
        mod.train()
        xt = torch.from_numpy(x.copy()).requires_grad_(True)

        def call():
            xt.grad = None
            for p in params.values():
                p.grad = None
            y = mod(xt)[0]
            y.sum().backward()
            return y

        def values(y):
            grads = {name: p.grad.numpy() for name, p in params.items()}
            dW, dR, db = from_torch_grads(cell, grads, U)
            return {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dW": dW, "dR": dR, "db": db}
    return Runner("torch", call, values)


def ort_session(cell, weights, threads, dtype=np.float32):
    ort = peer_module("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    model = onnx_model(cell, weights, dtype)
    return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def ort_runner(cell, mode, x, weights, threads):
    if mode != "inference":
        raise ValueError("onnxruntime runs inference only")
    sess = ort_session(cell, weights, threads, x.dtype)
    feeds = {"x": x}

    def call():
        return sess.run(["y"], feeds)[0]

    def values(y):
        return {"y": y}
    return Runner("ort", call, values)


def make_runners(cell, mode, x, weights, threads=1, backends=FASTRNN_BACKENDS, peers=None):
    """[Runner] for every usable fastrnn backend and peer (ort in inference only), fastrnn first."""
    avail = ops.available_backends()
    runners = [fastrnn_runner(b, cell, mode, x, weights) for b in backends if avail.get(b) is None]
    peers = available_peers() if peers is None else peers
    if "torch" in peers:
        runners.append(torch_runner(cell, mode, x, weights))
    if "onnxruntime" in peers and mode == "inference":
        runners.append(ort_runner(cell, mode, x, weights, threads))
    return runners


class Disagreement(AssertionError):
    pass


def max_differences(ref, other):
    """{key: max |difference|, scaled by max(1, max |ref|) for gradients} over the keys both have."""
    out = {}
    for key, a in ref.items():
        if key not in other:
            continue
        b = np.asarray(other[key])
        if a.shape != b.shape:
            raise Disagreement(f"{key}: shape {b.shape} != {a.shape}")
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        if key != "y":  # gradients are sums over batch*timesteps terms: compare relative to their scale
            diff /= max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        out[key] = diff
    return out


def check_agreement(runners, atol=1e-4):
    """Run every runner once (this is also the warm-up) and compare each with the first: max |y difference| and
    max scaled gradient difference < atol. Returns the largest difference seen; raises Disagreement otherwise."""
    results = [(r, r.values(r.call())) for r in runners]
    ref_runner, ref = results[0]
    worst = 0.0
    for r, vals in results[1:]:
        for key, d in max_differences(ref, vals).items():
            if not d < atol:  # also catches NaN
                raise Disagreement(f"{r.name} differs from {ref_runner.name} in {key}: max difference {d:.3g} "
                                   f">= {atol:g}")
            worst = max(worst, d)
    return worst
