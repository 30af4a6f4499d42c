"""Forward-inference and forward+BPTT for each cell and backend against the NumPy reference.

Run: pytest bench --benchmark-enable --benchmark-group-by=param:cell,param:mode,param:units,param:batch
(test_frozen_layer: --benchmark-group-by=param:cell,param:units,param:batch).
pytest-benchmark then prints each grid point's backends side by side; `fastrnn bench` prints ratios.
T = 100 (T = 50 at batch 64), float32, 1 BLAS thread (bench/conftest.py).
"""
import numpy as np
import pytest

from fastrnn import benchmark as fb
from fastrnn import peers

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


def _layer(cell, x, weights, frozen):
    layer = peers.LAYERS[cell](weights[1].shape[0], return_sequences=True)
    layer.set_weights(weights)
    return layer.freeze() if frozen else layer


@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("units", [128, 512])
@pytest.mark.parametrize("cell", fb.CELLS)
def test_frozen_layer(benchmark, cell, units, batch, frozen):
    """Inference through a layer, and through the same layer frozen (W and R packed once, not every call)."""
    x, weights = fb.make_inputs(cell, batch, 100, units)
    benchmark(_layer(cell, x, weights, frozen), x)


@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
@pytest.mark.parametrize("cell", fb.CELLS)
def test_smoke_frozen_layer(benchmark, cell, frozen):
    x, weights = fb.make_inputs(cell, 2, 20, 8)
    y = benchmark(_layer(cell, x, weights, frozen), x)
    np.testing.assert_allclose(y, _layer(cell, x, weights, False)(x), rtol=1e-5, atol=1e-6)
