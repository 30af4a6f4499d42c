"""fastrnn._recycle: the arrays a training call returns are views of one block, reused only once nothing refers to
it any more; zeroed arrays are zeros whatever the block held; results do not depend on the block's history."""
import gc
import threading

import numpy as np
import pytest

from fastrnn import _recycle, ops

F32 = np.dtype(np.float32)
BIG = (64, 1024)   # 256 KB of float32: recycled


@pytest.fixture(autouse=True)
def empty_pool():
    _recycle.clear()
    yield
    _recycle.clear()


def test_a_block_is_reused_once_every_view_is_gone():
    a, b = _recycle.arrays([(BIG, F32), ((3, 5), F32)])
    assert a.shape == BIG and b.shape == (3, 5) and a.base is b.base
    block = id(a.base)      # (an id: a reference held here would keep the block in use)
    assert not np.shares_memory(a, b)
    del a
    c, = _recycle.arrays([(BIG, F32)])          # b still uses the block: a new one
    assert id(c.base) != block
    del b
    d, = _recycle.arrays([(BIG, F32)])          # nothing uses it now
    assert id(d.base) == block


def test_views_of_views_keep_their_block_in_use():
    a, = _recycle.arrays([(BIG, F32)])
    block = id(a.base)
    kept = a.T[::2]                                    # a view derived by the caller
    del a
    gc.collect()
    b, = _recycle.arrays([(BIG, F32)])
    assert id(b.base) != block and not np.shares_memory(b, kept)
    del kept
    c, = _recycle.arrays([(BIG, F32)])
    assert id(c.base) == block


def test_arrays_are_aligned_and_reused():
    a, z = _recycle.arrays([((7, 3), F32), (BIG, np.dtype(np.float64))])
    assert z.dtype == np.float64 and z.shape == BIG and a.shape == (7, 3)
    assert a.ctypes.data % 16 == 0 and (z.ctypes.data - a.ctypes.data) % _recycle.ALIGN == 0
    block = id(z.base)
    del a, z
    a, z = _recycle.arrays([((7, 3), F32), (BIG, np.dtype(np.float64))])
    assert id(z.base) == block


def test_small_requests_take_plain_arrays_and_blocks_are_capped():
    small, = _recycle.arrays([((4, 4), F32)])
    assert small.base is not None and small.base.nbytes < _recycle.MIN_BYTES
    held = [_recycle.arrays([((4, 1024), F32)] * 16)[0] for _ in range(_recycle.MAX_BLOCKS + 3)]
    assert len(_recycle._blocks) == _recycle.MAX_BLOCKS    # the oldest let go (the arrays still hold them)
    assert len({id(h.base) for h in held}) == len(held)


def test_threads_never_share_a_block():
    got = {}
    barrier = threading.Barrier(4)

    def take(k):
        barrier.wait()
        got[k] = _recycle.arrays([(BIG, F32)])[0]

    workers = [threading.Thread(target=take, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(4):
        for j in range(i):
            assert not np.shares_memory(got[i], got[j])


@pytest.mark.parametrize("cell", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_training_results_do_not_depend_on_recycled_memory(cell, backend):
    """A training step whose outputs, workspaces and gradients land in blocks a dropped step filled with NaN equals
    the first step bit for bit (the kernels write every element, workspaces start at zero)."""
    if ops.available_backends().get(backend) is not None:
        pytest.skip(f"{backend} not available")
    rng = np.random.default_rng(1)
    B, T, D, U = 16, 40, 128, 128     # 328 KB of outputs and of dx: recycled blocks
    G = ops.GATES[cell]
    weights = [rng.standard_normal((D, G * U)).astype(np.float32) * 0.2,
               rng.standard_normal((U, G * U)).astype(np.float32) * 0.2,
               rng.standard_normal((2, G * U) if cell == "gru" else G * U).astype(np.float32) * 0.1]
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = np.array([40, 3, 40, 0, 7, 40, 1, 39] * 2)
    dy = rng.standard_normal((B, T, U)).astype(np.float32)

    def step():
        out = ops.rnn_forward(cell, x, weights, lengths=lengths, backend=backend, training=True)
        return out, ops.rnn_backward(out, dy)

    out, grads = step()
    first = [out.outputs.copy(), *(s.copy() for s in out.states), grads.dx.copy(),
             *(g.copy() for g in grads.d_weights)]
    assert out.outputs.base is not None and out.outputs.base.nbytes >= _recycle.MIN_BYTES
    blocks = {id(out.outputs.base), id(grads.dx.base)}
    for a in (out.outputs, *out.states, *out.tape, grads.dx, *grads.d_weights):   # tape: the workspaces
        a[...] = np.nan
    del out, grads, a
    out, grads = step()
    assert {id(out.outputs.base), id(grads.dx.base)} == blocks   # the same blocks, reused
    again = [out.outputs, *out.states, grads.dx, *grads.d_weights]
    for want, got in zip(first, again):
        np.testing.assert_array_equal(got, want)


def test_results_kept_by_the_caller_pin_only_their_own_block():
    """A caller that keeps the final states and dW of every step (and drops the rest) lets y, the workspaces and
    dx be reused: what it keeps holds no more memory than itself."""
    rng = np.random.default_rng(2)
    B, T, D, U = 16, 40, 128, 128
    weights = [rng.standard_normal((D, 4 * U)).astype(np.float32) * 0.1,
               rng.standard_normal((U, 4 * U)).astype(np.float32) * 0.1, np.zeros(4 * U, np.float32)]
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    kept, seen = [], []
    for _ in range(3):
        out = ops.rnn_forward("lstm", x, weights, backend="cython", training=True)
        grads = ops.rnn_backward(out, np.ones_like(out.outputs))
        kept.append((out.states, grads.d_weights[0]))
        # y and dx have one size here: either may take the other's block
        seen.append(({id(out.outputs.base), id(grads.dx.base)}, id(out.tape[0].base)))
        for s in out.states:
            assert s.base is None                       # plain arrays
        del out, grads
    assert seen[1] == seen[2]                           # y, workspaces, dx: the same blocks again
    assert len({id(w.base) for _, w in kept}) == 3      # each kept dW in a block of its own
