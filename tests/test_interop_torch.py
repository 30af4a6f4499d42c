"""fastrnn.torch against torch.nn: RNN (tanh, relu), LSTM and GRU with the same weights and inputs.

Every comparison loads a torch.nn module's random weights into the fastrnn module, runs both on the same inputs,
then back-propagates the same scalar loss L = sum <P_k, out_k> (fixed random projections of the output and every
final state) and compares outputs, final states and the gradients of the input, the initial states and every
parameter. Errors are max|a - b| / max|b| per tensor.
"""
import copy
import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as frt  # noqa: E402  (after the importorskip)
from fastrnn import ops  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
COMPILED = [b for b in ops.COMPILED_BACKENDS if ops.available_backends()[b] is None]

# kind -> (torch.nn class, fastrnn.torch class, extra constructor kwargs)
KINDS = {
    "rnn_tanh": (torch.nn.RNN, frt.RNN, {}),
    "rnn_relu": (torch.nn.RNN, frt.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, frt.LSTM, {}),
    "gru": (torch.nn.GRU, frt.GRU, {}),
}

T, B, I, H = 5, 3, 4, 6


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch.nn on these tiny problems: one intra-op thread (OpenMP threads on a busy machine cost up to a second
    a call); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


def assert_close(got, want, what, tol):
    assert got is not None and want is not None, f"{what}: missing ({got is None}, {want is None})"
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = rel_err(got, want)
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e}"


