# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LSTM forward and BPTT, Cython + BLAS, GIL released. Contract: kernels/README.md.

    a = x_t W + h_{t-1} R + b  ->  i, f, o = sigmoid(a_i, a_f, a_o),  g = tanh(a_c)
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)          (gate columns in the order i, f, c, o)
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from array_args cimport (SMALL_SCRATCH, data_or_null, fr_next_block, given_packed, need, need_backward, need_forward,
                         need_packed, pack_pair, pack_pair_at, pair_elements, row_blocks, row_blocks_scratch,
                         run_row_blocks, scratch, start_row_blocks, total)
from fused_blas cimport (active_inputs, active_rows, backward_scratch, column_sums, flush_denormals,
                         forward_scratch, fr_isa, lstm_backward_row, lstm_row, max_length, pack_for,
                         packed_size, packed_weights, panels_backward, position, product, restore_fp_mode,
                         step_preactivations, weight_grads, zero_padding)

cnp.import_array()


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

def lstm_forward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None, cnp.ndarray b not None,
                 cnp.ndarray h0 not None, cnp.ndarray c0 not None, cnp.ndarray lengths not None, bint reverse,
                 bint training, cnp.ndarray y not None, cnp.ndarray hT not None, cnp.ndarray cT not None,
                 cnp.ndarray ws_hprev not None, cnp.ndarray ws_cprev not None, cnp.ndarray ws_gates not None,
                 cnp.ndarray ws_c not None, packed=None, bounds=None, int n_threads=1):
    # ndarray arguments, checked by array_args: a call costs ~0.7 us here (T=1 layer calls are ~6 us in all)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_forward(x, W, R, 4, h0, lengths, y, hT, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3], G = 4 * U
    need("b", b, tn, False, 1, G, -1, -1)
    need("c0", c0, tn, False, 2, B, U, -1)
    need("cT", cT, tn, True, 2, B, U, -1)
    if training:  # else ignored (the contract: they may have size 0)
        need("ws_hprev", ws_hprev, tn, True, 3, B, T, U)
        need("ws_cprev", ws_cprev, tn, True, 3, B, T, U)
        need("ws_gates", ws_gates, tn, True, 3, B, T, G)
        need("ws_c", ws_c, tn, True, 3, B, T, U)
    if bounds is not None and n_threads > 1:
        # Row blocks [bounds[k], bounds[k+1]) on n_threads threads (kernels/README.md, "Row blocks")
        _forward_rows(x, W, R, b, h0, c0, lengths, reverse, training, y, hT, cT, ws_hprev, ws_cprev, ws_gates,
                      ws_c, packed, bounds, n_threads, tn)
        return
    # Scratch, once per call, in one block (its parts: fused_blas.forward_scratch); NULL for what is not packed.
    # With `packed` (lstm_pack's W and R) nothing is packed here.
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef Py_ssize_t n_steps = max_length(<const int64_t*> cnp.PyArray_DATA(lengths), B)
    cdef Py_ssize_t sizes[4]
    cdef void* given = NULL
    if packed is not None:
        given = need_packed(packed, tn, pair_elements(D, U, G, item))
    cdef bint per_step = forward_scratch(sizes, B, T, D, U, G, n_steps, item, given != NULL)
    cdef double small[SMALL_SCRATCH]
    cdef void* work
    held = scratch(small, tn, total(sizes, 4), &work)
    if tn == cnp.NPY_FLOAT32:
        _forward_arrays(<float*> work, sizes, <float*> given, per_step, x, W, R, b, h0, c0, lengths, reverse,
                        training, y, hT, cT, ws_hprev, ws_cprev, ws_gates, ws_c)
    else:
        _forward_arrays(<double*> work, sizes, <double*> given, per_step, x, W, R, b, h0, c0, lengths, reverse,
                        training, y, hT, cT, ws_hprev, ws_cprev, ws_gates, ws_c)


