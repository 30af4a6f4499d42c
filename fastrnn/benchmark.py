"""Side-by-side timing of the backends, used by `fastrnn bench` (bench/ holds the pytest-benchmark suite).

Backends run interleaved (round robin, one call each per round) on the same inputs, so machine noise hits all of
them alike; we report the median per backend and its speedup over the NumPy reference.
"""
import itertools
import statistics
import subprocess
import sys
import time

import numpy as np

from . import ops, peers

CELLS = ("simple_rnn", "lstm", "gru")
FULL_GRID = dict(units=(128, 256, 512), batch=(1, 16, 64), timesteps=(100,))
QUICK_GRID = dict(units=(128, 256), batch=(1, 16), timesteps=(50,))
SMOKE_GRID = dict(units=(16,), batch=(2,), timesteps=(5,))


def make_inputs(cell, batch, timesteps, units, features=None, dtype=np.float32, seed=0):
    """x and Keras-layout weights of a layer whose input width equals its units (a typical stacked layer)."""
    rng = np.random.default_rng(seed)
    G = ops.GATES[cell]
    D = units if features is None else features
    x = rng.standard_normal((batch, timesteps, D)).astype(dtype)
    W = (rng.standard_normal((D, G * units)) / np.sqrt(D)).astype(dtype)
    R = (rng.standard_normal((units, G * units)) / np.sqrt(units)).astype(dtype)
    b = np.zeros((2, 3 * units) if cell == "gru" else (G * units,), dtype)
    return x, [W, R, b]


def make_call(backend, cell, mode, x, weights):
    """A no-argument function running one forward (mode "inference") or forward + BPTT ("training")."""
    dy = np.ones(x.shape[:2] + (weights[1].shape[0],), x.dtype)

    def inference():
        return ops.rnn_forward(cell, x, weights, backend=backend)

    def training():
        out = ops.rnn_forward(cell, x, weights, backend=backend, training=True)
        return ops.rnn_backward(out, dy)

    return inference if mode == "inference" else training


def prewarm(call, seconds):
    """Run call untimed until `seconds` have passed (at least once): its threads awake, its memory faulted in."""
    end = time.perf_counter() + seconds
    call()
    while time.perf_counter() < end:
        call()


def time_side_by_side(calls, min_rounds=5, max_rounds=50, budget_s=2.0, warmup=True, pools=None, prewarm_s=0.0,
                      prewarm_below_s=1.0):
    """{name: median seconds}: round robin over `calls` until min_rounds and the time budget are used.

    warmup=False when every call has just run once already (e.g. to check that the calls agree).

    Several thread pools in one process (OpenBLAS, OpenMP, ONNX Runtime, each with its own threads; `pools` maps
    a call's name to its pool; a call not in it is a pool of its own): after a call, a pool's idle threads busy-wait
    for a while (onnxruntime's ~50 ms here, see PREWARM_S), competing with whichever pool runs next. With
    prewarm_s > 0, a call whose pool differs from the previous call's first runs untimed until prewarm_s has passed
    (at least once), so that it is timed with its own threads awake and the other pools' threads asleep, as when it
    runs alone. Calls that take prewarm_below_s or more skip this (the disturbance is then a few percent, and the
    run would take twice as long)."""
    if warmup:
        for call in calls.values():  # warm up: compile/load, allocate, fill caches
            call()
    samples = {name: [] for name in calls}
    pools = pools or {}
    last_pool = object()
    start = time.perf_counter()
    for rnd in range(max_rounds):
        for name, call in calls.items():
            pool = pools.get(name, name)
            if prewarm_s > 0 and pool != last_pool and (not samples[name] or samples[name][-1] < prewarm_below_s):
                prewarm(call, prewarm_s)
            last_pool = pool
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
        if rnd + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(s) for name, s in samples.items()}


def usable_backends(requested):
    avail = ops.available_backends()
    return [b for b in requested if avail.get(b) is None]


def run_grid(grid, cells=CELLS, modes=("inference", "training"), backends=("numpy", "numba", "cython"),
             dtype=np.float32, budget_s=1.0, out=print):
    """Time every point of the grid; returns a list of row dicts and prints a table as it goes."""
    backends = usable_backends(backends)
    header = f"{'cell':<10} {'mode':<9} {'units':>5} {'batch':>5} {'T':>4} " + " ".join(
        f"{b + ' ms':>11}" + ("" if b == "numpy" else f" {'x' + b[:2]:>6}") for b in backends)
    out(header)
    out("-" * len(header))
    rows = []
    for cell, mode, units, batch, T in itertools.product(cells, modes, grid["units"], grid["batch"],
                                                           grid["timesteps"]):
        x, weights = make_inputs(cell, batch, T, units, dtype=dtype)
        calls = {b: make_call(b, cell, mode, x, weights) for b in backends}
        med = time_side_by_side(calls, budget_s=budget_s)
        row = dict(cell=cell, mode=mode, units=units, batch=batch, timesteps=T,
                   **{f"{b}_ms": med[b] * 1e3 for b in backends})
        rows.append(row)
        cols = []
        for b in backends:
            cols.append(f"{med[b] * 1e3:>11.3f}")
            if b != "numpy" and "numpy" in med:
                cols.append(f"{med['numpy'] / med[b]:>6.1f}")
        out(f"{cell:<10} {mode:<9} {units:>5} {batch:>5} {T:>4} " + " ".join(cols))
    return rows


FIRST_CALL_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from fastrnn import ops
from fastrnn.benchmark import make_inputs
x, w = make_inputs({cell!r}, 1, 5, 16)
t1 = time.perf_counter()
out = ops.rnn_forward({cell!r}, x, w, backend={backend!r}, training=True)
ops.rnn_backward(out, np.ones_like(out.outputs))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_latency(backend, cell="lstm"):
    """Seconds for the first forward+backward call in a fresh interpreter (kernel import, compile or cache load)."""
    code = FIRST_CALL_SNIPPET.format(cell=cell, backend=backend)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import_s, first_s = map(float, res.stdout.split())
    return import_s, first_s