def make_pair(kind, dtype, seed=0, scale=0.5, backend="auto", **kw):
    """(torch.nn module with random N(0, scale^2) weights, fastrnn.torch module with the same state_dict)."""
    tcls, fcls, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = tcls(I, H, dtype=dtype, **extra, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, dtype=dtype) * scale)
    ours = fcls(I, H, dtype=dtype, **extra, **kw, backend=backend)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(module, x, hx, projections):
    """Forward and backward of L = sum <P_k, out_k>; returns (outputs, grads of x and hx, param grads by name)."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    leaves = None if hx is None else [h.clone().requires_grad_() for h in hx]
    hx_arg = None if leaves is None else (tuple(leaves) if len(leaves) == 2 else leaves[0])
    y, states = module(x, hx_arg)
    states = list(states) if isinstance(states, tuple) else [states]
    outs = [y] + states
    loss = sum((o * p).sum() for o, p in zip(outs, projections))
    loss.backward()
    grads = [x.grad] + ([] if leaves is None else [h.grad for h in leaves])
    return outs, grads, {n: p.grad for n, p in module.named_parameters()}


def compare(ref, ours, x, hx, dtype, what=""):
    """Run both modules on x / hx and assert outputs, states and every gradient agree."""
    with torch.no_grad():
        shapes = [o.shape for o in _flat(ref(x, _hx_arg(hx)))]
    g = torch.Generator().manual_seed(1)
    projections = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    outs_r, grads_r, pgrads_r = run(ref, x, hx, projections)
    outs_o, grads_o, pgrads_o = run(ours, x, hx, projections)
    tol = TOL[dtype]
    for name, a, b in zip(["output", "h_n", "c_n"], outs_o, outs_r):
        assert_close(a, b, f"{what} {name}", tol)
    for name, a, b in zip(["d input", "d h_0", "d c_0"], grads_o, grads_r):
        assert_close(a, b, f"{what} {name}", tol)
    assert list(pgrads_o) == list(pgrads_r)
    for name in pgrads_r:
        assert_close(pgrads_o[name], pgrads_r[name], f"{what} d {name}", tol)


def _hx_arg(hx):
    return None if hx is None else (tuple(hx) if len(hx) == 2 else hx[0])


def _flat(out):
    y, states = out
    return [y] + (list(states) if isinstance(states, tuple) else [states])


def random_inputs(kind, dtype, num_layers, bidirectional, batch_first, with_h0, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=dtype)
    hx = None
    if with_h0:
        n = 2 if kind == "lstm" else 1
        LD = num_layers * (2 if bidirectional else 1)
        hx = [torch.randn(LD, B, H, generator=g, dtype=dtype) * 0.5 for _ in range(n)]
    return x, hx


# ---------------------------------------------------------------------------------------------------------------
# Outputs and gradients equal torch.nn's
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)],
                         ids=["1", "1bi", "2", "2bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch(kind, dtype, num_layers, bidirectional, batch_first, bias, with_h0):
    ref, ours = make_pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=batch_first, bias=bias)
    x, hx = random_inputs(kind, dtype, num_layers, bidirectional, batch_first, with_h0)
    compare(ref, ours, x, hx, dtype, kind)


@pytest.mark.parametrize("backend", COMPILED + ["numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_backends_match_torch(kind, dtype, backend):
    ref, ours = make_pair(kind, dtype, num_layers=2, bidirectional=True, backend=backend)
    x, hx = random_inputs(kind, dtype, 2, True, False, True)
    compare(ref, ours, x, hx, dtype, f"{kind} {backend}")
    assert ours.backend_used == backend


def test_both_compiled_backends_present():
    """The compiled backends are what this suite is for: say so when one is missing instead of passing quietly."""
    assert COMPILED, f"no compiled backend available: {ops.available_backends()}"


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input(kind, dtype, with_h0):
    ref, ours = make_pair(kind, dtype, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, I, generator=g, dtype=dtype)
    hx = [torch.randn(4, H, generator=g, dtype=dtype) for _ in range(2 if kind == "lstm" else 1)] if with_h0 else None
    compare(ref, ours, x, hx, dtype, f"{kind} unbatched")
    y, _ = ours(x)
    assert y.shape == (T, 2 * H)


def test_long_sequence_float32():
    """Errors stay at float32 rounding over 200 steps, 2 bidirectional layers and a batch of 16."""
    ref, ours = make_pair("lstm", torch.float32, scale=0.3, num_layers=2, bidirectional=True)
    x = torch.randn(200, 16, I, generator=torch.Generator().manual_seed(4))
    compare(ref, ours, x, None, torch.float32, "lstm T=200")


# ---------------------------------------------------------------------------------------------------------------
# PackedSequence
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_packed_sequence(kind, dtype, bidirectional, enforce_sorted):
    ref, ours = make_pair(kind, dtype, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([5, 4, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4, 4])
    Bp = len(lengths)
    g = torch.Generator().manual_seed(5)
    padded = torch.randn(T, Bp, I, generator=g, dtype=dtype)
    LD = 2 * (2 if bidirectional else 1)
    hx = [torch.randn(LD, Bp, H, generator=g, dtype=dtype) for _ in range(2 if kind == "lstm" else 1)]
    results = []
    for module in (ref, ours):
        module.zero_grad()
        x = padded.clone().requires_grad_()
        leaves = [h.clone().requires_grad_() for h in hx]
        y, states = module(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), _hx_arg(leaves))
        states = list(states) if isinstance(states, tuple) else [states]
        gen = torch.Generator().manual_seed(6)
        loss = (y.data * torch.randn(y.data.shape, generator=gen, dtype=dtype)).sum()
        loss = loss + sum((s * torch.randn(s.shape, generator=gen, dtype=dtype)).sum() for s in states)
        loss.backward()
        results.append((y, states, [x.grad] + [h.grad for h in leaves],
                        {n: p.grad for n, p in module.named_parameters()}))
    (y_r, s_r, g_r, p_r), (y_o, s_o, g_o, p_o) = results
    assert isinstance(y_o, PackedSequence)
    assert torch.equal(y_o.batch_sizes, y_r.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(y_o, name), getattr(y_r, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    tol = TOL[dtype]
    assert_close(y_o.data, y_r.data, "packed output", tol)
    for k, (a, b) in enumerate(zip(s_o, s_r)):
        assert_close(a, b, f"final state {k}", tol)
    for name, a, b in zip(["d input", "d h_0", "d c_0"], g_o, g_r):
        assert_close(a, b, name, tol)
    for name in p_r:
        assert_close(p_o[name], p_r[name], f"d {name}", tol)


# ---------------------------------------------------------------------------------------------------------------
# Dropout between layers
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_dropout_eval_mode_matches_torch(kind):
    ref, ours = make_pair(kind, torch.float64, num_layers=3, dropout=0.5, bidirectional=True)
    ref.eval()
    ours.eval()
    x, hx = random_inputs(kind, torch.float64, 3, True, False, True)
    compare(ref, ours, x, hx, torch.float64, f"{kind} dropout eval")


def test_dropout_train_mode_drops_between_layers_only():
    ref, ours = make_pair("lstm", torch.float64, num_layers=2, dropout=0.5)
    x = torch.randn(T, 8, I, dtype=torch.float64)
    ours.eval()
    y_eval, (h_eval, c_eval) = ours(x)
    ours.train()
    y_train, (h_train, c_train) = ours(x)
    assert not torch.allclose(y_train, y_eval)                      # layer 2 saw a dropped-out layer 1
    torch.testing.assert_close(h_train[0], h_eval[0], rtol=0, atol=0)  # layer 1 itself is untouched
    torch.testing.assert_close(c_train[0], c_eval[0], rtol=0, atol=0)
    y_train.sum().backward()                                          # and training runs through the mask
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_train_mode_equals_torch_for_one_sequence(kind):
    """With one sequence the (T, 1, F) and (1, T, F) layer outputs have one memory order, so torch's dropout masks
    and ours are the same draws from the same seed: outputs and gradients agree exactly in training mode."""
    ref, ours = make_pair(kind, torch.float64, num_layers=3, dropout=0.4, bidirectional=True)
    x = torch.randn(T, 1, I, dtype=torch.float64)
    outs = []
    for module in (ref, ours):
        torch.manual_seed(11)
        y, states = module(x)
        states = list(states) if isinstance(states, tuple) else [states]
        (y.pow(2).sum() + sum(s.sum() for s in states)).backward()
        outs.append([y] + states + [p.grad for p in module.parameters()])
    for a, b in zip(outs[1], outs[0]):
        assert_close(a, b, f"{kind} dropout train", TOL[torch.float64])


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="dropout"):
        frt.GRU(I, H, dropout=0.3)


# ---------------------------------------------------------------------------------------------------------------
# Parameters, initialisation and state dicts
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_and_init_equal_torch(kind, bias):
    tcls, fcls, extra = KINDS[kind]
    torch.manual_seed(7)
    ref = tcls(I, H, num_layers=2, bidirectional=True, bias=bias, **extra)
    torch.manual_seed(7)
    ours = fcls(I, H, num_layers=2, bidirectional=True, bias=bias, **extra)
    sd_r, sd_o = ref.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_r)
    for name in sd_r:
        assert torch.equal(sd_o[name], sd_r[name]), name    # same shapes, same U(-1/sqrt(H), 1/sqrt(H)) draws
        assert sd_o[name].is_contiguous()
    assert [[p.shape for p in ps] for ps in ours.all_weights] == [[p.shape for p in ps] for ps in ref.all_weights]
    want = repr(ref) if kind != "rnn_relu" else repr(ref)[:-1] + ", nonlinearity='relu')"  # torch hides it
    assert repr(ours) == want


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_into_torch(kind):
    tcls, fcls, extra = KINDS[kind]
    ours = fcls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    ref = tcls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    ref.load_state_dict(ours.state_dict())          # strict: every name and shape matches
    x = torch.randn(T, B, I, dtype=torch.float64)
    for a, b in zip(_flat(ours(x)), _flat(ref(x))):
        assert_close(a, b, f"{kind} round trip", TOL[torch.float64])


def test_dtype_device_and_conversions():
    m = frt.LSTM(I, H, dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in m.parameters())
    m.float()
    x = torch.randn(T, B, I)
    y, _ = m(x)
    assert y.dtype == torch.float32
    m.double()
    assert m(x.double())[0].dtype == torch.float64
    with pytest.raises(ValueError, match="CPU only"):
        frt.GRU(I, H, device="cuda")
    with pytest.raises(ValueError, match="CPU only"):
        frt.GRU(I, H, device=torch.device("meta"))
    m_meta = frt.RNN(I, H).to("meta")
    with pytest.raises(ValueError, match="CPU only"):
        m_meta(torch.randn(T, B, I))
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        frt.LSTM(I, H, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        frt.LSTM(I, H).half()(torch.randn(T, B, I).half())


def test_default_dtype_follows_torch():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert frt.GRU(I, H).weight_ih_l0.dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_modules_are_torch_modules():
    m = frt.LSTM(I, H, num_layers=2)
    assert isinstance(m, torch.nn.Module)
    seq = torch.nn.Sequential()
    seq.add_module("rnn", m)
    m.flatten_parameters()  # no-op, for code written for torch.nn
    m2 = copy.deepcopy(m)
    m3 = pickle.loads(pickle.dumps(m))
    x = torch.randn(T, B, I)
    with torch.no_grad():
        for other in (m2, m3):
            torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    assert torch.nn.utils.parameters_to_vector(m.parameters()).numel() == sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Autograd details
# ---------------------------------------------------------------------------------------------------------------

def test_gradcheck_float64():
    m = frt.GRU(2, 3, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names, params = zip(*m.named_parameters())

    def f(x, h, *ps):
        y, hn = torch.func.functional_call(m, dict(zip(names, ps)), (x, h))
        return y, hn

    assert torch.autograd.gradcheck(f, (x, h, *params), eps=1e-6, atol=1e-7)


def test_only_the_gradients_asked_for():
    ref, ours = make_pair("lstm", torch.float64, num_layers=2)
    for module in (ref, ours):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_ih_l1.requires_grad_(False)
    x = torch.randn(T, B, I, dtype=torch.float64)   # no grad for x
    grads = []
    for module in (ref, ours):
        module(x)[0].sum().backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    assert grads[1]["weight_hh_l0"] is None and grads[1]["bias_ih_l1"] is None
    for name, g in grads[0].items():
        if g is not None:
            assert_close(grads[1][name], g, name, TOL[torch.float64])


def test_retain_graph_and_accumulation():
    ref, ours = make_pair("gru", torch.float64, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for module in (ref, ours):
        y, h = module(x)
        loss = y.sum() + h.pow(2).sum()
        loss.backward(retain_graph=True)
        loss.backward()                 # gradients accumulate into the same .grad tensors
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_close(a.grad, b.grad, n, TOL[torch.float64])
    # summed biases: bias_ih and bias_hh have their own .grad memory
    m = frt.LSTM(I, H)
    m(torch.randn(T, B, I))[0].sum().backward()
    assert m.bias_ih_l0.grad.data_ptr() != m.bias_hh_l0.grad.data_ptr()
    torch.testing.assert_close(m.bias_ih_l0.grad, m.bias_hh_l0.grad, rtol=0, atol=0)


def test_input_modified_in_place_before_backward_is_reported():
    m = frt.LSTM(I, H, batch_first=True)
    base = torch.randn(B, T, I, requires_grad=True)
    x = base * 1.0           # non-leaf: fastrnn's tape reads this memory
    y, _ = m(x)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("module", [torch.nn.LSTM, frt.LSTM])
def test_weight_modified_in_place_before_backward_is_reported_like_torch(module):
    m = module(1, H)                           # input_size 1: W = weight_ih.T needs no copy
    y, _ = m(torch.randn(T, B, 1))
    with torch.no_grad():
        m.weight_ih_l0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_no_grad_and_inference_mode():
    ref, ours = make_pair("lstm", torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    with torch.inference_mode():
        y_o, _ = ours(x)
        y_r, _ = ref(x)
    assert not y_o.requires_grad
    assert_close(y_o, y_r, "inference_mode", TOL[torch.float32])


# ---------------------------------------------------------------------------------------------------------------
# The inference cache of converted weights never goes stale
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["no_grad_inplace", "data_inplace", "numpy_view", "data_assign", "load_state_dict"])
def test_weight_cache_sees_every_change(how):
    ref, ours = make_pair("gru", torch.float64, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        ours(x)                                   # fills the cache
        assert len(ours._weight_cache) == 2
        for module in (ref, ours):
            p = module.weight_hh_l1
            if how == "no_grad_inplace":
                p.mul_(1.5)
            elif how == "data_inplace":           # does not bump p._version
                p.data.mul_(1.5)
            elif how == "numpy_view":             # neither does a write through numpy
                p.detach().numpy()[0, 0] += 0.25
            elif how == "data_assign":
                p.data = p.data * 1.5
        if how == "load_state_dict":
            other = frt.GRU(I, H, num_layers=2, dtype=torch.float64)
            ref.load_state_dict(other.state_dict())
            ours.load_state_dict(other.state_dict())
        for a, b in zip(_flat(ours(x)), _flat(ref(x))):
            assert_close(a, b, how, TOL[torch.float64])


def test_weight_cache_off_and_training_keep_nothing():
    m = frt.LSTM(I, H, cache_weights=False)
    with torch.no_grad():
        m(torch.randn(T, B, I))
    assert m._weight_cache == {}
    m = frt.LSTM(I, H)
    with torch.no_grad():
        m(torch.randn(T, B, I))
    assert len(m._weight_cache) == 1
    m(torch.randn(T, B, I))[0].sum().backward()   # training converts every call and drops the cache
    assert m._weight_cache == {}


def test_threads_share_one_module():
    ref, ours = make_pair("lstm", torch.float32, num_layers=2, bidirectional=True)
    xs = [torch.randn(T, B, I, generator=torch.Generator().manual_seed(k)) for k in range(8)]
    with torch.no_grad():
        want = [ref(x)[0] for x in xs]
    errors = []

    def work(k):
        with torch.no_grad():
            for _ in range(5):
                got = ours(xs[k])[0]
                if rel_err(got, want[k]) > TOL[torch.float32]:
                    errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------------------------

def test_constructor_arguments():
    with pytest.raises(ValueError, match="nonlinearity"):
        frt.RNN(I, H, nonlinearity="sigmoid")
    assert frt.RNN(I, H, 2, "relu").nonlinearity == "relu"      # torch's positional order
    with pytest.raises(ValueError, match="dropout"):
        frt.LSTM(I, H, num_layers=2, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        frt.LSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size"):
        frt.GRU(I, 0)
    with pytest.raises(TypeError, match="input_size"):
        frt.GRU(2.5, H)
    with pytest.raises(TypeError, match="batch_first"):
        frt.GRU(I, H, batch_first=1)
    with pytest.raises(ValueError, match="backend"):
        frt.GRU(I, H, backend="cuda")
    with pytest.raises(TypeError, match="check_finite"):
        frt.GRU(I, H, check_finite="yes")


def test_forward_arguments():
    m = frt.LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match="input_size=4"):
        m(torch.randn(T, B, I + 1))
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(1, T, B, I))
    with pytest.raises(TypeError, match="dtype"):
        m(x.double())
    with pytest.raises(TypeError, match="torch.Tensor"):
        m(x.numpy())
    with pytest.raises(TypeError, match=r"\(h_0, c_0\)"):
        m(x, torch.zeros(2, B, H))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(num_layers\*num_directions=2, batch=3"):
        m(x, (torch.zeros(1, B, H), torch.zeros(2, B, H)))
    with pytest.raises(ValueError, match="unbatched"):
        m(torch.randn(T, I), (torch.zeros(2, 1, H), torch.zeros(2, 1, H)))
    g = frt.GRU(I, H)
    with pytest.raises(ValueError, match="hx must have shape"):
        g(x, torch.zeros(1, B + 1, H))


def test_non_finite_values():
    m = frt.GRU(I, H)
    x = torch.randn(T, B, I)
    x[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="input must be finite"):
        m(x)
    with pytest.raises(ValueError, match="hx must be finite"):
        m(torch.randn(T, B, I), torch.full((1, B, H), float("inf")))
    with torch.no_grad():
        m.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh_l0 must be finite"):
        m(torch.randn(T, B, I))
    # check_finite=False: NaN propagates as in torch.nn
    ref = torch.nn.GRU(I, H)
    ours = frt.GRU(I, H, check_finite=False)
    ours.load_state_dict(ref.state_dict())
    y_o, _ = ours(x)
    y_r, _ = ref(x)
    torch.testing.assert_close(y_o, y_r, equal_nan=True)


def test_unavailable_backend_is_reported(monkeypatch):
    kernel = ops.KERNELS[("gru", "cython", np.dtype(np.float32))]
    monkeypatch.setattr(kernel, "available", lambda: False)
    monkeypatch.setattr(kernel, "unavailable_reason", lambda: "not built")
    m = frt.GRU(I, H, backend="cython")
    with pytest.raises(RuntimeError, match="not available"):
        m(torch.randn(T, B, I))


def test_alias_module_is_the_adapter():
    import fastrnn.interop.torch as adapter
    assert frt.LSTM is adapter.LSTM and frt.GRU is adapter.GRU and frt.RNN is adapter.RNN
    assert adapter.torch is torch  # inside fastrnn, `torch` is the real one


def test_frozen_weights_use_the_cache():
    """Fine-tuning around a frozen RNN: gradients flow to the input while the weight conversion is cached."""
    ref, ours = make_pair("lstm", torch.float64, num_layers=2, bidirectional=True)
    ref.requires_grad_(False)
    ours.requires_grad_(False)
    x0 = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for module in (ref, ours, ours):             # the second call of ours runs on cached weights
        x = x0.clone().requires_grad_()
        y, (h, c) = module(x)
        (y.pow(2).sum() + h.sum() + c.sum()).backward()
        grads.append((y, x.grad))
    assert len(ours._weight_cache) == 4
    for y, g in grads[1:]:
        assert_close(y, grads[0][0], "output", TOL[torch.float64])
        assert_close(g, grads[0][1], "d input", TOL[torch.float64])


def test_frozen_first_layer_runs_without_a_tape(monkeypatch):
    """Only layer-directions that something needs a gradient from run as autograd Functions."""
    import fastrnn.interop.torch as adapter
    ref, ours = make_pair("gru", torch.float64, num_layers=2, bidirectional=True)
    for module in (ref, ours):
        for name, p in module.named_parameters():
            p.requires_grad_("_l1" in name)
    calls = []
    apply = adapter._RNNFunction.apply
    monkeypatch.setattr(adapter._RNNFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    x = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for module in (ref, ours):
        y, h = module(x)
        (y.pow(2).sum() + h.sum()).backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.requires_grad})
    assert len(calls) == 2                      # layer 1, both directions
    for name, g in grads[0].items():
        assert_close(grads[1][name], g, name, TOL[torch.float64])
