"""Shared test helpers: random problems for every cell and option, relative-error measures, and the column-split
tests' fixtures."""
import faulthandler

import numpy as np
import pytest

CELLS = ("simple_rnn", "lstm", "gru")
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}

# Every option combination a cell supports: (cell, options dict); ids for pytest.
CELL_OPTIONS = [
    ("simple_rnn", dict(activation="tanh")),
    ("simple_rnn", dict(activation="relu")),
    ("lstm", dict()),
    ("gru", dict(reset_after=True)),
    ("gru", dict(reset_after=False)),
]
CELL_OPTION_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru-ra", "gru-rb"]


def n_states(cell):
    return 2 if cell == "lstm" else 1


def bias_shape(cell, units, reset_after=True):
    g = GATES[cell]
    return (2, 3 * units) if (cell == "gru" and reset_after) else (g * units,)


def random_problem(cell, B, T, D, U, dtype=np.float64, seed=0, lengths="full", scale=0.5, **options):
    """Random x, weights, initial states, lengths and output gradients for one cell."""
    rng = np.random.default_rng(seed)
    g = GATES[cell]

    def rand(*shape):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    p = dict(
        x=rand(B, T, D), W=rand(D, g * U), R=rand(U, g * U),
        b=rand(*bias_shape(cell, U, options.get("reset_after", True))),
        states=tuple(rand(B, U) for _ in range(n_states(cell))),
        dy=rand(B, T, U), dstates=tuple(rand(B, U) for _ in range(n_states(cell))),
    )
    if lengths == "full":
        p["lengths"] = None
    elif lengths == "mixed":
        lens = rng.integers(0, T + 1, size=B)
        lens[0] = T                    # always one full row
        if B > 1:
            lens[1] = 0                # and one empty row
        p["lengths"] = lens.astype(np.int64)
    else:
        p["lengths"] = np.asarray(lengths, np.int64)
    return p


def contract_workspaces(cell, reset_after, ws):
    """The workspaces of ws that the kernel contract defines: GRU reset_after=False neither reads nor writes ws_vh
    (kernels/README.md), whose contents are then whatever its memory held."""
    unused = cell == "gru" and not reset_after
    return tuple(w for k, w in enumerate(ws) if not (unused and k == 2))


def rel_err(a, b):
    """max |a - b| / max(max |b|, tiny): one number per comparison, scale-aware."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures of the column-split tests (tests/test_column_split*.py import them; autouse there)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def watchdog():
    """A call that never returns (threads stuck in a barrier) fails the run with every thread's traceback."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def no_backoff():
    """Every test starts and ends without the column split's contention backoff."""
    from fastrnn import _column_split
    _column_split.reset_backoff()
    yield
    _column_split.reset_backoff()
