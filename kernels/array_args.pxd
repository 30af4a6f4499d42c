# cython: language_level=3
"""Array arguments of the Cython forward entries, taken as plain ndarrays.

Typed memoryviews of a fused type cost ~5 us per forward call here (16 buffer acquisitions plus the fused
dispatch): half of a whole T=1 layer call. An ndarray argument costs a type check; these helpers then check what
a memoryview would have (dtype, C order, alignment, writability) and the shapes the kernel contract fixes (which
a memoryview did not), with errors that name the argument. Each module that cimports this calls
cnp.import_array() once.
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t

from fused_blas cimport pack, packed_size


cdef inline int float_type(str name, cnp.ndarray a) except -1:
    """The numpy type number of a float32 or float64 array (every float array of a call has it)."""
    cdef int tn = cnp.PyArray_TYPE(a)
    if tn != cnp.NPY_FLOAT32 and tn != cnp.NPY_FLOAT64:
        raise TypeError(f"{name} must be a float32 or float64 array; got dtype {(<object> a).dtype}")
    return tn


cdef inline int need(str name, cnp.ndarray a, int tn, bint out, int ndim, Py_ssize_t d0, Py_ssize_t d1,
                     Py_ssize_t d2) except -1:
    """a has type number tn, ndim dimensions of sizes d0, d1, d2 (as many as ndim; -1: any size), is C-contiguous
    and aligned, and writable when it is an output (`out`)."""
    cdef bint ok = (cnp.PyArray_TYPE(a) == tn and cnp.PyArray_NDIM(a) == ndim
                    and (cnp.PyArray_ISCARRAY(a) if out else cnp.PyArray_ISCARRAY_RO(a)))
    cdef Py_ssize_t k, want
    if ok:
        for k in range(ndim):
            want = d0 if k == 0 else d1 if k == 1 else d2
            if want >= 0 and cnp.PyArray_DIM(a, k) != want:
                ok = False
    if not ok:
        parts = []
        for k in range(ndim):  # (a generator here would not compile: Cython, inline function of a .pxd)
            want = d0 if k == 0 else d1 if k == 1 else d2
            parts.append("*" if want < 0 else str(want))
        shape = "(" + ", ".join(parts) + ("," if ndim == 1 else "") + ")"
        kind = "writable C-contiguous" if out else "C-contiguous"
        dtype = str(cnp.PyArray_DescrFromType(tn)) + (" (x's dtype)" if tn != cnp.NPY_INT64 and name != "x" else "")
        got = <object> a
        raise ValueError(f"{name} must be a {kind} {dtype} array of shape {shape}; got {got.dtype} of shape "
                         f"{got.shape} (C-contiguous: {bool(got.flags.c_contiguous)}, writable: "
                         f"{bool(got.flags.writeable)})")
    return 0


cdef inline int need_lengths(cnp.ndarray lengths, Py_ssize_t B, Py_ssize_t T) except -1:
    """lengths is (B,) int64 with every entry in [0, T]: the kernels index by them."""
    need("lengths", lengths, cnp.NPY_INT64, False, 1, B, -1, -1)
    cdef const int64_t* v = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef Py_ssize_t k
    for k in range(B):
        if v[k] < 0 or v[k] > T:
            raise ValueError(f"lengths must lie in [0, timesteps={T}]; got {v[k]} at row {k}")
    return 0


cdef inline int need_inputs(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates,
                            Py_ssize_t* dims) except -1:
    """x (B, T, D), W (D, gates*U) and R (U, gates*U) of one float type, checked; dims receives (B, T, D, U).
    Returns the type number: the forward's and the backward's other arrays must have it."""
    cdef int tn = float_type("x", x)
    need("x", x, tn, False, 3, -1, -1, -1)
    need("R", R, tn, False, 2, -1, -1, -1)
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    need("W", W, tn, False, 2, D, gates * U, -1)
    need("R", R, tn, False, 2, U, gates * U, -1)
    dims[0], dims[1], dims[2], dims[3] = B, T, D, U
    return tn


cdef inline int need_forward(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates, cnp.ndarray h0,
                             cnp.ndarray lengths, cnp.ndarray y, cnp.ndarray hT, Py_ssize_t* dims) except -1:
    """The arguments every forward entry takes, checked (x, W (D, gates*U), R (U, gates*U), h0, lengths, y, hT);
    dims receives (B, T, D, U). Returns the type number of the float arrays."""
    cdef int tn = need_inputs(x, W, R, gates, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], U = dims[3]
    need("h0", h0, tn, False, 2, B, U, -1)
    need_lengths(lengths, B, T)
    need("y", y, tn, True, 3, B, T, U)
    need("hT", hT, tn, True, 2, B, U, -1)
    return tn


cdef inline int need_backward(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates,
                              cnp.ndarray lengths, cnp.ndarray dy, cnp.ndarray dhT, cnp.ndarray dx,
                              cnp.ndarray dh0, cnp.ndarray dW, cnp.ndarray dR, Py_ssize_t* dims) except -1:
    """The arguments every backward entry takes, checked (the forward's x, W, R, lengths; dy, dhT; the outputs dx,
    dh0, dW, dR); dims receives (B, T, D, U). Returns the type number of the float arrays."""
    cdef int tn = need_inputs(x, W, R, gates, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3]
    need_lengths(lengths, B, T)
    need("dy", dy, tn, False, 3, B, T, U)
    need("dhT", dhT, tn, False, 2, B, U, -1)
    need("dx", dx, tn, True, 3, B, T, D)
    need("dh0", dh0, tn, True, 2, B, U, -1)
    need("dW", dW, tn, True, 2, D, gates * U, -1)
    need("dR", dR, tn, True, 2, U, gates * U, -1)
    return tn


cdef inline object new_packed(int tn, Py_ssize_t n, void** data):
    """A 1-D array of n elements of type tn starting at a 64-byte boundary (a view into one a little larger), for
    a <cell>_pack entry's packed weights; data[0] receives its start."""
    cdef Py_ssize_t item = 4 if tn == cnp.NPY_FLOAT32 else 8
    cdef cnp.npy_intp size = n + 64 // item
    arr = cnp.PyArray_EMPTY(1, &size, tn, 0)
    cdef Py_ssize_t skip = ((64 - <size_t> cnp.PyArray_DATA(arr) % 64) % 64) // item
    view = arr[skip:skip + n]
    data[0] = cnp.PyArray_DATA(view)
    return view