cdef object _forward_rows(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, cnp.ndarray b, cnp.ndarray h0,
                          cnp.ndarray c0, cnp.ndarray lengths, bint reverse, bint training, cnp.ndarray y,
                          cnp.ndarray hT, cnp.ndarray cT, cnp.ndarray ws_hprev, cnp.ndarray ws_cprev,
                          cnp.ndarray ws_gates, cnp.ndarray ws_c, packed, cnp.ndarray bounds, int n_threads, int tn):
    """lstm_forward in row blocks on n_threads threads (array_args.row_blocks), W and R packed once for all."""
    cdef row_blocks c
    start_row_blocks(&c, bounds, x, W, R, h0, lengths, reverse, training, y, hT)
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, G = 4 * U, item = cnp.PyArray_ITEMSIZE(x), k, b0, bk, sizes[4]
    # W and R packed once for all blocks: `packed`, or packed by this call into its scratch (given_packed)
    cdef Py_ssize_t n_pack = given_packed(&c, packed, tn, pair_elements(D, U, G, item))
    c.b, c.c0, c.cT = cnp.PyArray_DATA(b), cnp.PyArray_DATA(c0), cnp.PyArray_DATA(cT)
    c.ws[0], c.ws[1] = data_or_null(ws_hprev, training), data_or_null(ws_cprev, training)
    c.ws[2], c.ws[3] = data_or_null(ws_gates, training), data_or_null(ws_c, training)
    # every block's scratch (forward_scratch for its rows, W and R given) in one allocation
    offsets = np.empty(c.n_blocks + 1, np.intp)
    cdef Py_ssize_t[::1] off = offsets
    off[0] = 0
    for k in range(c.n_blocks):
        b0, bk = c.bounds[k], c.bounds[k + 1] - c.bounds[k]
        forward_scratch(sizes, bk, T, D, U, G, max_length(c.lengths + b0, bk), item, True)
        off[k + 1] = off[k] + total(sizes, 2)
    cdef double small[SMALL_SCRATCH]
    held = row_blocks_scratch(&c, tn, n_pack, off, small)
    if n_pack:
        pack_pair_at(W, R, 4, c.packed)
    run_row_blocks(&c, n_threads, _rows_task_f32 if tn == cnp.NPY_FLOAT32 else _rows_task_f64)
    return held


cdef void _rows_task_f32(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <float*> NULL)


cdef void _rows_task_f64(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <double*> NULL)


cdef void _rows_task(row_blocks* c, floating* dtype) noexcept nogil:
    """The blocks this thread claims, each a _forward of its own rows (FTZ/DAZ set for this thread)."""
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, G = 4 * U, b0, bk, sizes[4]
    cdef int j
    cdef bint per_step
    cdef floating* xw
    cdef floating* Wp = <floating*> c.packed
    cdef floating* Rp = Wp + packed_size(D, G, sizeof(floating))
    cdef floating* ws[4]
    cdef unsigned int fp_mode = flush_denormals()
    while True:
        j = fr_next_block(&c.next)
        if j >= c.n_blocks:
            break
        b0, bk = c.bounds[j], c.bounds[j + 1] - c.bounds[j]
        per_step = forward_scratch(sizes, bk, T, D, U, G, max_length(c.lengths + b0, bk), sizeof(floating), True)
        xw = <floating*> c.work + c.offsets[j]
        ws[0] = ws[1] = ws[2] = ws[3] = NULL
        if c.training:
            ws[0] = <floating*> c.ws[0] + b0 * T * U
            ws[1] = <floating*> c.ws[1] + b0 * T * U
            ws[2] = <floating*> c.ws[2] + b0 * T * G
            ws[3] = <floating*> c.ws[3] + b0 * T * U
        _forward(bk, T, D, U, <const floating*> c.x + b0 * T * D, <const floating*> c.W, <const floating*> c.R,
                 <const floating*> c.b, <const floating*> c.h0 + b0 * U, <const floating*> c.c0 + b0 * U,
                 c.lengths + b0, c.reverse, <floating*> c.y + b0 * T * U, <floating*> c.hT + b0 * U,
                 <floating*> c.cT + b0 * U, ws[0], ws[1], ws[2], ws[3], xw, xw + sizes[0], Wp, Rp, True, per_step)
    restore_fp_mode(fp_mode)


def lstm_pack(cnp.ndarray W not None, cnp.ndarray R not None):
    """W (D, 4U) and R (U, 4U) packed into panels once, for lstm_forward's `packed`: a forward given it skips
    its own packing of both (kernels/README.md, "Packed weights")."""
    return pack_pair(W, R, 4)


