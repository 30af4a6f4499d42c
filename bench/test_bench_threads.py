"""fastrnn on 1 and 2 threads at small batches, where the column-split kernel runs (fastrnn/_column_split.py):
inference and forward + BPTT.

Run: pytest bench/test_bench_threads.py --benchmark-enable --benchmark-group-by=param:cell,param:mode,param:units,param:batch
Each group then shows 1 and 2 threads side by side. T = 100, float32, the "auto" backend.
"""
import numpy as np
import pytest

from fastrnn import _column_split, ops, peers
from fastrnn import benchmark as fb


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("units", [256, 512, 1024])
@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("cell", fb.CELLS)
def test_small_batch_threads(benchmark, cell, mode, units, batch, threads):
    x, weights = fb.make_inputs(cell, batch, 100, units)
    call = fb.make_call("auto", cell, mode, x, weights)
    with peers.Threads(threads, peers=False):
        _column_split.reset_backoff()
        benchmark(call)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("cell", fb.CELLS)
def test_small_batch_threads_smoke(benchmark, cell, mode, threads):
    """A point the column split takes at 2 threads (64 steps of 256 units: at least 8 MFLOP of per-step products),
    checked against the reference."""
    x, weights = fb.make_inputs(cell, 1, 64, 256)
    assert _column_split.worthwhile(ops.make_problem(cell, x, weights), 2)
    with peers.Threads(threads, peers=False):
        _column_split.reset_backoff()
        out = benchmark(fb.make_call("auto", cell, mode, x, weights))
    want = fb.make_call("numpy", cell, mode, x, weights)()
    got, ref = (out.dx, want.dx) if mode == "training" else (out.outputs, want.outputs)
    assert np.allclose(got, ref, rtol=1e-3, atol=1e-4)
