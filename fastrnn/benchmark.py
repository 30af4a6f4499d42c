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

from . import ops

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


def time_side_by_side(calls, min_rounds=5, max_rounds=50, budget_s=2.0):
    """{name: median seconds}: round robin over `calls` until min_rounds and the time budget are used."""
    for call in calls.values():  # warm up: compile/load, allocate, fill caches
        call()
    samples = {name: [] for name in calls}
    start = time.perf_counter()
    for rnd in range(max_rounds):
        for name, call in calls.items():
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