cdef void _forward_arrays(floating* xw, const Py_ssize_t* sizes, floating* given, bint per_step, cnp.ndarray x,
                          cnp.ndarray W, cnp.ndarray R, cnp.ndarray b, cnp.ndarray h0, cnp.ndarray c0,
                          cnp.ndarray lengths, bint reverse, bint training, cnp.ndarray y, cnp.ndarray hT,
                          cnp.ndarray cT, cnp.ndarray ws_hprev, cnp.ndarray ws_cprev, cnp.ndarray ws_gates,
                          cnp.ndarray ws_c):
    """_forward on the checked arrays' data; the scratch block at xw holds xw (or, per_step, one step's inputs),
    hr, W packed, R packed (`sizes`), unless `given` holds W and R packed (lstm_pack)."""
    cdef floating* hr = xw + sizes[0]
    cdef floating* Wbuf = hr + sizes[1] if sizes[2] else NULL
    cdef floating* Rbuf = hr + sizes[1] + sizes[2] if sizes[3] else NULL
    if given != NULL:
        Wbuf = given
        Rbuf = given + packed_size(x.shape[2], 4 * R.shape[0], sizeof(floating))
    cdef floating* ws[4]  # NULL in inference mode, where the workspaces may have size 0
    ws[0] = ws[1] = ws[2] = ws[3] = NULL
    if training:
        ws[0] = <floating*> cnp.PyArray_DATA(ws_hprev)
        ws[1] = <floating*> cnp.PyArray_DATA(ws_cprev)
        ws[2] = <floating*> cnp.PyArray_DATA(ws_gates)
        ws[3] = <floating*> cnp.PyArray_DATA(ws_c)
    cdef unsigned int fp_mode
    with nogil:
        fp_mode = flush_denormals()  # fused_blas, "Denormals"
        _forward(x.shape[0], x.shape[1], x.shape[2], R.shape[0], <floating*> cnp.PyArray_DATA(x),
                 <floating*> cnp.PyArray_DATA(W), <floating*> cnp.PyArray_DATA(R), <floating*> cnp.PyArray_DATA(b),
                 <floating*> cnp.PyArray_DATA(h0), <floating*> cnp.PyArray_DATA(c0),
                 <const int64_t*> cnp.PyArray_DATA(lengths), reverse, <floating*> cnp.PyArray_DATA(y),
                 <floating*> cnp.PyArray_DATA(hT), <floating*> cnp.PyArray_DATA(cT), ws[0], ws[1], ws[2], ws[3],
                 xw, hr, Wbuf, Rbuf, given != NULL, per_step)
        restore_fp_mode(fp_mode)


cdef void _forward(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                   const floating* x, const floating* W, const floating* R, const floating* bias,
                   const floating* h0, const floating* c0, const int64_t* lengths, bint reverse,
                   floating* y, floating* h, floating* c,
                   floating* ws_hprev, floating* ws_cprev, floating* ws_gates, floating* ws_c,
                   floating* xw, floating* hr, floating* Wbuf, floating* Rbuf, bint prepacked,
                   bint per_step) noexcept nogil:
    # The ws_* are NULL in inference mode. The running states live in the outputs hT, cT (= h, c):
    # inactive rows are not written, so they end as each row's states after its own last step.
    # per_step (fused_blas.step_projection_pays; W and R packed): x W is added per step in the product with R,
    # and xw holds that step's inputs when they must be gathered (step_preactivations).
    cdef Py_ssize_t s, bb, t, j, lo, hi, n_steps, pos, G = 4 * U
    cdef bint training = ws_hprev != NULL
    cdef int isa = fr_isa()
    cdef const floating* Wp
    cdef const floating* Rp
    cdef floating* a
    cdef floating* hrow
    cdef floating* crow
    cdef floating* yrow

    memcpy(h, h0, B * U * sizeof(floating))
    memcpy(c, c0, B * U * sizeof(floating))
    zero_padding(y, lengths, B, T, U)
    if training:
        # Padded positions hold zeros whatever the caller allocated, so backward's all-steps matmuls add 0.
        zero_padding(ws_hprev, lengths, B, T, U)
        zero_padding(ws_cprev, lengths, B, T, U)
        zero_padding(ws_gates, lengths, B, T, G)
        zero_padding(ws_c, lengths, B, T, U)
    n_steps = max_length(lengths, B)
    if n_steps == 0:
        return

    Wp = packed_weights(W, G, D, G, Wbuf, prepacked)
    Rp = packed_weights(R, G, U, G, Rbuf, prepacked)
    if not per_step:
        product(B * T, D, x, D, W, G, False, Wp, G, xw, G, isa)

    for s in range(n_steps):
        active_rows(lengths, B, s, &lo, &hi)
        # hr = h @ R (+ x_t @ W per step; all four gates at once) for the block of rows holding the active ones
        step_preactivations(per_step, x, T, D, lengths, lo, hi, s, reverse, Wp, h, U, R, Rp, G, hr, xw, isa)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            hrow = h + bb * U
            crow = c + bb * U
            yrow = y + pos * U
            if training:
                memcpy(ws_hprev + pos * U, hrow, U * sizeof(floating))
                memcpy(ws_cprev + pos * U, crow, U * sizeof(floating))
            # a = hr row + xw row + b, activated in place (i, f | g | o); the new c and h (fused_blas.lstm_row)
            a = hr + bb * G
            lstm_row(a, NULL if per_step else xw + pos * G, bias, U, crow, hrow)
            memcpy(yrow, hrow, U * sizeof(floating))
            if training:
                memcpy(ws_gates + pos * G, a, G * sizeof(floating))
                memcpy(ws_c + pos * U, crow, U * sizeof(floating))


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

