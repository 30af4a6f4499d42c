"""Memory for the arrays a training call returns (outputs, workspaces, gradients), reused once the caller drops them.

Why: a training step allocates several MB of them and a training loop drops them all before the next step; glibc
then hands the top of its heap back to the OS (more than its trim threshold is free there), and the next step's
arrays are fresh pages, each faulted in on its first write. Measured (SimpleRNN 128 units, batch 16, T=100, one
thread, forward + backward): 3.35 ms a step while the previous step's results were still held, 4.97 ms when they
were dropped first (1238 page faults a step); LSTM 128/16 13.8 vs 17.9 ms. Which pattern faults depends on the
heap's history, so the same loop ran at either speed from one process to the next.

A block goes back into use when nothing but this pool refers to it: every array handed out is a view of its block
and holds a reference to it (NumPy's .base), as do views of those arrays, so the block's reference count tells.
At most MAX_BLOCKS blocks and MAX_BYTES are kept: the oldest are let go (to the arrays still using them, if any).
Arrays a caller may keep (y, dx, dW, dR) get blocks of their own (fastrnn.ops.training_outputs, gradient_arrays),
so that keeping one holds no more memory than it did as a plain array.
"""
import math
import sys
import threading

import numpy as np

MIN_BYTES = 256 << 10    # smaller calls take plain arrays: their pages are few, and the pool costs ~3 us a call
MAX_BLOCKS = 64          # a few blocks a layer's step (y, workspaces, dx, dW, dR), several layers in flight
MAX_BYTES = 1 << 30
ALIGN = 64               # each array starts on a cache line

_lock = threading.Lock()
_blocks = []             # uint8 arrays, least recently handed out first


def _refs(blocks, i):
    return sys.getrefcount(blocks[i])


# What a block's reference count reads when only the pool holds it (measured the way take() measures it).
_FREE_REFS = _refs([np.empty(1, np.uint8)], 0)


def _take(nbytes):
    """A uint8 block of at least nbytes that no array uses: the smallest kept one that fits (no more than twice as
    large; the most recently used of equals, whose lines may still be cached), else a new one."""
    with _lock:
        best = -1
        for i in range(len(_blocks) - 1, -1, -1):
            size = _blocks[i].nbytes
            if nbytes <= size <= 2 * nbytes and (best < 0 or size < _blocks[best].nbytes) \
                    and _refs(_blocks, i) == _FREE_REFS:
                best = i
        if best >= 0:
            block = _blocks.pop(best)
            _blocks.append(block)
            return block
        block = np.empty(nbytes, np.uint8)
        _blocks.append(block)
        kept = sum(b.nbytes for b in _blocks)
        while len(_blocks) > MAX_BLOCKS or (kept > MAX_BYTES and len(_blocks) > 1):
            kept -= _blocks.pop(0).nbytes
        return block


def arrays(specs):
    """Uninitialized arrays for specs [(shape, dtype), ...] (dtype a numpy.dtype), each a view of one block. From
    MIN_BYTES in all the block is a recycled one (see above)."""
    spans, total = [], 0
    for shape, dtype in specs:
        n = math.prod(shape) * dtype.itemsize
        spans.append((total, total + n))
        total += -(-n // ALIGN) * ALIGN
    block = _take(total) if total >= MIN_BYTES else np.empty(total, np.uint8)
    out = []
    for (shape, dtype), (start, end) in zip(specs, spans):
        out.append(block[start:end].view(dtype).reshape(shape))
    return out


def clear():
    """Let go of every kept block (arrays still using one keep it alive)."""
    with _lock:
        _blocks.clear()