# ---------------------------------------------------------------------------------------------------------------
# Peers: fastrnn, torch and onnxruntime side by side (`fastrnn bench --peers`)
# ---------------------------------------------------------------------------------------------------------------
# T is `timesteps`, except `long_timesteps` at units >= 512 and batch >= 64 (keeps the default run near 15 min).
PEERS_FULL_GRID = dict(units=(128, 256, 512, 1024), batch=(1, 16, 64), timesteps=100, long_timesteps=50)
PEERS_QUICK_GRID = dict(units=(128, 512), batch=(1, 16, 64), timesteps=50, long_timesteps=50)
PEERS_SMOKE_GRID = dict(units=(16,), batch=(2, 64), timesteps=5, long_timesteps=5)
LATENCY_UNITS = 32
LATENCY_WARMUP_ROUNDS = 5  # untimed loops of every latency runner before timing (latency_point)

# The targets of the issue, checked on ratios measured side by side in one run at one thread count.
TARGET_INFERENCE_SMALL = 0.8   # fastrnn / min(torch, ort), batch <= 16
TARGET_INFERENCE_LARGE = 1.0   # same, batch 64
TARGET_TRAINING = 0.5          # fastrnn / torch, forward + BPTT
TARGET_LATENCY_US = 10.0       # one call at T=1, batch 1, units 32, layer or cell API
TARGET_SGEMM_FRACTION = 0.9    # fastrnn GFLOP/s / sgemm GFLOP/s of the same matmuls, batch 64 inference
TARGET_THREAD_SCALING = 1.8    # fastrnn time at 1 thread / at 2 threads, batch >= 16
SCALING_MIN_BATCH = 16
SGEMM_BATCH = 64


# With more than one thread, the runners' thread pools disturb each other (see time_side_by_side): fastrnn's two
# backends share SciPy's OpenBLAS; torch (OpenMP, MKL), ONNX Runtime and NumPy's OpenBLAS (sgemm) have their own.
# The prewarm must outlast the previous pool's spinning and fastrnn's reaction to it. Measured here: after a call,
# onnxruntime 1.32's 2-thread pool keeps the other core busy for ~50 ms (torch's ~10 ms); fastrnn's column split
# (batch 1-4), contended by it, ran its first calls 10-15x slower and backed off to one thread for 0.1 s
# (_column_split, "contention"). With 0.12 s the timed call fell in or just after that backoff (LSTM 256 units,
# batch 1: 1.9-2.2 ms instead of 1.1-1.3 alone); with 0.25 s it ran as alone (1.06 ms; split/one thread
# 0.57-0.70x at 256-512 units, as without the peers).
PREWARM_S = 0.25
LATENCY_POOLS = {name: "scipy-openblas" for name in ("fastrnn layer", "fastrnn cell", "ops.rnn_forward",
                                                       "kernel.forward")}


def peer_timesteps(grid, units, batch):
    return grid["long_timesteps"] if units >= 512 and batch >= 64 else grid["timesteps"]


def matmul_flops(cell, mode, batch, timesteps, units, features=None):
    """Matmul FLOPs of one call: input projection (B*T, D) x (D, G*U) and T steps (B, U) x (U, G*U); training
    (forward + BPTT) adds dx, dW and the per-step dh (and dR) matmuls: 3x the forward."""
    fwd = ops.forward_flops(cell, (batch, timesteps, units if features is None else features, units))
    return fwd if mode == "inference" else 3.0 * fwd


def inference_target(batch):
    return TARGET_INFERENCE_SMALL if batch <= 16 else TARGET_INFERENCE_LARGE


def sgemm_runner(cell, x, weights):
    """NumPy float32 matmuls of the same sizes as the inference call: the projection (B*T, D) x (D, G*U) once and
    the step (B, U) x (U, G*U) T times (no gate math, no dependency between steps): the BLAS bound.
    The returned call also records the time of each part in `parts`."""
    B, T, D = x.shape
    W, R = weights[0], weights[1]
    U, GU = R.shape
    x2 = x.reshape(B * T, D)
    proj = np.empty((B * T, GU), x.dtype)
    h = np.ascontiguousarray(x[:, 0, :U]) if D >= U else np.ones((B, U), x.dtype)
    a = np.empty((B, GU), x.dtype)
    parts = {"proj": [], "step": []}

    def call():
        t0 = time.perf_counter()
        np.matmul(x2, W, out=proj)
        t1 = time.perf_counter()
        for _ in range(T):
            np.matmul(h, R, out=a)
        t2 = time.perf_counter()
        parts["proj"].append(t1 - t0)
        parts["step"].append((t2 - t1) / T)
    return call, parts


def peak_sgemm_gflops(size=1024, repeats=5):
    """Best GFLOP/s of a large float32 NumPy matmul (size^3) at the current thread limits: the machine's practical
    matmul peak, for the sgemm bound of each point."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = min(_timed(lambda: np.matmul(a, a, out=out)) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def peak_fma_gflops(n_threads=1, seconds=0.3):
    """GFLOP/s of float32 vector multiply-adds on n_threads cores at once (fastrnn.kernels.cpu.fma_gflops, no
    memory traffic): the arithmetic peak, which no matmul exceeds (the bound of each point). None when the
    Cython modules are not built."""
    from concurrent.futures import ThreadPoolExecutor
    try:
        from .kernels import cpu
    except ImportError:
        return None
    with ThreadPoolExecutor(n_threads) as ex:
        return sum(ex.map(lambda _: cpu.fma_gflops(seconds), range(n_threads)))


def l2_cache_bytes():
    """Bytes of one core's L2 cache (Linux sysfs), or None where it cannot be read."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip().upper()
    except OSError:
        return None
    scale = {"K": 1024, "M": 1024 ** 2}.get(text[-1:], 1)
    try:
        return int(text.rstrip("KM")) * scale
    except ValueError:
        return None


