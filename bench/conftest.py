"""pytest-benchmark suite: `pytest bench --benchmark-enable` (see README). Kept out of the default test run."""
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_blas_thread():
    # The grid is specified at 1 thread; BLAS pools must not add their own threads.
    with threadpool_limits(limits=1):
        yield
