"""Forward-inference and forward+BPTT for each cell and backend against the NumPy reference.

Run: pytest bench --benchmark-enable --benchmark-group-by=param:cell,param:mode,param:units,param:batch
pytest-benchmark then prints each grid point's backends side by side; `fastrnn bench` prints ratios.
T = 100 (T = 50 at batch 64), float32, 1 BLAS thread (bench/conftest.py).
"""
import numpy as np
import pytest

from fastrnn import benchmark as fb

BACKENDS = fb.usable_backends(("numpy", "numba", "cython"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("units", [128, 256, 512])
@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("cell", fb.CELLS)
def test_grid(benchmark, cell, mode, units, batch, backend):
    x, weights = fb.make_inputs(cell, batch, 100 if batch < 64 else 50, units)
    benchmark(fb.make_call(backend, cell, mode, x, weights))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", fb.CELLS)
def test_smoke(benchmark, cell, backend):
    x, weights = fb.make_inputs(cell, 2, 5, 8)
    grads = benchmark(fb.make_call(backend, cell, "training", x, weights))
    assert np.isfinite(grads.dx).all()