def stream_rates(n_threads=1, repeats=20, shares=()):
    """How fast one core streams a packed matrix through the per-step product at batch 1 (fastrnn's packed GEMV,
    kernels/packed_gemm.h), with n_threads cores doing it at once: {"l2_bytes", "l2_gbs", "l3_gbs", "share_gbs"},
    the GB/s per core of a matrix of half the L2 (read from L2) and of four times the L2 (read from L3), and
    share_gbs {bytes: GB/s} for each of `shares` (bytes of R per core) too large for the L2, at its own size: the
    rate falls as a share outgrows what the L3 gives one core (this Zen 4, one core: 93 GB/s at 4 and 8 MB, 84 at
    12, 75-80 at 16). None when the L2 size is unknown or the Cython modules are not built. At batch 1 a step must
    read R whole; this is the floor the bound of each point adds (bound_seconds)."""
    from concurrent.futures import ThreadPoolExecutor
    l2 = l2_cache_bytes()
    try:
        from .kernels import cython_module
        ct = cython_module("cython_threaded")
    except ImportError:
        return None
    if not l2:
        return None

    def rate(nbytes):
        K = 256
        N = max(32, int(nbytes) // (K * 4))
        rng = np.random.default_rng(0)
        a = rng.standard_normal((1, K)).astype(np.float32)
        m = rng.standard_normal((K, N)).astype(np.float32)
        seconds = min(ct._matmul_check(a, m, repeats)[1] for _ in range(3))
        return K * N * 4 / seconds / 1e9

    def per_core(nbytes):
        with ThreadPoolExecutor(n_threads) as ex:
            return min(ex.map(lambda _: rate(nbytes), range(n_threads)))

    big = sorted({int(b) for b in shares if b > L2_SHARE * l2})
    return dict(l2_bytes=l2, l2_gbs=per_core(l2 / 2), l3_gbs=per_core(4 * l2),
                share_gbs={b: per_core(b) for b in big})


# A share of R up to this fraction of the L2 is read from L2 (the rest of the L2 holds the step's other data).
L2_SHARE = 0.75


def r_share_bytes(cell, units, threads):
    """Bytes of float32 R each thread reads per step at batch 1 (the column split: each its share of columns)."""
    return 4 * ops.GATES[cell] * units * units // threads


def bound_seconds(cell, mode, batch, timesteps, units, threads, peak_gflops, stream=None):
    """The time of a call with every matmul at peak_gflops (all threads together) and free gate math; with `stream`
    (stream_rates at this thread count) each step also reads R at least once (training: forward R, backward R.T):
    split over the threads, at the L2 rate where each share fits in L2_SHARE of an L2, else at the rate measured
    for that share (share_gbs), or the L3 rate. Steps whose matmuls take longer than that read are unchanged; at
    batch 1 the read is the longer."""
    seconds = matmul_flops(cell, mode, batch, timesteps, units) / (peak_gflops * 1e9)
    if stream:
        G = ops.GATES[cell]
        share = r_share_bytes(cell, units, threads)
        if share <= L2_SHARE * stream["l2_bytes"]:
            per_core = stream["l2_gbs"]
        else:
            per_core = stream.get("share_gbs", {}).get(share, stream["l3_gbs"])
        read = share / (per_core * 1e9)
        compute = 2.0 * batch * units * G * units / (peak_gflops * 1e9)
        seconds += (1 if mode == "inference" else 2) * timesteps * max(0.0, read - compute)
    return seconds


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fmt_ms(seconds):
    return f"{seconds * 1e3:10.3f}" if seconds is not None else f"{'-':>10}"


def peer_point(cell, mode, units, batch, timesteps, threads, min_rounds=7, budget_s=0.5, with_sgemm=None,
               peak_gflops=None, stream=None):
    """Verify that fastrnn's backends and the peers agree on one grid point, then time them round robin.

    peak_gflops (peak_fma_gflops at this thread count, else peak_sgemm_gflops): adds row["bound"], the ratio
    fastrnn would reach if all its matmuls ran at that rate and the gate math were free, and (stream: stream_rates)
    each step read R at the measured cache rate (bound_seconds)."""
    x, weights = peers.make_problem(cell, batch, timesteps, units)
    runners = peers.make_runners(cell, mode, x, weights, threads=threads)
    maxdiff = peers.check_agreement(runners)  # raises peers.Disagreement; also the warm-up call of every runner
    calls = {r.name: r.call for r in runners}
    with_sgemm = (mode == "inference" and batch >= SGEMM_BATCH) if with_sgemm is None else with_sgemm
    parts = None
    if with_sgemm:
        calls["sgemm"], parts = sgemm_runner(cell, x, weights)
        calls["sgemm"]()
    load = OtherLoad()
    # No `pools`: every runner is a pool of its own, so each is timed after its own prewarm, torch's and
    # onnxruntime's too. fastrnn's two backends share SciPy's OpenBLAS, but the Cython one runs batch 1-4 on both
    # cores (the column split; its kept threads sleep after ~200 us idle), which is slower while the other core
    # wakes from idle:
    # timed right after the Numba call (one thread at batch 1), LSTM 256/1 took 1.44-1.65 ms instead of 1.13,
    # LSTM 128/1 0.69 instead of 0.56, GRU 512/1 5.94 instead of 5.39 (2 threads, same run).
    med = time_side_by_side(calls, min_rounds=min_rounds, max_rounds=max(min_rounds, 50), budget_s=budget_s,
                            warmup=False, prewarm_s=PREWARM_S if threads > 1 else 0.0)
    other = load.cores()
    del runners, calls  # free the ORT session and torch module before the next point
    fr = {name[len("fastrnn-"):]: t for name, t in med.items() if name.startswith("fastrnn-")}
    best = min(fr, key=fr.get)
    row = dict(cell=cell, mode=mode, units=units, batch=batch, timesteps=timesteps, threads=threads,
               times=med, fastrnn=fr[best], fastrnn_backend=best, maxdiff=maxdiff, other_load=other)
    peer_times = {name: med[name] for name in (("torch", "ort") if mode == "inference" else ("torch",))
                  if name in med}
    row["peer"] = min(peer_times, key=peer_times.get) if peer_times else None
    row["ratio"] = row["fastrnn"] / peer_times[row["peer"]] if peer_times else None
    row["target"] = inference_target(batch) if mode == "inference" else TARGET_TRAINING
    row["ok"] = None if row["ratio"] is None else row["ratio"] <= row["target"]
    flops = matmul_flops(cell, mode, batch, timesteps, units)
    row["gflops"] = flops / row["fastrnn"] / 1e9
    if peak_gflops and row["ratio"] is not None:
        row["peak_gflops"] = peak_gflops
        row["bound"] = bound_seconds(cell, mode, batch, timesteps, units, threads, peak_gflops, stream) \
            / peer_times[row["peer"]]
    if parts is not None:
        row["sgemm_gflops"] = flops / med["sgemm"] / 1e9
        row["sgemm_fraction"] = med["sgemm"] / row["fastrnn"]
        G, U = ops.GATES[cell], units
        row["sgemm_step_gflops"] = 2.0 * batch * U * G * U / statistics.median(parts["step"]) / 1e9
        row["sgemm_proj_gflops"] = 2.0 * batch * timesteps * U * G * U / statistics.median(parts["proj"]) / 1e9
    return row


PEER_HEADER = (f"{'cell':<10} {'mode':<9} {'units':>5} {'batch':>5} {'T':>4} {'numba ms':>10} {'cython ms':>10} "
               f"{'fastrnn ms':>13} {'torch ms':>10} {'ort ms':>10} {'ratio':>11} {'bound':>5} {'target':>6} {'pass':>4} "
               f"{'GF/s':>6} {'%sgemm':>6} {'maxdiff':>8} {'load':>5}")


def format_peer_row(row):
    t = row["times"]
    best = f"{row['fastrnn'] * 1e3:9.3f} {row['fastrnn_backend'][:2]:>3}"
    ratio = f"{row['ratio']:5.2f} {row['peer'] if row['peer'] != 'torch' else 'tch':>5}" if row["ratio"] else "-"
    ok = "-" if row["ok"] is None else ("ok" if row["ok"] else "FAIL")
    frac = f"{row['sgemm_fraction'] * 100:6.0f}" if "sgemm_fraction" in row else f"{'':6}"
    bound = f"{row['bound']:5.2f}" if row.get("bound") is not None else f"{'-':>5}"
    return (f"{row['cell']:<10} {row['mode']:<9} {row['units']:>5} {row['batch']:>5} {row['timesteps']:>4} "
            f"{_fmt_ms(t.get('fastrnn-numba'))} {_fmt_ms(t.get('fastrnn-cython'))} {best:>13} "
            f"{_fmt_ms(t.get('torch'))} {_fmt_ms(t.get('ort'))} {ratio:>11} {bound} {'<=' + format(row['target'], 'g'):>6} "
            f"{ok:>4} {row['gflops']:6.1f} {frac} {row['maxdiff']:8.1e} "
            f"{'-' if row.get('other_load') is None else format(row['other_load'], '.1f'):>5}")


def latency_runners(cell, units=LATENCY_UNITS, threads=1):
    """One call at T=1, batch 1: fastrnn's layer, cell, ops.rnn_forward and kernel.forward (validation skipped) —
    the last three show where the layer's time goes — and the torch layer and ONNX Runtime session."""
    from . import layers
    x, weights = peers.make_problem(cell, 1, 1, units)
    layer = peers.LAYERS[cell](units, return_sequences=True)
    layer(x)
    layer.set_weights(weights)
    cellobj = {"simple_rnn": layers.RNNCell, "lstm": layers.LSTMCell, "gru": layers.GRUCell}[cell](units, units)
    cellobj.set_weights(weights)
    x_t = np.ascontiguousarray(x[:, 0])
    state = tuple(np.zeros((1, units), np.float32) for _ in range(ops.N_STATES[cell]))
    state = state if cell == "lstm" else state[0]
    p = ops.make_problem(cell, x, weights)
    kernel = ops.select_kernel(cell, "auto", p.x.dtype, p.shape)

    def step_h(res):  # cells return h (or (h, c)); as (B, T=1, U) for the comparison
        return {"y": (res[0] if cell == "lstm" else res)[:, None, :]}

    runners = [
        peers.Runner("fastrnn layer", lambda: layer(x), lambda y: {"y": y}),
        peers.Runner("fastrnn cell", lambda: cellobj(x_t, state), step_h),
        peers.Runner("ops.rnn_forward", lambda: ops.rnn_forward(cell, x, weights), lambda o: {"y": o.outputs}),
        peers.Runner("kernel.forward", lambda: kernel.forward(p, False), lambda r: {"y": r[0]}),
    ]
    avail = peers.available_peers()
    if "torch" in avail:
        runners.append(peers.torch_runner(cell, "inference", x, weights))
    if "onnxruntime" in avail:
        runners.append(peers.ort_runner(cell, "inference", x, weights, threads))
    return runners, kernel.name


def _loop(call, k):
    def run():
        for _ in range(k):
            call()
    return run


def latency_point(cell, threads, units=LATENCY_UNITS, min_rounds=9, budget_s=0.5, sample_s=0.004):
    """{runner: microseconds per call}: every runner in loops of k calls (k sized so a loop takes ~sample_s)."""
    runners, backend = latency_runners(cell, units, threads)
    maxdiff = peers.check_agreement(runners)
    loops, ks = {}, {}
    for r in runners:
        t0 = time.perf_counter()
        for _ in range(20):
            r.call()
        per = (time.perf_counter() - t0) / 20
        ks[r.name] = k = int(min(5000, max(10, sample_s / max(per, 1e-7))))
        loops[r.name] = _loop(r.call, k)
    # Untimed rounds first: the first point after the grid (its large calls just freed memory, flushed caches) ran
    # every runner, the peers' too, up to ~40% slower for its first rounds.
    for _ in range(LATENCY_WARMUP_ROUNDS):
        for run in loops.values():
            run()
    load = OtherLoad()
    med = time_side_by_side(loops, min_rounds=min_rounds, max_rounds=100, budget_s=budget_s,
                            pools=LATENCY_POOLS, prewarm_s=PREWARM_S if threads > 1 else 0.0)
    us = {name: med[name] / ks[name] * 1e6 for name in med}
    return dict(cell=cell, units=units, threads=threads, backend=backend, us=us, maxdiff=maxdiff,
                other_load=load.cores())


LATENCY_COLUMNS = ("fastrnn layer", "fastrnn cell", "ops.rnn_forward", "kernel.forward", "torch", "ort")


def format_latency(rows, out=print):
    out(f"\nlatency: one call at T=1, batch 1, units {LATENCY_UNITS}, microseconds (median of loops); target: "
        f"fastrnn layer and cell <= {TARGET_LATENCY_US:g} us")
    out(f"{'cell':<10} " + " ".join(f"{c:>15}" for c in LATENCY_COLUMNS) + f" {'layer':>5} {'cell':>5} "
        f"{'load':>5}")
    for row in rows:
        us = row["us"]
        cols = " ".join(f"{us[c]:15.1f}" if c in us else f"{'-':>15}" for c in LATENCY_COLUMNS)
        flags = " ".join(f"{'ok' if us[c] <= TARGET_LATENCY_US else 'FAIL':>5}" for c in ("fastrnn layer",
                                                                                         "fastrnn cell"))
        load = "-" if row.get("other_load") is None else format(row["other_load"], ".1f")
        out(f"{row['cell']:<10} {cols} {flags} {load:>5}   ({row['backend']})")


def format_sgemm(rows, out=print):
    rows = [r for r in rows if "sgemm_fraction" in r]
    if not rows:
        return
    out(f"\nsgemm (NumPy float32 matmul, same thread count) vs fastrnn, inference at batch {SGEMM_BATCH}: "
        f"step = ({SGEMM_BATCH} x U) @ (U x G*U), projection = ({SGEMM_BATCH}*T x U) @ (U x G*U);\n"
        f"'sgemm seq' = projection + T steps timed in the same rounds as fastrnn; target fastrnn >= "
        f"{TARGET_SGEMM_FRACTION:.0%} of it")
    out(f"{'cell':<10} {'units':>5} {'T':>4} {'step GF/s':>10} {'proj GF/s':>10} {'sgemm seq GF/s':>15} "
        f"{'fastrnn GF/s':>13} {'fraction':>9} {'pass':>5}")
    for r in rows:
        out(f"{r['cell']:<10} {r['units']:>5} {r['timesteps']:>4} {r['sgemm_step_gflops']:10.1f} "
            f"{r['sgemm_proj_gflops']:10.1f} {r['sgemm_gflops']:15.1f} {r['gflops']:13.1f} "
            f"{r['sgemm_fraction'] * 100:8.0f}% {'ok' if r['sgemm_fraction'] >= TARGET_SGEMM_FRACTION else 'FAIL':>5}")


def speedup_side_by_side(cell, mode, units, batch, timesteps, backend, lo=1, hi=2, min_rounds=5, budget_s=0.5,
                         prewarm_s=PREWARM_S):
    """{lo: median seconds, hi: median seconds, "load": other processes' cores} of one fastrnn call (backend) at lo
    and at hi threads, timed in alternation in one loop (each round one timed call at each count), so that the
    machine's changes of speed over time hit both counts alike. Measured here: the same code's 2-thread speedup
    taken from the two thread counts' tables, minutes apart, was 1.58-1.92x (SimpleRNN 128/16 inference)
    depending on when the tables ran; in alternation 1.80-1.91x.

    Each count runs inside peers.Threads(n, peers=False) (fastrnn's threads, the BLAS pools), entered outside the
    timed call, which follows calls at the same count for prewarm_s (at least one), as every call of the tables is
    timed after its own prewarm at 2 threads: a program that keeps its thread count has its threads awake and its
    memory faulted in. With one untimed call only, the 2-thread times came out up to 12% slower (LSTM 128/64
    inference 9.8-9.9 ms against 8.7-8.9; the idle core's wake-up on this VM), and with none, the first call of a
    grown pool's new worker thread faulted its kept scratch in (GRU 1024/64/50 training 0.76 s against 0.65)."""
    x, weights = peers.make_problem(cell, batch, timesteps, units)
    call = peers.fastrnn_runner(backend, cell, mode, x, weights).call
    samples = {lo: [], hi: []}
    load = OtherLoad()
    start = time.perf_counter()
    for rnd in range(max(min_rounds, 200)):
        for n in (lo, hi):
            with peers.Threads(n, peers=False):
                prewarm(call, prewarm_s)
                t0 = time.perf_counter()
                call()
                samples[n].append(time.perf_counter() - t0)
        if rnd + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {lo: statistics.median(samples[lo]), hi: statistics.median(samples[hi]), "load": load.cores()}


def thread_scaling(points, lo=1, hi=2, measure=None):
    """Rows for the points timed at both thread counts with batch >= 16: fastrnn's, torch's and ort's speedup from
    lo to hi threads. torch's and ort's are the ratios of their medians in the two thread counts' tables; so is
    fastrnn's unless `measure` is given: measure(point at lo, point at hi) -> speedup_side_by_side's dict, whose
    ratio is then fastrnn's speedup (the table ratio kept as "tables")."""
    by = {(p["cell"], p["mode"], p["units"], p["batch"], p["timesteps"], p["threads"]): p for p in points}
    out = []
    for key, p_lo in by.items():
        if key[-1] != lo or key[3] < SCALING_MIN_BATCH:
            continue
        p_hi = by.get(key[:-1] + (hi,))
        if p_hi is None:
            continue
        tables = p_lo["fastrnn"] / p_hi["fastrnn"]
        row = dict(cell=key[0], mode=key[1], units=key[2], batch=key[3], timesteps=key[4], tables=tables,
                   method="tables")
        sp = {"fastrnn": tables}
        if measure is not None:
            m = measure(p_lo, p_hi)
            sp["fastrnn"] = m[lo] / m[hi]
            row.update(method="side by side", fastrnn_s={lo: m[lo], hi: m[hi]}, other_load=m.get("load"))
        for name in ("torch", "ort"):
            if name in p_lo["times"] and name in p_hi["times"]:
                sp[name] = p_lo["times"][name] / p_hi["times"][name]
        row.update(speedup=sp, ok=sp["fastrnn"] >= TARGET_THREAD_SCALING)
        out.append(row)
    return out


def format_scaling(rows, lo, hi, out=print):
    if not rows:
        return
    side = any(r["method"] == "side by side" for r in rows)
    out(f"\nthreads: speedup of {hi} threads over {lo}, batch >= {SCALING_MIN_BATCH}; target fastrnn >= "
        f"{TARGET_THREAD_SCALING:g}x; " + (
            f"fastrnn: its {lo}- and {hi}-thread calls timed in alternation in one loop\n(each round one call at "
            f"each count, after {PREWARM_S:g} s of calls at that count; the backend of the {hi}-thread table); "
            "'tables': the ratio of fastrnn's medians\nin the two tables above, timed minutes apart (the machine's "
            "speed drifts between them); torch, ort: their tables' ratio; load: as in the tables"
            if side else "medians of each thread count's table"))
    out(f"{'cell':<10} {'mode':<9} {'units':>5} {'batch':>5} {'T':>4} {'fastrnn':>8} {'tables':>6} {'torch':>6} "
        f"{'ort':>6} {'pass':>5}" + (f" {'load':>5}" if side else ""))
    for r in rows:
        sp = r["speedup"]
        load = r.get("other_load")
        out(f"{r['cell']:<10} {r['mode']:<9} {r['units']:>5} {r['batch']:>5} {r['timesteps']:>4} "
            f"{sp['fastrnn']:8.2f} {r['tables']:6.2f} "
            + " ".join(f"{sp[n]:6.2f}" if n in sp else f"{'-':>6}" for n in ("torch", "ort"))
            + f" {'ok' if r['ok'] else 'FAIL':>5}"
            + ((f" {load:5.1f}" if load is not None else f" {'-':>5}") if side else ""))


def summarize_targets(result, out=print):
    """One line per target: how many points pass, and the failing ones."""
    pts = result["points"]
    lines = []

    def report(name, items):
        items = [(ok, lbl) for ok, lbl in items if ok is not None]
        if not items:
            return
        fails = [lbl for ok, lbl in items if not ok]
        lines.append(f"  {name}: {len(items) - len(fails)}/{len(items)} pass"
                     + (f"; FAIL: {', '.join(fails)}" if fails else ""))

    def lbl(p):
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        # '!': the target is below the bound of this point (out of reach of any implementation)
        beyond = "!" if p.get("bound") is not None and p["bound"] > p["target"] else ""
        return f"{p['cell']}/{p['units']}/b{p['batch']}@{p['threads']}t({ratio}{beyond})"

    report(f"inference <= {TARGET_INFERENCE_SMALL:g}x min(torch, ort) at batch <= 16",
           [(p["ok"], lbl(p)) for p in pts if p["mode"] == "inference" and p["batch"] <= 16])
    report(f"inference <= {TARGET_INFERENCE_LARGE:g}x min(torch, ort) at batch 64",
           [(p["ok"], lbl(p)) for p in pts if p["mode"] == "inference" and p["batch"] > 16])
    report(f"training <= {TARGET_TRAINING:g}x torch",
           [(p["ok"], lbl(p)) for p in pts if p["mode"] == "training"])
    lat = result["latency"]
    report(f"latency layer call <= {TARGET_LATENCY_US:g} us",
           [(r["us"]["fastrnn layer"] <= TARGET_LATENCY_US,
             f"{r['cell']}@{r['threads']}t({r['us']['fastrnn layer']:.1f}us)") for r in lat])
    report(f"latency cell call <= {TARGET_LATENCY_US:g} us",
           [(r["us"]["fastrnn cell"] <= TARGET_LATENCY_US,
             f"{r['cell']}@{r['threads']}t({r['us']['fastrnn cell']:.1f}us)") for r in lat])
    report(f"batch {SGEMM_BATCH} inference >= {TARGET_SGEMM_FRACTION:.0%} of sgemm GFLOP/s",
           [(p["sgemm_fraction"] >= TARGET_SGEMM_FRACTION,
             f"{p['cell']}/{p['units']}@{p['threads']}t({p['sgemm_fraction']:.0%})")
            for p in pts if "sgemm_fraction" in p])
    report(f"{TARGET_THREAD_SCALING:g}x from 1 to 2 threads at batch >= {SCALING_MIN_BATCH}",
           [(r["ok"], f"{r['cell']}/{r['mode'][:3]}/{r['units']}/b{r['batch']}({r['speedup']['fastrnn']:.2f}x)")
            for r in result["scaling"]])
    out("\ntargets: ('!' after a ratio: the target is below that point's bound: FMA peak, R read at cache speed)")
    for line in lines:
        out(line)


class OtherLoad:
    """CPU used by other processes while this one times something, in cores (0 = the machine was ours):
    busy jiffies of the whole machine (/proc/stat) minus this process's CPU time. None where /proc is missing."""

    def __init__(self):
        self.start = (time.perf_counter(), _cpu_busy_jiffies(), _own_cpu())

    def cores(self):
        t0, busy0, own0 = self.start
        busy1 = _cpu_busy_jiffies()
        if busy0 is None or busy1 is None:
            return None
        wall = time.perf_counter() - t0
        other = (busy1[0] - busy0[0]) / busy0[1] - (_own_cpu() - own0)
        return max(0.0, other / wall) if wall > 0 else None


IDLE_LOAD = 0.25  # cores used by other processes below which a measurement counts as undisturbed


def wait_for_idle(max_wait_s, threshold=IDLE_LOAD, window_s=0.5):
    """Sleep until other processes use < threshold cores over a window (or max_wait_s passed); seconds waited."""
    t0 = time.perf_counter()
    while True:
        probe = OtherLoad()
        time.sleep(window_s)
        load = probe.cores()
        waited = time.perf_counter() - t0
        if load is None or load < threshold or waited >= max_wait_s:
            return waited


def _own_cpu():
    import os
    t = os.times()
    return t.user + t.system


def _cpu_busy_jiffies():
    """(busy jiffies of the whole machine, jiffies per second) from /proc/stat, or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        import os
        return sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0), os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_peers(grid, cells=CELLS, modes=peers.MODES, threads=(1,), min_rounds=7, budget_s=0.5, latency=True,
              wait_idle_s=0.0, retries=2, out=print):
    """Every grid point at every thread count: agreement check, then fastrnn (numba, cython), torch and ORT round
    robin; then latency, sgemm and thread-scaling sections and the targets. Returns a dict of the results.

    wait_idle_s > 0: before each point wait (up to that long) until other processes leave the machine idle; after
    each thread count's table, time the points that other processes disturbed again (up to `retries` times)."""
    import os
    waited = 0.0
    status = peers.peer_status()
    versions = peers.peer_versions()
    t_start, cpu_start, busy_start = time.perf_counter(), os.times(), _cpu_busy_jiffies()
    out("peers: " + ", ".join(f"{n} {versions[n]}" if status[n] is None else f"{n} SKIPPED ({status[n]})"
                              for n in peers.PEERS))
    backends = usable_backends(peers.FASTRNN_BACKENDS)
    out(f"fastrnn backends: {', '.join(backends)}; float32; input width = units; median of >= {min_rounds} "
        "round-robin rounds after an agreement check (maxdiff: max |y difference|, gradients scaled)")
    out("ratio = fastrnn (best backend: nu/cy) / the fastest peer (inference: min(torch, ort); training: torch); "
        "GF/s = fastrnn's matmul GFLOP/s;\nload = CPU cores used by other processes while the point was timed "
        "(this machine is shared: numbers measured at load > 0.2 are disturbed, at 2 threads badly)")
    result = dict(points=[], latency=[], threads=tuple(threads), peers=status, grid=grid)
    for n in threads:
        with peers.Threads(n):
            out(f"\n== {n} thread(s): fastrnn.set_num_threads({n}) (its BLAS on 1 thread), other BLAS (threadpoolctl), "
                f"torch.set_num_threads({n}), ORT intra_op={n} ==")
            out(PEER_HEADER)
            out("-" * len(PEER_HEADER))
            t_section = time.perf_counter()
            section = []
            sgemm_peak = peak_sgemm_gflops()
            fma_peak = peak_fma_gflops(n)
            peak = fma_peak or sgemm_peak
            stream = stream_rates(n, shares=[r_share_bytes(c, u, n) for c in cells for u in grid["units"]])
            result.setdefault("sgemm_gflops", {})[n] = sgemm_peak
            result.setdefault("peak_gflops", {})[n] = peak
            result.setdefault("stream", {})[n] = stream
            out(f"(sgemm at {n} thread(s): {sgemm_peak:.1f} GFLOP/s, float32 1024^3 NumPy matmul; FMA peak: "
                + (f"{fma_peak:.1f} GFLOP/s, vector multiply-adds on {n} core(s) at once; bound = the ratio fastrnn "
                   "would reach with every matmul at the FMA peak and free gate math" if fma_peak else
                   "- (Cython not built); bound = the ratio fastrnn would reach with every matmul at the sgemm rate "
                   "and free gate math")
                + (f", each step reading R (its share per core) at the rate measured per core: "
                   f"{stream['l2_gbs']:.0f} GB/s from L2 ({stream['l2_bytes'] // 1024} KB), {stream['l3_gbs']:.0f} "
                   "GB/s from L3" + "".join(f", {gbs:.0f} at {b / 2**20:g} MB" for b, gbs in stream["share_gbs"].items())
                   + ")" if stream else ")"))
            for cell, mode, units, batch in itertools.product(cells, modes, grid["units"], grid["batch"]):
                T = peer_timesteps(grid, units, batch)
                if wait_idle_s > 0:
                    waited += wait_for_idle(wait_idle_s)
                row = peer_point(cell, mode, units, batch, T, n, min_rounds=min_rounds, budget_s=budget_s,
                                 peak_gflops=peak, stream=stream)
                section.append(row)
                out(format_peer_row(row))
            disturbed = [i for i, r in enumerate(section) if (r["other_load"] or 0) >= IDLE_LOAD]
            for attempt in range(retries if wait_idle_s > 0 else 0):
                if not disturbed:
                    break
                out(f"-- timing again the {len(disturbed)} point(s) that other processes disturbed (load >= "
                    f"{IDLE_LOAD:g}); the less disturbed measurement is kept:")
                for i in disturbed:
                    r = section[i]
                    waited += wait_for_idle(wait_idle_s)
                    again = peer_point(r["cell"], r["mode"], r["units"], r["batch"], r["timesteps"], n,
                                       min_rounds=min_rounds, budget_s=budget_s, peak_gflops=peak, stream=stream)
                    out(format_peer_row(again))
                    if again["other_load"] is not None and again["other_load"] < r["other_load"]:
                        section[i] = again
                disturbed = [i for i in disturbed if section[i]["other_load"] >= IDLE_LOAD]
                if attempt == retries - 1 or not disturbed:
                    out("-- the table at this thread count, as kept:")
                    out(PEER_HEADER)
                    for r in section:
                        out(format_peer_row(r))
            result["points"].extend(section)
            format_sgemm([p for p in result["points"] if p["threads"] == n], out)
            if latency:
                lat = []
                for cell in cells:
                    if wait_idle_s > 0:
                        waited += wait_for_idle(wait_idle_s)
                    row = latency_point(cell, n)
                    for _ in range(retries if wait_idle_s > 0 else 0):
                        if (row["other_load"] or 0) < IDLE_LOAD:
                            break
                        waited += wait_for_idle(wait_idle_s)
                        again = latency_point(cell, n)
                        if again["other_load"] is not None and again["other_load"] < row["other_load"]:
                            row = again
                    lat.append(row)
                result["latency"].extend(lat)
                format_latency(lat, out)
            out(f"({n} thread(s): {time.perf_counter() - t_section:.0f} s)")
    result["scaling"] = []
    if {1, 2} <= set(threads):
        def measure(p_lo, p_hi):
            nonlocal waited
            if wait_idle_s > 0:
                waited += wait_for_idle(wait_idle_s)
            return speedup_side_by_side(p_hi["cell"], p_hi["mode"], p_hi["units"], p_hi["batch"], p_hi["timesteps"],
                                        p_hi["fastrnn_backend"], 1, 2, budget_s=budget_s)
        t_scaling = time.perf_counter()
        result["scaling"] = thread_scaling(result["points"], 1, 2, measure)
        result["scaling_s"] = time.perf_counter() - t_scaling
    format_scaling(result["scaling"], 1, 2, out)
    if result["scaling"]:
        out(f"(thread scaling: {result['scaling_s']:.0f} s)")
    summarize_targets(result, out)
    wall = time.perf_counter() - t_start
    cpu_end, busy_end = os.times(), _cpu_busy_jiffies()
    own = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    note = ""
    if busy_start and busy_end:
        busy = (busy_end[0] - busy_start[0]) / busy_start[1]
        other = max(0.0, busy - own)
        note = (f"; other processes used {other:.0f} CPU-s ({other / wall / (os.cpu_count() or 1):.0%} of the "
                f"machine) meanwhile")
    if wait_idle_s > 0:
        note += f"; waited {waited:.0f} s for other processes to go idle"
    out(f"\nwall time {wall:.0f} s, this process {own:.0f} CPU-s{note}")
    result["wall_s"] = wall
    return result


# ---------------------------------------------------------------------------------------------------------------
# The plot: time vs batch per framework, one panel per cell (columns) and mode x thread count (rows)
# ---------------------------------------------------------------------------------------------------------------

PLOT_COLORS = {"fastrnn": "tab:blue", "torch": "tab:orange", "ort": "tab:green", "sgemm": "tab:gray"}


def plot_peers(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pts = result["points"]
    cells = list(dict.fromkeys(p["cell"] for p in pts))
    panels = list(dict.fromkeys((p["mode"], p["threads"]) for p in pts))
    units_all = sorted({p["units"] for p in pts})
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D"]
    fig, axes = plt.subplots(len(panels), len(cells), figsize=(5.2 * len(cells), 3.6 * len(panels)),
                             squeeze=False)
    for i, (mode, n) in enumerate(panels):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            for k, units in enumerate(units_all):
                sel = sorted((p for p in pts if (p["cell"], p["mode"], p["threads"], p["units"]) ==
                              (cell, mode, n, units)), key=lambda p: p["batch"])
                if not sel:
                    continue
                batches = [p["batch"] for p in sel]
                series = {"fastrnn": [p["fastrnn"] for p in sel]}
                for name in ("torch", "ort"):
                    if all(name in p["times"] for p in sel):
                        series[name] = [p["times"][name] for p in sel]
                for name, ts in series.items():
                    ax.plot(batches, [t * 1e3 for t in ts], color=PLOT_COLORS[name], ls=styles[k % 4],
                            marker=markers[k % 4], ms=4, lw=1.4)
                    bad = [(b, t) for b, t, p in zip(batches, ts, sel) if (p.get("other_load") or 0) >= IDLE_LOAD]
                    if bad:
                        ax.plot([b for b, _ in bad], [t * 1e3 for _, t in bad], ls="none", marker="x", ms=9,
                                color="red")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            bs = sorted({p["batch"] for p in pts})
            ax.set_xticks(bs)
            ax.set_xticklabels([str(b) for b in bs])
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("batch")
            ax.set_ylabel("ms per call")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{cell} {mode}, {n} thread{'s' if n > 1 else ''}")
    frameworks = [Line2D([], [], color=c, lw=2, label=n) for n, c in PLOT_COLORS.items() if n != "sgemm"]
    if any((p.get("other_load") or 0) >= IDLE_LOAD for p in pts):
        frameworks.append(Line2D([], [], ls="none", marker="x", color="red", ms=8,
                                 label=f"disturbed (other processes >= {IDLE_LOAD:g} cores)"))
    unit_lines = [Line2D([], [], color="black", ls=styles[k % 4], marker=markers[k % 4], label=f"units {u}")
                  for k, u in enumerate(units_all)]
    T = sorted({p["timesteps"] for p in pts})
    height = fig.get_figheight()
    grid = result.get("grid") or {}
    long_note = (f" (T={grid['long_timesteps']} at units >= 512, batch 64)"
                 if grid.get("long_timesteps", grid.get("timesteps")) != grid.get("timesteps") else "")
    fig.suptitle(f"fastrnn (best of numba/cython) vs torch vs onnxruntime: median ms per call, float32, input width "
                 f"= units, T = {grid.get('timesteps', '/'.join(map(str, T)))}{long_note}; lower is better",
                 y=1 - 0.08 / height, fontsize=12)
    fig.legend(handles=frameworks + unit_lines, loc="upper center", ncol=len(frameworks) + len(unit_lines),
               frameon=False, fontsize=10, bbox_to_anchor=(0.5, 1 - 0.38 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(result, path):
    """The run's results (every point's medians, ratios, loads; latency; scaling) as JSON."""
    import json
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    return path
