# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""SimpleRNN forward and BPTT, Cython + BLAS, GIL released. Contract: kernels/README.md.

    h_t = act(x_t W + h_{t-1} R + b),  act = tanh or relu
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
                         forward_scratch, fr_isa, max_length, pack_for, packed_size, packed_weights,
                         panels_backward, position, product, restore_fp_mode,
                         simple_rnn_backward_row, simple_rnn_row, step_preactivations, weight_grads, zero_padding)

cnp.import_array()


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

def simple_rnn_forward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None,
                       cnp.ndarray b not None, cnp.ndarray h0 not None, cnp.ndarray lengths not None,
                       bint reverse, bint relu, bint training, cnp.ndarray y not None, cnp.ndarray hT not None,
                       cnp.ndarray ws_hprev not None, cnp.ndarray ws_h not None, packed=None, bounds=None,
                       int n_threads=1):
    # ndarray arguments, checked by array_args: a call costs ~0.7 us here (T=1 layer calls are ~6 us in all)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_forward(x, W, R, 1, h0, lengths, y, hT, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3]
    need("b", b, tn, False, 1, U, -1, -1)
    if training:  # else ignored (the contract: they may have size 0)
        need("ws_hprev", ws_hprev, tn, True, 3, B, T, U)
        need("ws_h", ws_h, tn, True, 3, B, T, U)
    if bounds is not None and n_threads > 1:
        # Row blocks [bounds[k], bounds[k+1]) on n_threads threads (kernels/README.md, "Row blocks")
        _forward_rows(x, W, R, b, h0, lengths, reverse, relu, training, y, hT, ws_hprev, ws_h, packed, bounds,
                      n_threads, tn)
        return
    # Scratch, once per call, in one block (its parts: fused_blas.forward_scratch); NULL for what is not packed.
    # With `packed` (simple_rnn_pack's W and R) nothing is packed here.
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef Py_ssize_t n_steps = max_length(<const int64_t*> cnp.PyArray_DATA(lengths), B)
    cdef Py_ssize_t sizes[4]
    cdef void* given = NULL
    if packed is not None:
        given = need_packed(packed, tn, pair_elements(D, U, U, item))
    cdef bint per_step = forward_scratch(sizes, B, T, D, U, U, n_steps, item, given != NULL)
    cdef double small[SMALL_SCRATCH]
    cdef void* work
    held = scratch(small, tn, total(sizes, 4), &work)
    if tn == cnp.NPY_FLOAT32:
        _forward_arrays(<float*> work, sizes, <float*> given, per_step, x, W, R, b, h0, lengths, reverse, relu,
                        training, y, hT, ws_hprev, ws_h)
    else:
        _forward_arrays(<double*> work, sizes, <double*> given, per_step, x, W, R, b, h0, lengths, reverse, relu,
                        training, y, hT, ws_hprev, ws_h)


cdef object _forward_rows(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, cnp.ndarray b, cnp.ndarray h0,
                          cnp.ndarray lengths, bint reverse, bint relu, bint training, cnp.ndarray y,
                          cnp.ndarray hT, cnp.ndarray ws_hprev, cnp.ndarray ws_h, packed, cnp.ndarray bounds,
                          int n_threads, int tn):
    """simple_rnn_forward in row blocks on n_threads threads (array_args.row_blocks), W and R packed once."""
    cdef row_blocks c
    start_row_blocks(&c, bounds, x, W, R, h0, lengths, reverse, training, y, hT)
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, item = cnp.PyArray_ITEMSIZE(x), k, b0, bk, sizes[4]
    # W and R packed once for all blocks: `packed`, or packed by this call into its scratch (given_packed)
    cdef Py_ssize_t n_pack = given_packed(&c, packed, tn, pair_elements(D, U, U, item))
    c.b, c.flag = cnp.PyArray_DATA(b), relu
    c.ws[0], c.ws[1] = data_or_null(ws_hprev, training), data_or_null(ws_h, training)
    # every block's scratch (forward_scratch for its rows, W and R given) in one allocation
    offsets = np.empty(c.n_blocks + 1, np.intp)
    cdef Py_ssize_t[::1] off = offsets
    off[0] = 0
    for k in range(c.n_blocks):
        b0, bk = c.bounds[k], c.bounds[k + 1] - c.bounds[k]
        forward_scratch(sizes, bk, T, D, U, U, max_length(c.lengths + b0, bk), item, True)
        off[k + 1] = off[k] + total(sizes, 2)
    cdef double small[SMALL_SCRATCH]
    held = row_blocks_scratch(&c, tn, n_pack, off, small)
    if n_pack:
        pack_pair_at(W, R, 1, c.packed)
    run_row_blocks(&c, n_threads, _rows_task_f32 if tn == cnp.NPY_FLOAT32 else _rows_task_f64)
    return held


