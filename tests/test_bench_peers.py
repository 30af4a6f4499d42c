"""The peer benchmark's harness (fastrnn/peers.py, `fastrnn bench --peers`): layout conversions, that the runners
compute the same thing as fastrnn (and that the check notices when they do not), and that the command runs.
Fast and timing-free in what it asserts; the parts that need torch / onnxruntime skip without them."""
import numpy as np
import pytest

import fastrnn
from fastrnn import benchmark, cli, ops, peers

CELLS = ("simple_rnn", "lstm", "gru")
HAVE = set(peers.available_peers())
needs_torch = pytest.mark.skipif("torch" not in HAVE, reason="torch is not installed")
needs_ort = pytest.mark.skipif("onnxruntime" not in HAVE, reason="onnxruntime / onnx is not installed")
needs_peers = pytest.mark.skipif(not HAVE, reason="neither torch nor onnxruntime is installed")


@pytest.mark.parametrize("cell", CELLS)
def test_torch_layout_round_trip(cell):
    """Converting Keras weights to torch's layout and back (as the gradients are) is the identity."""
    x, weights = peers.make_problem(cell, 2, 3, 5)
    t = peers.to_torch_layout(cell, weights)
    G, U = ops.GATES[cell], 5
    assert t["weight_ih_l0"].shape == (G * U, 5) and t["weight_hh_l0"].shape == (G * U, U)
    back = peers.from_torch_grads(cell, t, U)
    np.testing.assert_array_equal(back[0], weights[0])
    np.testing.assert_array_equal(back[1], weights[1])
    if cell == "gru":
        np.testing.assert_array_equal(back[2], weights[2])
    else:
        np.testing.assert_array_equal(back[2], weights[2])
        assert not t["bias_hh_l0"].any()


def test_onnx_lstm_gate_order():
    """ONNX LSTM gates are i, o, f, c; fastrnn's (Keras) i, f, c, o."""
    U = 3
    W = np.concatenate([np.full((4, U), k, np.float32) for k in range(4)], axis=1)  # block k filled with k
    Wo, Ro, Bo = peers.to_onnx_layout("lstm", [W, W[:U], np.zeros(4 * U, np.float32)])
    assert Wo.shape == (1, 4 * U, 4) and Ro.shape == (1, 4 * U, U) and Bo.shape == (1, 8 * U)
    assert [int(Wo[0, g * U, 0]) for g in range(4)] == [0, 3, 1, 2]


@needs_peers
@pytest.mark.parametrize("mode", peers.MODES)
@pytest.mark.parametrize("cell", CELLS)
def test_runners_agree(cell, mode):
    x, weights = peers.make_problem(cell, 3, 6, 8)
    runners = peers.make_runners(cell, mode, x, weights)
    names = [r.name for r in runners]
    assert names[0].startswith("fastrnn-")
    assert ("torch" in names) == ("torch" in HAVE)
    assert ("ort" in names) == ("onnxruntime" in HAVE and mode == "inference")
    assert peers.check_agreement(runners) < 1e-5


@needs_ort
def test_wrong_conversion_is_caught(monkeypatch):
    """The agreement check has teeth: ONNX gates in Keras order (no i,o,f,c reordering) must fail it."""
    monkeypatch.setitem(peers.ONNX_ORDER, "lstm", [0, 1, 2, 3])
    x, weights = peers.make_problem("lstm", 2, 4, 8)
    with pytest.raises(peers.Disagreement, match="ort differs"):
        peers.check_agreement(peers.make_runners("lstm", "inference", x, weights, peers=["onnxruntime"]))


@needs_torch
def test_threads_sets_and_restores_torch():
    import torch
    before = torch.get_num_threads()
    with peers.Threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_peer_point_row():
    """One point end to end (whatever peers are installed): times, the best backend, ratio and sgemm fields."""
    row = benchmark.peer_point("gru", "inference", 8, 64, 3, threads=1, min_rounds=2, budget_s=0.0,
                               peak_gflops=50.0)
    assert row["fastrnn_backend"] in ("numba", "cython")
    assert row["fastrnn"] == min(t for n, t in row["times"].items() if n.startswith("fastrnn-"))
    assert row["sgemm_fraction"] > 0 and row["gflops"] > 0
    if HAVE:
        peer_time = min(row["times"][n] for n in ("torch", "ort") if n in row["times"])
        assert row["ratio"] == pytest.approx(row["fastrnn"] / peer_time)
        assert row["ok"] == (row["ratio"] <= benchmark.TARGET_INFERENCE_LARGE)
        # the sgemm bound: all matmul FLOPs (projection + steps: 2 * B*T*(D+U)*3U) at 50 GFLOP/s over the peer
        assert row["bound"] == pytest.approx(2 * 64 * 3 * (8 + 8) * 24 / 50e9 / peer_time)
    else:
        assert row["ratio"] is None and row["ok"] is None
    assert "maxdiff" in benchmark.PEER_HEADER and benchmark.format_peer_row(row).startswith("gru")