def lstm_backward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None,
                  cnp.ndarray lengths not None, bint reverse, cnp.ndarray ws_hprev not None,
                  cnp.ndarray ws_cprev not None, cnp.ndarray ws_gates not None, cnp.ndarray ws_c not None,
                  cnp.ndarray dy not None, cnp.ndarray dhT not None, cnp.ndarray dcT not None,
                  cnp.ndarray dx not None, cnp.ndarray dh0 not None, cnp.ndarray dc0 not None,
                  cnp.ndarray dW not None, cnp.ndarray dR not None, cnp.ndarray db not None):
    # ndarray arguments, checked by array_args (as the forward's)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_backward(x, W, R, 4, lengths, dy, dhT, dx, dh0, dW, dR, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3], G = 4 * U
    need("ws_hprev", ws_hprev, tn, False, 3, B, T, U)
    need("ws_cprev", ws_cprev, tn, False, 3, B, T, U)
    need("ws_gates", ws_gates, tn, False, 3, B, T, G)
    need("ws_c", ws_c, tn, False, 3, B, T, U)
    need("dcT", dcT, tn, False, 2, B, U, -1)
    need("dc0", dc0, tn, True, 2, B, U, -1)
    need("db", db, tn, True, 1, G, -1, -1)
    # Scratch, once per call, in one block (its parts: fused_blas.backward_scratch), and a double accumulator per
    # gate column (fused_blas.column_sums).
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef Py_ssize_t sizes[7]
    backward_scratch(sizes, B, T, D, U, G, lens, item)
    cdef double small[SMALL_SCRATCH]
    cdef double small_acc[SMALL_SCRATCH]
    cdef void* work
    cdef void* acc
    held = scratch(small, tn, total(sizes, 7), &work)
    held_acc = scratch(small_acc, cnp.NPY_FLOAT64, G, &acc)
    if tn == cnp.NPY_FLOAT32:
        _backward_arrays(<float*> work, sizes, <double*> acc, x, W, R, lengths, reverse, ws_hprev, ws_cprev,
                         ws_gates, ws_c, dy, dhT, dcT, dx, dh0, dc0, dW, dR, db)
    else:
        _backward_arrays(<double*> work, sizes, <double*> acc, x, W, R, lengths, reverse, ws_hprev, ws_cprev,
                         ws_gates, ws_c, dy, dhT, dcT, dx, dh0, dc0, dW, dR, db)


