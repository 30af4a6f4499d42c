"""The page cache (kernels/page_cache.pyx, fastrnn.memory): freed large blocks reused by the next allocation of the
same size inside kept(), zeroed for np.zeros, bounded by the limit, and invisible in fastrnn's results."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import memory, ops

page_cache = pytest.importorskip("fastrnn.kernels.page_cache")

BIG = 1 << 20  # bytes: above page_cache.MIN_BYTES


@pytest.fixture
def limit():
    """A cache emptied before and after the test, its limit restored."""
    old = fastrnn.set_memory_cache(0)
    fastrnn.set_memory_cache(old)
    yield old
    fastrnn.set_memory_cache(0)
    fastrnn.set_memory_cache(old)


def address(a):
    return a.__array_interface__["data"][0]


def test_a_freed_block_serves_the_next_allocation_of_its_size(limit):
    with memory.kept():
        a = np.empty(BIG, np.uint8)
        first = address(a)
        del a
        info = fastrnn.memory_cache_info()
        assert info["blocks"] == 1 and info["bytes"] == BIG
        b = np.empty(BIG, np.uint8)
    assert address(b) == first
    after = fastrnn.memory_cache_info()
    assert after["hits"] == info["hits"] + 1 and after["blocks"] == 0 and after["bytes"] == 0


def test_other_sizes_and_small_blocks_are_not_served_from_it(limit):
    with memory.kept():
        a = np.empty(BIG, np.uint8)
        first = address(a)
        del a
        b = np.empty(BIG + 64, np.uint8)          # another size: a new block
        small = np.empty(page_cache.MIN_BYTES // 2, np.uint8)
        del small                                  # below MIN_BYTES: not kept
        assert address(b) != first
        assert fastrnn.memory_cache_info()["blocks"] == 1


def test_allocations_outside_kept_use_numpys_allocator(limit):
    with memory.kept():
        a = np.empty(BIG, np.uint8)
    first = address(a)
    del a                                          # allocated inside: comes back to the cache
    assert fastrnn.memory_cache_info()["blocks"] == 1
    b = np.empty(BIG, np.uint8)                    # outside: NumPy's own handler, never the kept block
    assert address(b) != first
    del b
    assert fastrnn.memory_cache_info()["blocks"] == 1


def test_zeros_from_a_kept_block_are_zero(limit):
    with memory.kept():
        a = np.empty(BIG // 8, np.float64)
        a[:] = np.nan
        first = address(a)
        del a
        z = np.zeros(BIG // 8, np.float64)
    assert address(z) == first
    assert not z.any()


def test_the_limit_bounds_what_is_kept_least_recently_freed_first(limit):
    fastrnn.set_memory_cache(2 * BIG)
    with memory.kept():
        blocks = [np.empty(BIG, np.uint8) for _ in range(3)]
        addresses = [address(b) for b in blocks]
        for k in range(3):
            blocks[k] = None                       # freed in order 0, 1, 2
        info = fastrnn.memory_cache_info()
        assert info["blocks"] == 2 and info["bytes"] == 2 * BIG
        again = [np.empty(BIG, np.uint8) for _ in range(2)]
    assert {address(a) for a in again} == set(addresses[1:])   # block 0, the oldest, was given back


def test_at_most_slots_blocks_are_kept(limit):
    with memory.kept():
        arrays = [np.empty(page_cache.MIN_BYTES + 64 * k, np.uint8) for k in range(page_cache.SLOTS + 5)]
        del arrays
    info = fastrnn.memory_cache_info()
    assert info["blocks"] == page_cache.SLOTS


def test_a_block_over_the_limit_is_freed(limit):
    fastrnn.set_memory_cache(BIG // 2)
    with memory.kept():
        a = np.empty(BIG, np.uint8)
        del a
    assert fastrnn.memory_cache_info()["blocks"] == 0


def test_set_memory_cache_returns_the_old_limit_and_zero_frees_everything(limit):
    with memory.kept():
        del_me = np.empty(BIG, np.uint8)
        del del_me
    assert fastrnn.memory_cache_info()["blocks"] == 1
    assert fastrnn.set_memory_cache(0) == limit
    info = fastrnn.memory_cache_info()
    assert info == dict(info, blocks=0, bytes=0, limit=0)
    assert fastrnn.set_memory_cache(1 << 80) == 0   # beyond 2**62: no limit in effect
    assert fastrnn.memory_cache_info()["limit"] == 1 << 62


@pytest.mark.parametrize("bad, error", [("64", TypeError), (1.5, TypeError), (True, TypeError), (None, TypeError),
                                        (-1, ValueError)])
def test_set_memory_cache_rejects_bad_limits(bad, error, limit):
    with pytest.raises(error, match="max_bytes"):
        fastrnn.set_memory_cache(bad)
    assert fastrnn.memory_cache_info()["limit"] == limit


def test_threads_allocating_at_once_each_get_their_own_blocks(limit):
    errors = []

    def work(k):
        try:
            with memory.kept():
                for i in range(200):
                    a = np.full(BIG // 4, k * 1000 + i, np.int32)
                    b = np.zeros(BIG // 4, np.int32)
                    assert (a == k * 1000 + i).all() and not b.any()
                    assert address(a) != address(b)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fastrnn.memory_cache_info()["blocks"] <= page_cache.SLOTS


@pytest.mark.parametrize("cell", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 16])
def test_kernel_calls_reuse_blocks_and_give_the_same_results(cell, batch, limit):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, 100, 128)).astype(np.float32)
    G = ops.GATES[cell]
    shapes = ((128, G * 128), (128, G * 128), (2, G * 128) if cell == "gru" else (G * 128,))
    weights = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]
    p = ops.make_problem(cell, x, weights, None, None, False, "tanh", True, None, True)
    assert memory.worth_keeping(p)
    dy = rng.standard_normal((batch, 100, 128)).astype(np.float32)
    x0, w0, dy0 = x.copy(), [w.copy() for w in weights], dy.copy()

    def run():
        out = fastrnn.rnn_forward(cell, x, weights, training=True, backend="cython")
        g = fastrnn.rnn_backward(out, dy)
        return [out.outputs, *out.states, g.dx, *g.d_initial_states, *g.d_weights]

    fastrnn.set_memory_cache(0)
    expected = run()
    fastrnn.set_memory_cache(limit)
    first = run()
    hits = fastrnn.memory_cache_info()["hits"]
    del first
    second = run()
    assert fastrnn.memory_cache_info()["hits"] > hits     # the second call reused the first one's blocks
    for want, got in zip(expected, second):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    for w, w_0 in zip(weights, w0):
        np.testing.assert_array_equal(w, w_0)


def test_a_small_call_keeps_numpys_allocator(limit):
    x = np.ones((1, 1, 32), np.float32)
    weights = [np.full((32, 128), 0.01, np.float32), np.full((32, 128), 0.01, np.float32)]
    p = ops.make_problem("lstm", x, weights, None, None, False, "tanh", True, None, True)
    assert not memory.worth_keeping(p)
    before = fastrnn.memory_cache_info()
    fastrnn.rnn_forward("lstm", x, weights)
    after = fastrnn.memory_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
