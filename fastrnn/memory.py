"""Freed kernel buffers kept for the next call of the same shape (kernels/page_cache.pyx: why, and how).

fastrnn.ops allocates a call's outputs, workspaces, gradients and the kernels' scratch inside `kept()` when they
are large enough to come from fresh pages (`worth_keeping`); those arrays go back to the cache when freed, and
the next call of the same shape gets the same blocks, pages mapped. Everything else NumPy allocates is untouched.

    fastrnn.set_memory_cache(64 << 20)   # keep at most 64 MB of freed blocks (default 256 MB; 0: none)
    fastrnn.memory_cache_info()          # blocks and bytes kept, the limit, hits and misses

Without the compiled module (kernels not built) NumPy's allocator serves every call, and the limit is 0.
"""
try:
    from .kernels import page_cache as _cache
except ImportError:  # Cython kernels not built
    _cache = None

_MIN_BYTES = _cache.MIN_BYTES if _cache is not None else float("inf")
# ops.GATES, here to keep this module free of ops (which imports it)
_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


class kept:
    """Inside: NumPy allocates from the cache (this thread only; restored on leaving)."""
    __slots__ = ("_previous",)

    def __enter__(self):
        self._previous = _cache.enter()
        return self

    def __exit__(self, *exc):
        _cache.leave(self._previous)
        return False


def worth_keeping(p):
    """Whether a call on Problem p allocates blocks the cache keeps: its input projection (one value per gate,
    unit and position) or its packed weights (D + U rows of them) of MIN_BYTES or more. The per-call cost of
    switching handlers (~0.3 us) is then nothing; a T=1 call at 32 units (the latency path) allocates ~30 KB and
    skips it."""
    x = p.x
    B, T, D = x.shape
    U = p.R.shape[0]
    return (B * T + D + U) * U * _GATES[p.cell] * x.itemsize >= _MIN_BYTES


def set_memory_cache(max_bytes):
    """Keep at most max_bytes of freed kernel buffers for later calls (0: none, and free what is kept).
    Returns the previous limit."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int; got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
    if _cache is None:
        return 0
    return _cache.set_limit(min(max_bytes, 1 << 62))  # beyond: no limit


def memory_cache_info():
    """The cache's state: blocks and bytes kept, the limit, allocations of MIN_BYTES or more it served (hits) and
    not (misses)."""
    if _cache is None:
        return dict(blocks=0, bytes=0, limit=0, hits=0, misses=0)
    return _cache.info()