cdef void _backward_arrays(floating* da, const Py_ssize_t* sizes, double* acc, cnp.ndarray x, cnp.ndarray W,
                           cnp.ndarray R, cnp.ndarray lengths, bint reverse, cnp.ndarray ws_hprev,
                           cnp.ndarray ws_cprev, cnp.ndarray ws_gates, cnp.ndarray ws_c, cnp.ndarray dy,
                           cnp.ndarray dhT, cnp.ndarray dcT, cnp.ndarray dx, cnp.ndarray dh0, cnp.ndarray dc0,
                           cnp.ndarray dW, cnp.ndarray dR, cnp.ndarray db):
    """_backward on the checked arrays' data; the scratch block at da holds da, da_step, dhr, R.T packed, W.T
    packed, weight_grads' work, x_active (`sizes`)."""
    cdef floating* da_step = da + sizes[0]
    cdef floating* dhr = da_step + sizes[1]
    cdef floating* RTbuf = dhr + sizes[2] if sizes[3] else NULL
    cdef floating* WTbuf = dhr + sizes[2] + sizes[3] if sizes[4] else NULL
    cdef floating* wg = dhr + sizes[2] + sizes[3] + sizes[4]
    cdef floating* x_active = wg + sizes[5] if sizes[6] else NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef const floating* xa
    cdef unsigned int fp_mode
    with nogil:
        fp_mode = flush_denormals()
        xa = active_inputs(<floating*> cnp.PyArray_DATA(x), lens, B, T, D, x_active)
        _backward(B, T, D, U, xa, <floating*> cnp.PyArray_DATA(W), <floating*> cnp.PyArray_DATA(R), WTbuf, RTbuf,
                  lens, reverse, <floating*> cnp.PyArray_DATA(ws_hprev), <floating*> cnp.PyArray_DATA(ws_cprev),
                  <floating*> cnp.PyArray_DATA(ws_gates), <floating*> cnp.PyArray_DATA(ws_c),
                  <floating*> cnp.PyArray_DATA(dy), <floating*> cnp.PyArray_DATA(dhT),
                  <floating*> cnp.PyArray_DATA(dcT), <floating*> cnp.PyArray_DATA(dx),
                  <floating*> cnp.PyArray_DATA(dh0), <floating*> cnp.PyArray_DATA(dc0),
                  <floating*> cnp.PyArray_DATA(dW), <floating*> cnp.PyArray_DATA(dR),
                  <floating*> cnp.PyArray_DATA(db), da, da_step, dhr, acc, wg)
        restore_fp_mode(fp_mode)


cdef void _backward(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                    const floating* x, const floating* W, const floating* R, floating* WTbuf, floating* RTbuf,
                    const int64_t* lengths,
                    bint reverse, const floating* ws_hprev, const floating* ws_cprev,
                    const floating* ws_gates, const floating* ws_c,
                    const floating* dy, const floating* dhT, const floating* dcT,
                    floating* dx, floating* dh, floating* dc, floating* dW, floating* dR, floating* db,
                    floating* da, floating* da_step, floating* dhr, double* acc, floating* wg) noexcept nogil:
    # The running gradients w.r.t. the states live in the outputs dh0, dc0 (= dh, dc); inactive rows keep them.
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, G = 4 * U, BT = B * T, pos
    cdef int isa = fr_isa()
    cdef const floating* RTp
    cdef const floating* WTp
    cdef floating* darow

    memcpy(dh, dhT, B * U * sizeof(floating))
    memcpy(dc, dcT, B * U * sizeof(floating))
    zero_padding(da, lengths, B, T, G)  # padded positions add nothing to the matmuls after the loop
    n_steps = max_length(lengths, B)
    RTp = pack_for(R, G, G, U, True, RTbuf)

    for s in range(n_steps - 1, -1, -1):
        active_rows(lengths, B, s, &lo, &hi)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            darow = da_step + bb * G
            lstm_backward_row(ws_gates + pos * G, ws_cprev + pos * U, ws_c + pos * U, dy + pos * U, dh + bb * U,
                              dc + bb * U, darow, U, U)
            memcpy(da + pos * G, darow, G * sizeof(floating))
        # dh_prev = da @ R.T for the block of rows, kept for the active rows
        product(hi - lo, G, da_step + lo * G, G, R, G, True, RTp, U, dhr + lo * U, U, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] > s:
                memcpy(dh + bb * U, dhr + bb * U, U * sizeof(floating))

    # Weight and input gradients: a few large matmuls over all positions at once.
    weight_grads(BT, G, da, G, D, x, D, dW, U, ws_hprev, U, dR, G, wg, isa)   # dW = x^T da, dR = h_prev^T da
    WTp = pack_for(W, G, G, D, True, WTbuf)
    product(BT, G, da, G, W, G, True, WTp, D, dx, D, isa)
    zero_padding(dx, lengths, B, T, D)  # 0 already, unless W holds inf / NaN (0 * inf): padded inputs get no gradient
    column_sums(da, BT, G, G, acc, db)
