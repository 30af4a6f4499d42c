"""pytest-benchmark suite: `pytest bench --benchmark-enable` (see README). Kept out of the default test run."""
import pytest

from fastrnn import peers


@pytest.fixture(autouse=True)
def one_thread():
    # The grid is specified at 1 thread: fastrnn's own threads off (fastrnn.set_num_threads(1)) and BLAS pools
    # without threads of their own; restored afterwards.
    with peers.Threads(1, peers=False):
        yield