def test_targets_and_scaling_logic():
    assert benchmark.inference_target(1) == benchmark.inference_target(16) == 0.8
    assert benchmark.inference_target(64) == 1.0
    assert benchmark.peer_timesteps(benchmark.PEERS_FULL_GRID, 512, 64) == 50
    assert benchmark.peer_timesteps(benchmark.PEERS_FULL_GRID, 256, 64) == 100
    assert benchmark.peer_timesteps(benchmark.PEERS_FULL_GRID, 1024, 16) == 100
    assert benchmark.matmul_flops("lstm", "inference", 2, 3, 4) == 2 * 2 * 3 * 8 * 16
    assert benchmark.matmul_flops("lstm", "training", 2, 3, 4) == 3 * 2 * 2 * 3 * 8 * 16

    def point(threads, batch, t):
        return dict(cell="lstm", mode="inference", units=128, batch=batch, timesteps=10, threads=threads,
                    fastrnn=t, times={"torch": 2 * t})
    pts = [point(1, 1, 1.0), point(2, 1, 0.5), point(1, 16, 1.0), point(2, 16, 0.5), point(1, 64, 1.0),
           point(2, 64, 0.7)]
    rows = benchmark.thread_scaling(pts)
    assert [(r["batch"], r["ok"]) for r in rows] == [(16, True), (64, False)]
    assert rows[0]["speedup"]["torch"] == pytest.approx(2.0)
    assert [r["method"] for r in rows] == ["tables", "tables"]
    # measured side by side: fastrnn's speedup is the measurement's, the tables' ratio is kept beside it
    seen = []

    def measure(p_lo, p_hi):
        seen.append((p_lo["threads"], p_hi["threads"], p_hi["batch"]))
        return {1: 1.0, 2: 0.5 if p_hi["batch"] == 64 else 0.6, "load": 0.0}
    rows = benchmark.thread_scaling(pts, measure=measure)
    assert seen == [(1, 2, 16), (1, 2, 64)]
    assert [(r["batch"], r["ok"], r["method"]) for r in rows] == [(16, False, "side by side"),
                                                                  (64, True, "side by side")]
    assert rows[1]["speedup"]["fastrnn"] == pytest.approx(2.0) and rows[1]["tables"] == pytest.approx(1 / 0.7)
    assert rows[0]["speedup"]["torch"] == pytest.approx(2.0)


def test_speedup_side_by_side_times_both_thread_counts():
    before = fastrnn.get_num_threads()
    backend = "cython" if ops.available_backends()["cython"] is None else "numba"
    m = benchmark.speedup_side_by_side("gru", "training", 8, 16, 4, backend, min_rounds=2, budget_s=0.0,
                                       prewarm_s=0.01)
    assert m[1] > 0 and m[2] > 0 and set(m) == {1, 2, "load"}
    assert fastrnn.get_num_threads() == before      # each count's settings undone


@needs_peers
def test_latency_point():
    row = benchmark.latency_point("lstm", 1, units=8, min_rounds=2, budget_s=0.0, sample_s=0.0005)
    assert {"fastrnn layer", "fastrnn cell", "ops.rnn_forward", "kernel.forward"} <= set(row["us"])
    assert all(v > 0 for v in row["us"].values())