cdef inline int need_weights(cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates, Py_ssize_t* DU) except -1:
    """W (D, gates*U) and R (U, gates*U) of one float type, checked (the <cell>_pack entries); DU receives (D, U).
    Returns the type number."""
    cdef int tn = float_type("W", W)
    need("R", R, tn, False, 2, -1, -1, -1)
    cdef Py_ssize_t U = R.shape[0]
    need("W", W, tn, False, 2, -1, gates * U, -1)
    need("R", R, tn, False, 2, U, gates * U, -1)
    DU[0], DU[1] = W.shape[0], U
    return tn


cdef inline Py_ssize_t pair_elements(Py_ssize_t D, Py_ssize_t U, Py_ssize_t N, Py_ssize_t item) noexcept nogil:
    """Elements of pack_pair's array: W (D, N) packed, then R (U, N) packed."""
    return packed_size(D, N, item) + packed_size(U, N, item)


cdef inline object pack_pair(cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates):
    """The <cell>_pack entry of a cell whose forward packs W (D, gates*U) and R (U, gates*U) whole: W packed, R
    packed right after it (pair_elements), in an array new_packed makes."""
    cdef Py_ssize_t DU[2]
    cdef int tn = need_weights(W, R, gates, DU)
    cdef void* data
    out = new_packed(tn, pair_elements(DU[0], DU[1], gates * DU[1], cnp.PyArray_ITEMSIZE(W)), &data)
    pack_pair_at(W, R, gates, data)
    return out


