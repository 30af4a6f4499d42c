"""Large scratch blocks kept per thread (fastrnn.kernels.kept_scratch, used by the Cython kernels from
KEEP_SCRATCH_BYTES): lent to one call at a time, reused by the next, never shared between threads; kernel results
do not depend on what a kept block held."""
import threading

import numpy as np
import pytest

from fastrnn import kernels, ops


def test_kept_block_is_reused_and_lent_once():
    a = kernels.kept_scratch(1000)
    nested = kernels.kept_scratch(500)          # `a` is still lent: a new array
    assert not np.shares_memory(a, nested)
    base = a.base
    del a, nested
    b = kernels.kept_scratch(800)               # returned: the same block again
    assert b.base is base and b.nbytes == 800
    del b
    c = kernels.kept_scratch(base.nbytes + 1000)   # larger than the block (earlier calls may have grown it): grows
    assert c.nbytes == base.nbytes + 1000 and c.base is not base


def test_threads_keep_blocks_of_their_own():
    seen = {}

    def take(k):
        seen[k] = kernels.kept_scratch(4096).base

    workers = [threading.Thread(target=take, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen[0] is not seen[1]


@pytest.mark.skipif(not ops.KERNELS[("lstm", "cython", np.dtype(np.float32))].available(),
                    reason="Cython kernels not built")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_kernel_results_with_a_kept_block(cell):
    # B*T*G*U floats of input projection in the scratch: 9.4 MB (GRU), 12.6 MB (LSTM), over the limit.
    rng = np.random.default_rng(0)
    B, T, U = 8, 128, 768
    G = ops.GATES[cell]
    assert B * T * G * U * 4 >= kernels.KEEP_SCRATCH_BYTES
    weights = [rng.standard_normal((U, G * U)).astype(np.float32) * 0.05,
               rng.standard_normal((U, G * U)).astype(np.float32) * 0.05,
               np.zeros((2, G * U) if cell == "gru" else G * U, np.float32)]
    x1, x2 = (rng.standard_normal((B, T, U)).astype(np.float32) for _ in range(2))
    first = ops.rnn_forward(cell, x1, weights, backend="cython").outputs
    ops.rnn_forward(cell, x2, weights, backend="cython")        # fills the kept block with other numbers
    again = ops.rnn_forward(cell, x1, weights, backend="cython").outputs
    np.testing.assert_array_equal(first, again)
    assert kernels._kept.block.nbytes >= B * T * G * U * 4     # the kernels took this thread's kept block
    want = ops.rnn_forward(cell, x1, weights, backend="numpy").outputs
    np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-5)
    out = ops.rnn_forward(cell, x1, weights, backend="cython", training=True)
    grads = ops.rnn_backward(out, np.ones_like(out.outputs))
    ref = ops.rnn_backward(ops.rnn_forward(cell, x1, weights, backend="numpy", training=True),
                           np.ones_like(out.outputs))
    np.testing.assert_allclose(grads.dx, ref.dx, rtol=1e-3, atol=1e-4)