cdef void _rows_task_f32(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <float*> NULL)


cdef void _rows_task_f64(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <double*> NULL)


cdef void _rows_task(row_blocks* c, floating* dtype) noexcept nogil:
    """The blocks this thread claims, each a _forward of its own rows (FTZ/DAZ set for this thread)."""
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, b0, bk, sizes[4]
    cdef int j
    cdef bint per_step
    cdef floating* xw
    cdef floating* Wp = <floating*> c.packed
    cdef floating* Rp = Wp + packed_size(D, U, sizeof(floating))
    cdef floating* ws[2]
    cdef unsigned int fp_mode = flush_denormals()
    while True:
        j = fr_next_block(&c.next)
        if j >= c.n_blocks:
            break
        b0, bk = c.bounds[j], c.bounds[j + 1] - c.bounds[j]
        per_step = forward_scratch(sizes, bk, T, D, U, U, max_length(c.lengths + b0, bk), sizeof(floating), True)
        xw = <floating*> c.work + c.offsets[j]
        ws[0] = ws[1] = NULL
        if c.training:
            ws[0] = <floating*> c.ws[0] + b0 * T * U
            ws[1] = <floating*> c.ws[1] + b0 * T * U
        _forward(bk, T, D, U, <const floating*> c.x + b0 * T * D, <const floating*> c.W, <const floating*> c.R,
                 <const floating*> c.b, <const floating*> c.h0 + b0 * U, c.lengths + b0, c.reverse, c.flag,
                 <floating*> c.y + b0 * T * U, <floating*> c.hT + b0 * U, ws[0], ws[1], xw, xw + sizes[0], Wp, Rp,
                 True, per_step)
    restore_fp_mode(fp_mode)


def simple_rnn_pack(cnp.ndarray W not None, cnp.ndarray R not None):
    """W (D, U) and R (U, U) packed into panels once, for simple_rnn_forward's `packed`: a forward given it skips
    its own packing of both (kernels/README.md, "Packed weights")."""
    return pack_pair(W, R, 1)


cdef void _forward_arrays(floating* xw, const Py_ssize_t* sizes, floating* given, bint per_step, cnp.ndarray x,
                          cnp.ndarray W, cnp.ndarray R, cnp.ndarray b, cnp.ndarray h0, cnp.ndarray lengths,
                          bint reverse, bint relu, bint training, cnp.ndarray y, cnp.ndarray hT,
                          cnp.ndarray ws_hprev, cnp.ndarray ws_h):
    """_forward on the checked arrays' data; the scratch block at xw holds xw (or, per_step, one step's inputs),
    hr, W packed, R packed (`sizes`), unless `given` holds W and R packed (simple_rnn_pack)."""
    cdef floating* hr = xw + sizes[0]
    cdef floating* Wbuf = hr + sizes[1] if sizes[2] else NULL
    cdef floating* Rbuf = hr + sizes[1] + sizes[2] if sizes[3] else NULL
    if given != NULL:
        Wbuf = given
        Rbuf = given + packed_size(x.shape[2], R.shape[0], sizeof(floating))
    cdef floating* p_hprev = NULL  # NULL in inference mode, where the workspaces may have size 0
    cdef floating* p_h = NULL
    if training:
        p_hprev = <floating*> cnp.PyArray_DATA(ws_hprev)
        p_h = <floating*> cnp.PyArray_DATA(ws_h)
    cdef unsigned int fp_mode
    with nogil:
        fp_mode = flush_denormals()  # fused_blas, "Denormals"
        _forward(x.shape[0], x.shape[1], x.shape[2], R.shape[0], <floating*> cnp.PyArray_DATA(x),
                 <floating*> cnp.PyArray_DATA(W), <floating*> cnp.PyArray_DATA(R), <floating*> cnp.PyArray_DATA(b),
                 <floating*> cnp.PyArray_DATA(h0), <const int64_t*> cnp.PyArray_DATA(lengths), reverse, relu,
                 <floating*> cnp.PyArray_DATA(y), <floating*> cnp.PyArray_DATA(hT), p_hprev, p_h, xw, hr, Wbuf,
                 Rbuf, given != NULL, per_step)
        restore_fp_mode(fp_mode)