cdef inline void* align64(void* room) noexcept nogil:
    """The first 64-byte boundary at or after room (room holds 64 bytes more than it needs for that)."""
    return <void*> ((<size_t> room + 63) // 64 * 64)


cdef inline int pack_pair_at(cnp.ndarray W, cnp.ndarray R, Py_ssize_t gates, void* data) except -1:
    """pack_pair's layout at data (a 64-byte boundary, pair_elements elements): W and R checked by the caller's
    entry (float32 or float64 alike, W (D, gates*U), R (U, gates*U))."""
    cdef Py_ssize_t D = W.shape[0], U = R.shape[0], N = gates * R.shape[0], item = cnp.PyArray_ITEMSIZE(W)
    cdef Py_ssize_t nW = packed_size(D, N, item)
    cdef int tn = cnp.PyArray_TYPE(W)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            pack(<const float*> cnp.PyArray_DATA(W), N, D, N, <float*> data)
            pack(<const float*> cnp.PyArray_DATA(R), N, U, N, <float*> data + nW)
        else:
            pack(<const double*> cnp.PyArray_DATA(W), N, D, N, <double*> data)
            pack(<const double*> cnp.PyArray_DATA(R), N, U, N, <double*> data + nW)
    return 0


cdef inline void* need_packed(object packed, int tn, Py_ssize_t n) except NULL:
    """The start of `packed`, the weights a <cell>_pack entry packed for this call's dtype and shapes: a 1-D
    C-contiguous array of tn and n elements starting at a 64-byte boundary (a copy of it may start elsewhere:
    its panels would be misaligned, so it is refused). Its values cannot be checked here: fastrnn.ops packs again
    whenever the weights may have changed."""
    if not isinstance(packed, cnp.ndarray):
        raise TypeError(f"packed must be the array of a <cell>_pack entry or None; got {type(packed).__name__}")
    need("packed", <cnp.ndarray> packed, tn, False, 1, n, -1, -1)
    cdef void* data = cnp.PyArray_DATA(packed)
    if <size_t> data % 64:
        raise ValueError("packed must start at a 64-byte boundary, as a <cell>_pack entry makes it (a copy of "
                         "the array may not): pack the weights again")
    return data


cdef enum:
    SMALL_SCRATCH = 512  # doubles: a 4 KB buffer on the caller's stack
    KEEP_SCRATCH_BYTES = 256 << 10  # fastrnn.kernels.KEEP_SCRATCH_BYTES


cdef inline Py_ssize_t total(const Py_ssize_t* sizes, int parts) noexcept nogil:
    """Elements of a scratch block made of `parts` parts of the given sizes."""
    cdef Py_ssize_t n = 0
    cdef int k
    for k in range(parts):
        n += sizes[k]
    return n


cdef inline object scratch(double* small, int tn, Py_ssize_t n, void** data):
    """Room for n elements of type tn at data[0]: `small` (SMALL_SCRATCH doubles on the caller's stack) when they
    fit, else a new array (numpy's allocator: huge pages for large blocks), or from KEEP_SCRATCH_BYTES this
    thread's kept block (fastrnn.kernels.kept_scratch: no page faults), returned for the caller to hold."""
    cdef Py_ssize_t nbytes = n * (4 if tn == cnp.NPY_FLOAT32 else 8)
    if nbytes <= <Py_ssize_t> (SMALL_SCRATCH * sizeof(double)):
        data[0] = small
        return None
    if nbytes >= KEEP_SCRATCH_BYTES:
        from fastrnn.kernels import kept_scratch
        block = kept_scratch(nbytes)
        data[0] = cnp.PyArray_DATA(<cnp.ndarray> block)
        return block
    cdef cnp.npy_intp size = n
    arr = cnp.PyArray_EMPTY(1, &size, tn, 0)
    data[0] = cnp.PyArray_DATA(arr)
    return arr


# ---------------------------------------------------------------------------------------------------------------
# Row blocks on several threads (a forward's `bounds`): the blocks run on the kept threads of the column-split
# module's pool (kernels/cython_threaded.pyx, fr_parallel), handed over in C. fastrnn.threads' Python pool hands
# each block over through the GIL, whose waiter sleeps: ~0.1 ms of a 0.65 ms call (SimpleRNN 128/16, 2 threads).
# ---------------------------------------------------------------------------------------------------------------

ctypedef void (*row_task)(void* ctx, int k) noexcept nogil
ctypedef int (*parallel_fn)(int n, row_task fn, void* ctx) noexcept nogil

cdef extern from *:
    """
    /* The next unclaimed block of a call's row blocks (threads claim them as they get free). */
    static inline int fr_next_block(int* next) {
    #if defined(__GNUC__)
        return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
    #else
        return (*next)++;   /* no threads without GCC atomics (fr_parallel then runs one) */
    #endif
    }
    """
    int fr_next_block(int* next) noexcept nogil


cdef inline parallel_fn row_pool() except? NULL:
    """fr_parallel of the column-split module this CPU uses, or NULL where it is not built."""
    try:
        from fastrnn.kernels import cython_module
        cap = cython_module("cython_threaded")._parallel_capsule()
    except (ImportError, AttributeError):
        return NULL
    return <parallel_fn> PyCapsule_GetPointer(cap, b"fastrnn.fr_parallel")


cdef inline int need_bounds(cnp.ndarray bounds, Py_ssize_t B) except -1:
    """bounds: int64 [0, b1, ..., B], increasing, at least two blocks."""
    cdef Py_ssize_t k, n
    cdef const int64_t* v
    if cnp.PyArray_TYPE(bounds) != cnp.NPY_INT64 or cnp.PyArray_NDIM(bounds) != 1 or \
            not cnp.PyArray_ISCARRAY_RO(bounds) or bounds.shape[0] < 3:
        raise ValueError(f"bounds must be a C-contiguous int64 array [0, ..., batch={B}] of 3 or more entries")
    n = bounds.shape[0]
    v = <const int64_t*> cnp.PyArray_DATA(bounds)
    if v[0] != 0 or v[n - 1] != B:
        raise ValueError(f"bounds must start at 0 and end at batch={B}")
    for k in range(n - 1):
        if v[k + 1] <= v[k]:
            raise ValueError("bounds must be strictly increasing")
    return 0


cdef struct row_blocks:
    # A forward in row blocks: block k is rows [bounds[k], bounds[k+1]), a forward of its own (the kernel contract
    # holds for any rows of the batch-major arrays) with W and R packed once for all (`packed`), its scratch at
    # work + offsets[k] (elements); the threads claim blocks in turn (fr_next_block). Each cell's task reads the
    # fields it has (c0 / cT: LSTM; b2 = b_rec, flag = reset_after: GRU; flag = relu: SimpleRNN).
    const int64_t* bounds
    int n_blocks
    int next
    Py_ssize_t T, D, U
    bint reverse, training, flag
    const void* x
    const void* W
    const void* R
    const void* b
    const void* b2
    const void* h0
    const void* c0
    const int64_t* lengths
    void* y
    void* hT
    void* cT
    void* ws[4]
    void* packed
    void* work
    const Py_ssize_t* offsets


cdef inline void* data_or_null(cnp.ndarray a, bint use) noexcept:
    return cnp.PyArray_DATA(a) if use else NULL


cdef inline int start_row_blocks(row_blocks* c, cnp.ndarray bounds, cnp.ndarray x, cnp.ndarray W, cnp.ndarray R,
                                 cnp.ndarray h0, cnp.ndarray lengths, bint reverse, bint training, cnp.ndarray y,
                                 cnp.ndarray hT) except -1:
    """The fields every cell's row blocks have (bounds checked); the rest is the cell's."""
    need_bounds(bounds, x.shape[0])
    c.bounds = <const int64_t*> cnp.PyArray_DATA(bounds)
    c.n_blocks = <int> bounds.shape[0] - 1
    c.next = 0
    c.T, c.D, c.U = x.shape[1], x.shape[2], R.shape[0]
    c.reverse, c.training, c.flag = reverse, training, False
    c.x, c.W, c.R = cnp.PyArray_DATA(x), cnp.PyArray_DATA(W), cnp.PyArray_DATA(R)
    c.b = c.b2 = c.c0 = NULL
    c.h0, c.lengths = cnp.PyArray_DATA(h0), <const int64_t*> cnp.PyArray_DATA(lengths)
    c.y, c.hT, c.cT = cnp.PyArray_DATA(y), cnp.PyArray_DATA(hT), NULL
    c.ws[0] = c.ws[1] = c.ws[2] = c.ws[3] = NULL
    return 0


cdef inline Py_ssize_t given_packed(row_blocks* c, object packed, int tn, Py_ssize_t n) except -1:
    """c.packed = `packed` (a <cell>_pack array of n elements, checked) and 0; or, with packed None, the elements the
    call's scratch needs to pack W and R itself: n, and room to start them at a 64-byte boundary (row_blocks_scratch
    places them there; a kept block from KEEP_SCRATCH_BYTES, where a new array was faulted in page by page)."""
    if packed is not None:
        c.packed = need_packed(packed, tn, n)
        return 0
    c.packed = NULL
    return n + 64 // (4 if tn == cnp.NPY_FLOAT32 else 8)


cdef inline object row_blocks_scratch(row_blocks* c, int tn, Py_ssize_t n_pack, Py_ssize_t[::1] off,
                                      double* small):
    """One allocation for the blocks' scratch (block k's at c.work + off[k], elements) after n_pack elements for W
    and R packed (given_packed; 0: given), whose 64-byte-aligned start goes to c.packed. The caller holds the object
    returned, and `small` (its stack buffer, SMALL_SCRATCH doubles), while the blocks run."""
    held = scratch(small, tn, n_pack + off[c.n_blocks], &c.work)
    if n_pack:
        c.packed = align64(c.work)
        c.work = <char*> c.work + n_pack * (4 if tn == cnp.NPY_FLOAT32 else 8)
    c.offsets = &off[0]
    return held


cdef inline int run_row_blocks(row_blocks* c, int n_threads, row_task task) except -1:
    """task on min(n_threads, blocks) threads of the pool (row_pool); on this thread alone, all blocks, where the
    pool is not built or is busy. GIL released."""
    cdef parallel_fn pool = row_pool()
    cdef int n = min(n_threads, c.n_blocks), status = -1
    with nogil:
        if pool != NULL:
            status = pool(n, task, c)
        if status != 0:
            task(c, 0)
    return 0