def test_cli_peers_smoke(capsys, tmp_path):
    plot = tmp_path / "peers.png"
    assert cli.main(["bench", "--peers", "--smoke", "--cells", "lstm", "--threads", "1,2", "--no-latency",
                     "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "== 1 thread(s)" in out and "== 2 thread(s)" in out and "targets:" in out
    # units 16, batch 2 and 64, T 5, at two thread counts (batch 64 also in the scaling section)
    assert out.count("lstm       inference    16     2    5") == 2
    assert out.count("lstm       inference    16    64    5") == (3 if HAVE else 2)
    if HAVE:
        assert "ratio" in out and "threads: speedup of 2 threads over 1" in out
    try:
        import matplotlib  # noqa: F401
        assert plot.stat().st_size > 10_000
    except ImportError:
        pass


def test_cli_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--peers", "--threads", "0"])
    assert cli.main(["bench", "--peers", "--smoke", "--cells", "lstmx"]) == 2
    assert cli.main(["bench", "--smoke", "--plot", "x.png"]) == 2
    assert cli.main(["bench", "--peers", "--smoke", "--dtype", "float64"]) == 2


def test_bound_adds_the_read_of_r_where_it_takes_longer_than_the_step():
    """bound_seconds: all matmuls at the peak, plus, per step (training: two passes), the time to read R beyond
    the step's matmul time, R split over the threads, from L2 when a share fits in 3/4 of it, else from L3."""
    stream = dict(l2_bytes=1 << 20, l2_gbs=100.0, l3_gbs=50.0)
    flops = benchmark.matmul_flops("lstm", "inference", 1, 10, 512)
    assert benchmark.bound_seconds("lstm", "inference", 1, 10, 512, 1, 100.0) == pytest.approx(flops / 100e9)
    r = 4.0 * 4 * 512 * 512                                   # 4 MB: from L3
    step = 2.0 * 4 * 512 * 512 / 100e9
    want = flops / 100e9 + 10 * (r / 50e9 - step)
    assert benchmark.bound_seconds("lstm", "inference", 1, 10, 512, 1, 100.0, stream) == pytest.approx(want)
    train = benchmark.matmul_flops("lstm", "training", 1, 10, 512) / 100e9 + 2 * 10 * (r / 50e9 - step)
    assert benchmark.bound_seconds("lstm", "training", 1, 10, 512, 1, 100.0, stream) == pytest.approx(train)
    # 128 units: R (256 KB) from L2; on 2 threads each reads half, at twice the peak
    r, step = 4.0 * 4 * 128 * 128, 2.0 * 4 * 128 * 128 / 200e9
    want = benchmark.matmul_flops("lstm", "inference", 1, 10, 128) / 200e9 + 10 * (r / 2 / 100e9 - step)
    assert benchmark.bound_seconds("lstm", "inference", 1, 10, 128, 2, 200.0, stream) == pytest.approx(want)
    # batch 64: the step's matmuls take longer than reading R: the FMA bound alone
    flops = benchmark.matmul_flops("gru", "inference", 64, 10, 256)
    assert benchmark.bound_seconds("gru", "inference", 64, 10, 256, 1, 100.0, stream) == pytest.approx(flops / 100e9)
    # a share with its own measured rate (share_gbs) is read at that rate, other shares beyond the L2 at the L3 rate
    measured = dict(stream, share_gbs={benchmark.r_share_bytes("lstm", 512, 1): 25.0})
    flops = benchmark.matmul_flops("lstm", "inference", 1, 10, 512)
    r, step = 4.0 * 4 * 512 * 512, 2.0 * 4 * 512 * 512
    want = flops / 100e9 + 10 * (r / 25e9 - step / 100e9)
    assert benchmark.bound_seconds("lstm", "inference", 1, 10, 512, 1, 100.0, measured) == pytest.approx(want)
    want = flops / 200e9 + 10 * (r / 2 / 50e9 - step / 200e9)
    assert benchmark.bound_seconds("lstm", "inference", 1, 10, 512, 2, 200.0, measured) == pytest.approx(want)


def test_stream_rates_are_measured_per_core():
    l2 = benchmark.l2_cache_bytes()
    shares = [] if l2 is None else [l2 // 4, 3 * l2]       # the first fits in the L2: no rate of its own
    rates = benchmark.stream_rates(1, repeats=1, shares=shares)
    if l2 is None:
        assert rates is None
    else:
        assert rates["l2_bytes"] == l2 and rates["l2_gbs"] > 0 and rates["l3_gbs"] > 0
        assert list(rates["share_gbs"]) == [3 * l2] and rates["share_gbs"][3 * l2] > 0


def test_fma_peak_is_measured_per_core():
    """The bound of `fastrnn bench --peers` uses the FMA peak (kernels/cpu.pyx): a positive rate per core, summed
    over the threads (no timing is asserted: the machine is shared)."""
    one = benchmark.peak_fma_gflops(1, seconds=0.02)
    two = benchmark.peak_fma_gflops(2, seconds=0.02)
    assert one > 0 and two > 0
    from fastrnn.kernels import cpu
    assert cpu.fma_gflops(0.0) > 0   # at least one round, however short the budget