cdef void _forward(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                   const floating* x, const floating* W, const floating* R, const floating* bias,
                   const floating* h0, const int64_t* lengths, bint reverse, bint relu,
                   floating* y, floating* h, floating* ws_hprev, floating* ws_h,
                   floating* xw, floating* hr, floating* Wbuf, floating* Rbuf, bint prepacked,
                   bint per_step) noexcept nogil:
    # ws_hprev is NULL in inference mode. The running state lives in the output hT (= h): rows that are
    # inactive are simply not written, so it ends as each row's state after its own last step.
    # per_step: x W is added per step in the product with R, as in cython_lstm.
    cdef Py_ssize_t s, bb, t, j, lo, hi, n_steps, pos
    cdef int isa = fr_isa()
    cdef const floating* Wp
    cdef const floating* Rp
    cdef floating* a
    cdef floating* hrow

    memcpy(h, h0, B * U * sizeof(floating))
    zero_padding(y, lengths, B, T, U)
    if ws_hprev != NULL:
        # Padded positions hold zeros whatever the caller allocated, so backward's all-steps matmuls add 0.
        zero_padding(ws_hprev, lengths, B, T, U)
        zero_padding(ws_h, lengths, B, T, U)
    n_steps = max_length(lengths, B)
    if n_steps == 0:
        return

    Wp = packed_weights(W, U, D, U, Wbuf, prepacked)
    Rp = packed_weights(R, U, U, U, Rbuf, prepacked)
    if not per_step:
        product(B * T, D, x, D, W, U, False, Wp, U, xw, U, isa)

    for s in range(n_steps):
        active_rows(lengths, B, s, &lo, &hi)
        step_preactivations(per_step, x, T, D, lengths, lo, hi, s, reverse, Wp, h, U, R, Rp, U, hr, xw, isa)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            hrow = h + bb * U
            if ws_hprev != NULL:
                memcpy(ws_hprev + pos * U, hrow, U * sizeof(floating))
            a = hr + bb * U
            simple_rnn_row(a, NULL if per_step else xw + pos * U, bias, U, relu)  # the new h, in place
            memcpy(hrow, a, U * sizeof(floating))
            memcpy(y + pos * U, a, U * sizeof(floating))
            if ws_hprev != NULL:
                memcpy(ws_h + pos * U, a, U * sizeof(floating))


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

def simple_rnn_backward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None,
                        cnp.ndarray lengths not None, bint reverse, bint relu, cnp.ndarray ws_hprev not None,
                        cnp.ndarray ws_h not None, cnp.ndarray dy not None, cnp.ndarray dhT not None,
                        cnp.ndarray dx not None, cnp.ndarray dh0 not None, cnp.ndarray dW not None,
                        cnp.ndarray dR not None, cnp.ndarray db not None):
    # ndarray arguments, checked by array_args (as the forward's)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_backward(x, W, R, 1, lengths, dy, dhT, dx, dh0, dW, dR, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3]
    need("ws_hprev", ws_hprev, tn, False, 3, B, T, U)
    need("ws_h", ws_h, tn, False, 3, B, T, U)
    need("db", db, tn, True, 1, U, -1, -1)
    # Scratch, once per call, in one block (its parts: fused_blas.backward_scratch), and a double accumulator per
    # column (fused_blas.column_sums).
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef Py_ssize_t sizes[7]
    backward_scratch(sizes, B, T, D, U, U, lens, item)
    cdef double small[SMALL_SCRATCH]
    cdef double small_acc[SMALL_SCRATCH]
    cdef void* work
    cdef void* acc
    held = scratch(small, tn, total(sizes, 7), &work)
    held_acc = scratch(small_acc, cnp.NPY_FLOAT64, U, &acc)
    if tn == cnp.NPY_FLOAT32:
        _backward_arrays(<float*> work, sizes, <double*> acc, x, W, R, lengths, reverse, relu, ws_hprev, ws_h, dy,
                         dhT, dx, dh0, dW, dR, db)
    else:
        _backward_arrays(<double*> work, sizes, <double*> acc, x, W, R, lengths, reverse, relu, ws_hprev, ws_h, dy,
                         dhT, dx, dh0, dW, dR, db)


