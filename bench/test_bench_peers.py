"""fastrnn vs torch vs onnxruntime, pytest-benchmark version of `fastrnn bench --peers` (1 thread everywhere).

Run: pytest bench/test_bench_peers.py --benchmark-enable --benchmark-group-by=group
Each grid point is one group, so fastrnn-numba, fastrnn-cython, torch and ort show side by side. pytest-benchmark
times one runner after another; `fastrnn bench --peers` interleaves them (round robin) and prints the ratios and
targets, which is the measurement to quote on a shared machine.
Every point first checks that all runners compute the same outputs (and gradients in training).
"""
import functools

import pytest

from fastrnn import benchmark as fb
from fastrnn import peers

GRID = fb.PEERS_FULL_GRID
RUNNERS = [f"fastrnn-{b}" for b in fb.usable_backends(peers.FASTRNN_BACKENDS)] + ["torch", "ort"]


@pytest.fixture(autouse=True)
def one_thread():
    # bench/conftest.py limits BLAS; torch's intra-op pool too (ORT sessions are built with intra_op=1).
    with peers.Threads(1):
        yield


@functools.lru_cache(maxsize=1)  # the point being benchmarked: its runners, checked once
def checked_runners(cell, mode, units, batch, timesteps):
    x, weights = fb.peers.make_problem(cell, batch, timesteps, units)
    runners = peers.make_runners(cell, mode, x, weights, threads=1)
    peers.check_agreement(runners)
    return {r.name: r for r in runners}


def run(benchmark, cell, mode, units, batch, timesteps, runner):
    if runner == "ort" and mode == "training":
        pytest.skip("onnxruntime runs inference only")
    runners = checked_runners(cell, mode, units, batch, timesteps)
    if runner not in runners:
        pytest.skip(f"{runner} is not installed")
    benchmark.group = f"{cell} {mode} units={units} batch={batch} T={timesteps}"
    benchmark.extra_info.update(cell=cell, mode=mode, units=units, batch=batch, timesteps=timesteps)
    benchmark(runners[runner].call)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("batch", GRID["batch"])
@pytest.mark.parametrize("units", GRID["units"])
@pytest.mark.parametrize("mode", peers.MODES)
@pytest.mark.parametrize("cell", fb.CELLS)
def test_peers(benchmark, cell, mode, units, batch, runner):
    run(benchmark, cell, mode, units, batch, fb.peer_timesteps(GRID, units, batch), runner)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode", peers.MODES)
@pytest.mark.parametrize("cell", fb.CELLS)
def test_peers_smoke(benchmark, cell, mode, runner):
    run(benchmark, cell, mode, 16, 2, 5, runner)