cdef void _backward_arrays(floating* da, const Py_ssize_t* sizes, double* acc, cnp.ndarray x, cnp.ndarray W,
                           cnp.ndarray R, cnp.ndarray lengths, bint reverse, bint relu, cnp.ndarray ws_hprev,
                           cnp.ndarray ws_h, cnp.ndarray dy, cnp.ndarray dhT, cnp.ndarray dx, cnp.ndarray dh0,
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
                  lens, reverse, relu, <floating*> cnp.PyArray_DATA(ws_hprev), <floating*> cnp.PyArray_DATA(ws_h),
                  <floating*> cnp.PyArray_DATA(dy), <floating*> cnp.PyArray_DATA(dhT),
                  <floating*> cnp.PyArray_DATA(dx), <floating*> cnp.PyArray_DATA(dh0),
                  <floating*> cnp.PyArray_DATA(dW), <floating*> cnp.PyArray_DATA(dR),
                  <floating*> cnp.PyArray_DATA(db), da, da_step, dhr, acc, wg)
        restore_fp_mode(fp_mode)


cdef void _backward(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                    const floating* x, const floating* W, const floating* R, floating* WTbuf, floating* RTbuf,
                    const int64_t* lengths,
                    bint reverse, bint relu, const floating* ws_hprev, const floating* ws_h,
                    const floating* dy, const floating* dhT,
                    floating* dx, floating* dh, floating* dW, floating* dR, floating* db,
                    floating* da, floating* da_step, floating* dhr, double* acc, floating* wg) noexcept nogil:
    # The running gradient w.r.t. the state lives in the output dh0 (= dh); inactive rows keep it.
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, BT = B * T
    cdef int isa = fr_isa()
    cdef const floating* RTp
    cdef const floating* WTp
    cdef floating* darow

    memcpy(dh, dhT, B * U * sizeof(floating))
    zero_padding(da, lengths, B, T, U)  # padded positions add nothing to the matmuls after the loop
    n_steps = max_length(lengths, B)
    RTp = pack_for(R, U, U, U, True, RTbuf)

    for s in range(n_steps - 1, -1, -1):
        active_rows(lengths, B, s, &lo, &hi)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            darow = da_step + bb * U
            simple_rnn_backward_row(ws_h + (bb * T + t) * U, dy + (bb * T + t) * U, dh + bb * U, darow, U, relu)
            memcpy(da + (bb * T + t) * U, darow, U * sizeof(floating))
        # dh_prev = da @ R.T for the block of rows, then kept for the active ones only
        product(hi - lo, U, da_step + lo * U, U, R, U, True, RTp, U, dhr + lo * U, U, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] > s:
                memcpy(dh + bb * U, dhr + bb * U, U * sizeof(floating))

    # Weight and input gradients: a few large matmuls over all positions at once.
    weight_grads(BT, U, da, U, D, x, D, dW, U, ws_hprev, U, dR, U, wg, isa)   # dW = x^T da, dR = h_prev^T da
    WTp = pack_for(W, U, U, D, True, WTbuf)
    product(BT, U, da, U, W, U, True, WTp, D, dx, D, isa)
    zero_padding(dx, lengths, B, T, D)  # 0 already, unless W holds inf / NaN (0 * inf): padded inputs get no gradient
    column_sums(da, BT, U, U, acc, db)
