# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GRU forward and BPTT, Cython + BLAS, GIL released. Contract: kernels/README.md. Gate columns z, r, h.

    reset_after=True : u = x_t W + b_in,  v = h_{t-1} R + b_rec
                       z = sigmoid(u_z + v_z),  r = sigmoid(u_r + v_r),  hh = tanh(u_h + r * v_h)
    reset_after=False: one bias b_in;  z, r as above with v = h_{t-1} R[:, :2U],  hh = tanh(u_h + (r * h_{t-1}) R_h)
    h_t = z * h_{t-1} + (1 - z) * hh
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from array_args cimport (SMALL_SCRATCH, data_or_null, fr_next_block, given_packed, need, need_backward, need_forward,
                         need_packed, need_weights, new_packed, pack_pair, pack_pair_at, pair_elements, row_blocks,
                         row_blocks_scratch, run_row_blocks, scratch, start_row_blocks, total)
from fused_blas cimport (active_inputs, active_rows, column_sums, flush_denormals, fr_isa, gru_backward_row,
                         gru_gates_row, gru_reset_backward_row1, gru_reset_backward_row2, gru_row, gru_state_row,
                         has_padding, max_length, pack, pack_for, pack_pays_rows, pack_pays_steps,
                         packed_elements, packed_matmul, packed_size, packed_weights, panels_backward, position,
                         product, restore_fp_mode, step_inputs, step_projection_pays, weight_grads,
                         weight_grads_work, zero_padding)

cnp.import_array()


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------

def gru_forward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None,
                cnp.ndarray b_in not None, cnp.ndarray b_rec not None, cnp.ndarray h0 not None,
                cnp.ndarray lengths not None, bint reverse, bint reset_after, bint training,
                cnp.ndarray y not None, cnp.ndarray hT not None, cnp.ndarray ws_hprev not None,
                cnp.ndarray ws_gates not None, cnp.ndarray ws_vh not None, packed=None, bounds=None,
                int n_threads=1):
    # ndarray arguments, checked by array_args: a call costs ~0.7 us here (T=1 layer calls are ~6 us in all)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_forward(x, W, R, 3, h0, lengths, y, hT, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3], G = 3 * U
    need("b_in", b_in, tn, False, 1, G, -1, -1)
    need("b_rec", b_rec, tn, False, 1, G, -1, -1)
    # ws_vh: reset_after=False neither reads nor writes it (it may have size 0)
    cdef bint with_vh = False
    if training:  # else ignored (the contract: they may have size 0)
        need("ws_hprev", ws_hprev, tn, True, 3, B, T, U)
        need("ws_gates", ws_gates, tn, True, 3, B, T, G)
        with_vh = reset_after
        if with_vh:
            need("ws_vh", ws_vh, tn, True, 3, B, T, U)
    # Scratch, once per call, in one block: the input projection of every step (per_step: one step's, and the
    # step's inputs when gathered; fused_blas.step_projection_pays), one step's recurrent projection, for
    # reset_after=False one step's r * h_prev (zeroed: rows never written stay finite numbers), and W and R
    # packed for fused_blas.product where that pays (pack_pays; else NULL); reset_after=False: R's [z, r] columns
    # and its h columns packed apart. With `packed` (gru_pack's W and R) nothing is packed here.
    if bounds is not None and n_threads > 1:
        # Row blocks [bounds[k], bounds[k+1]) on n_threads threads (kernels/README.md, "Row blocks")
        _forward_rows(x, W, R, b_in, b_rec, h0, lengths, reverse, reset_after, training, y, hT, ws_hprev, ws_gates,
                      ws_vh, with_vh, packed, bounds, n_threads, tn)
        return
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef Py_ssize_t sizes[6]
    cdef bint per_step = _scratch_sizes(sizes, B, T, D, U, max_length(<const int64_t*> cnp.PyArray_DATA(lengths), B),
                                        reset_after, item, packed is not None)
    cdef void* given = NULL
    if packed is not None:
        given = need_packed(packed, tn, _packed_total(D, U, reset_after, item))
    cdef double small[SMALL_SCRATCH]
    cdef void* work
    held = scratch(small, tn, total(sizes, 6), &work)
    if tn == cnp.NPY_FLOAT32:
        _forward_arrays(<float*> work, sizes, <float*> given, per_step, x, W, R, b_in, b_rec, h0, lengths,
                        reverse, reset_after, training, y, hT, ws_hprev, ws_gates, ws_vh, with_vh)
    else:
        _forward_arrays(<double*> work, sizes, <double*> given, per_step, x, W, R, b_in, b_rec, h0, lengths,
                        reverse, reset_after, training, y, hT, ws_hprev, ws_gates, ws_vh, with_vh)


cdef bint _scratch_sizes(Py_ssize_t* sizes, Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                         Py_ssize_t steps, bint reset_after, Py_ssize_t item, bint given) noexcept nogil:
    """The parts of gru_forward's scratch block (above) for B rows; `given`: W and R packed by the caller.
    Returns whether to project x per step."""
    cdef Py_ssize_t G = 3 * U
    cdef bint pack_w = pack_pays_rows(B * T), pack_r = pack_pays_steps(steps, B)
    cdef bint per_step = step_projection_pays(B, D, U, G, item, given or (pack_w and pack_r))
    sizes[0] = B * (G + D) if per_step else B * T * G
    sizes[1] = B * G
    sizes[2] = 0 if reset_after else B * U
    sizes[3] = packed_elements(D, G, item) if pack_w and not given else 0
    sizes[4] = packed_elements(U, (3 if reset_after else 2) * U, item) if pack_r and not given else 0
    sizes[5] = packed_elements(U, U, item) if pack_r and not reset_after and not given else 0
    return per_step


cdef object _forward_rows(cnp.ndarray x, cnp.ndarray W, cnp.ndarray R, cnp.ndarray b_in, cnp.ndarray b_rec,
                          cnp.ndarray h0, cnp.ndarray lengths, bint reverse, bint reset_after, bint training,
                          cnp.ndarray y, cnp.ndarray hT, cnp.ndarray ws_hprev, cnp.ndarray ws_gates,
                          cnp.ndarray ws_vh, bint with_vh, packed, cnp.ndarray bounds, int n_threads, int tn):
    """gru_forward in row blocks on n_threads threads (array_args.row_blocks), W and R packed once (gru_pack)."""
    cdef row_blocks c
    start_row_blocks(&c, bounds, x, W, R, h0, lengths, reverse, training, y, hT)
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, item = cnp.PyArray_ITEMSIZE(x), k, b0, bk, sizes[6]
    # W and R packed once for all blocks: `packed`, or packed by this call into its scratch (given_packed)
    cdef Py_ssize_t n_pack = given_packed(&c, packed, tn, _packed_total(D, U, reset_after, item))
    c.b, c.b2, c.flag = cnp.PyArray_DATA(b_in), cnp.PyArray_DATA(b_rec), reset_after
    c.ws[0], c.ws[1] = data_or_null(ws_hprev, training), data_or_null(ws_gates, training)
    c.ws[2] = data_or_null(ws_vh, training and with_vh)
    # every block's scratch (_scratch_sizes for its rows, W and R given) in one allocation
    offsets = np.empty(c.n_blocks + 1, np.intp)
    cdef Py_ssize_t[::1] off = offsets
    off[0] = 0
    for k in range(c.n_blocks):
        b0, bk = c.bounds[k], c.bounds[k + 1] - c.bounds[k]
        _scratch_sizes(sizes, bk, T, D, U, max_length(c.lengths + b0, bk), reset_after, item, True)
        off[k + 1] = off[k] + total(sizes, 3)
    cdef double small[SMALL_SCRATCH]
    held = row_blocks_scratch(&c, tn, n_pack, off, small)
    if n_pack:
        if reset_after:
            pack_pair_at(W, R, 3, c.packed)
        elif tn == cnp.NPY_FLOAT32:
            _pack_reset_before(<const float*> c.W, <const float*> c.R, D, U, <float*> c.packed)
        else:
            _pack_reset_before(<const double*> c.W, <const double*> c.R, D, U, <double*> c.packed)
    run_row_blocks(&c, n_threads, _rows_task_f32 if tn == cnp.NPY_FLOAT32 else _rows_task_f64)
    return held


cdef void _rows_task_f32(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <float*> NULL)


cdef void _rows_task_f64(void* ctx, int k) noexcept nogil:
    _rows_task(<row_blocks*> ctx, <double*> NULL)


cdef void _rows_task(row_blocks* c, floating* dtype) noexcept nogil:
    """The blocks this thread claims, each a forward of its own rows (FTZ/DAZ set for this thread)."""
    cdef Py_ssize_t T = c.T, D = c.D, U = c.U, G = 3 * U, b0, bk, sizes[6]
    cdef int j
    cdef bint per_step, reset_after = c.flag
    cdef floating* xw
    cdef floating* rh
    cdef floating* pW = <floating*> c.packed
    cdef floating* pR = pW + packed_size(D, G, sizeof(floating))
    cdef floating* pRh = pR + packed_size(U, (3 if reset_after else 2) * U, sizeof(floating))
    cdef floating* ws[3]
    cdef unsigned int fp_mode = flush_denormals()
    while True:
        j = fr_next_block(&c.next)
        if j >= c.n_blocks:
            break
        b0, bk = c.bounds[j], c.bounds[j + 1] - c.bounds[j]
        per_step = _scratch_sizes(sizes, bk, T, D, U, max_length(c.lengths + b0, bk), reset_after,
                                  sizeof(floating), True)
        xw = <floating*> c.work + c.offsets[j]
        rh = xw + sizes[0] + sizes[1]
        ws[0] = ws[1] = ws[2] = NULL
        if c.training:
            ws[0] = <floating*> c.ws[0] + b0 * T * U
            ws[1] = <floating*> c.ws[1] + b0 * T * G
            if c.ws[2] != NULL:
                ws[2] = <floating*> c.ws[2] + b0 * T * U
        if reset_after:
            _forward_reset_after(bk, T, D, U, <const floating*> c.x + b0 * T * D, <const floating*> c.W,
                                 <const floating*> c.R, <const floating*> c.b, <const floating*> c.b2,
                                 <const floating*> c.h0 + b0 * U, c.lengths + b0, c.reverse,
                                 <floating*> c.y + b0 * T * U, <floating*> c.hT + b0 * U, ws[0], ws[1], ws[2], xw,
                                 xw + sizes[0], pW, pR, True, per_step)
        else:
            memset(rh, 0, sizes[2] * sizeof(floating))
            _forward_reset_before(bk, T, D, U, <const floating*> c.x + b0 * T * D, <const floating*> c.W,
                                  <const floating*> c.R, <const floating*> c.b, <const floating*> c.h0 + b0 * U,
                                  c.lengths + b0, c.reverse, <floating*> c.y + b0 * T * U,
                                  <floating*> c.hT + b0 * U, ws[0], ws[1], xw, xw + sizes[0], rh, pW, pR,
                                  pRh, True, per_step)
    restore_fp_mode(fp_mode)


def gru_pack(cnp.ndarray W not None, cnp.ndarray R not None, bint reset_after):
    """W (D, 3U) and R (U, 3U) packed into panels once, for gru_forward's `packed` with the same reset_after: a
    forward given it skips its own packing (kernels/README.md, "Packed weights"). reset_after=False packs R's
    [z, r] columns and its h columns apart, as the forward does."""
    if reset_after:
        return pack_pair(W, R, 3)
    cdef Py_ssize_t DU[2]
    cdef int tn = need_weights(W, R, 3, DU)
    cdef Py_ssize_t D = DU[0], U = DU[1], item = cnp.PyArray_ITEMSIZE(W)
    cdef void* data
    out = new_packed(tn, _packed_total(D, U, False, item), &data)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            _pack_reset_before(<const float*> cnp.PyArray_DATA(W), <const float*> cnp.PyArray_DATA(R), D, U,
                               <float*> data)
        else:
            _pack_reset_before(<const double*> cnp.PyArray_DATA(W), <const double*> cnp.PyArray_DATA(R), D, U,
                               <double*> data)
    return out


cdef Py_ssize_t _packed_total(Py_ssize_t D, Py_ssize_t U, bint reset_after, Py_ssize_t item) noexcept nogil:
    """Elements of gru_pack's array: W, then R whole (reset_after: pack_pair's) or its [z, r] and h columns apart."""
    if reset_after:
        return pair_elements(D, U, 3 * U, item)
    return packed_size(D, 3 * U, item) + packed_size(U, 2 * U, item) + packed_size(U, U, item)


cdef void _pack_reset_before(const floating* W, const floating* R, Py_ssize_t D, Py_ssize_t U,
                             floating* P) noexcept nogil:
    """gru_pack's layout at P for reset_after=False: W packed, then R's [z, r] columns, then its h columns."""
    cdef Py_ssize_t nW = packed_size(D, 3 * U, sizeof(floating)), nR = packed_size(U, 2 * U, sizeof(floating))
    pack(W, 3 * U, D, 3 * U, P)
    pack(R, 3 * U, U, 2 * U, P + nW)
    pack(R + 2 * U, 3 * U, U, U, P + nW + nR)


cdef void _forward_arrays(floating* xw, const Py_ssize_t* sizes, floating* given, bint per_step, cnp.ndarray x,
                          cnp.ndarray W, cnp.ndarray R, cnp.ndarray b_in, cnp.ndarray b_rec, cnp.ndarray h0,
                          cnp.ndarray lengths, bint reverse, bint reset_after, bint training, cnp.ndarray y,
                          cnp.ndarray hT, cnp.ndarray ws_hprev, cnp.ndarray ws_gates, cnp.ndarray ws_vh,
                          bint with_vh):
    """The forward variant on the checked arrays' data; the scratch block at xw holds xw (per_step: one step's
    projection, then its gathered inputs), hr, rh, W packed, R packed ([z, r] columns for reset_after=False), R's
    h columns packed (`sizes`), unless `given` holds them (gru_pack)."""
    cdef floating* hr = xw + sizes[0]
    cdef floating* rh = hr + sizes[1]
    cdef floating* pW = rh + sizes[2] if sizes[3] else NULL
    cdef floating* pR = rh + sizes[2] + sizes[3] if sizes[4] else NULL
    cdef floating* pRh = rh + sizes[2] + sizes[3] + sizes[4] if sizes[5] else NULL
    cdef Py_ssize_t U_ = R.shape[0], nW_ = packed_size(x.shape[2], 3 * U_, sizeof(floating))
    if given != NULL:
        pW = given
        pR = given + nW_
        pRh = pR + packed_size(U_, (3 if reset_after else 2) * U_, sizeof(floating))
    cdef floating* ws[3]  # NULL in inference mode, where the workspaces may have size 0
    ws[0] = ws[1] = ws[2] = NULL
    if training:
        ws[0] = <floating*> cnp.PyArray_DATA(ws_hprev)
        ws[1] = <floating*> cnp.PyArray_DATA(ws_gates)
        if with_vh:
            ws[2] = <floating*> cnp.PyArray_DATA(ws_vh)
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef const floating* px = <floating*> cnp.PyArray_DATA(x)
    cdef const floating* pw = <floating*> cnp.PyArray_DATA(W)
    cdef const floating* pr = <floating*> cnp.PyArray_DATA(R)
    cdef const floating* pb_in = <floating*> cnp.PyArray_DATA(b_in)
    cdef const floating* pb_rec = <floating*> cnp.PyArray_DATA(b_rec)
    cdef const floating* ph0 = <floating*> cnp.PyArray_DATA(h0)
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef floating* py = <floating*> cnp.PyArray_DATA(y)
    cdef floating* phT = <floating*> cnp.PyArray_DATA(hT)
    cdef unsigned int fp_mode
    with nogil:
        fp_mode = flush_denormals()  # fused_blas, "Denormals"
        if reset_after:
            _forward_reset_after(B, T, D, U, px, pw, pr, pb_in, pb_rec, ph0, lens, reverse, py, phT,
                                 ws[0], ws[1], ws[2], xw, hr, pW, pR, given != NULL, per_step)
        else:
            memset(rh, 0, sizes[2] * sizeof(floating))
            _forward_reset_before(B, T, D, U, px, pw, pr, pb_in, ph0, lens, reverse, py, phT,
                                  ws[0], ws[1], xw, hr, rh, pW, pR, pRh, given != NULL, per_step)
        restore_fp_mode(fp_mode)


cdef const floating* _start(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U, const floating* x,
                            const floating* W, const floating* h0, const int64_t* lengths, floating* y, floating* h,
                            floating* ws_hprev, floating* ws_gates, floating* ws_vh, floating* xw, floating* Wbuf,
                            int isa, bint prepacked, bint per_step) noexcept nogil:
    """What both forward variants do before the time loop: returns W packed (or NULL: BLAS), which per_step
    projects x with at every step (_step_inputs) instead of here."""
    cdef const floating* Wp = NULL
    memcpy(h, h0, B * U * sizeof(floating))
    zero_padding(y, lengths, B, T, U)
    if ws_hprev != NULL:
        # Padded positions hold zeros whatever the caller allocated, so backward's all-steps matmuls add 0.
        zero_padding(ws_hprev, lengths, B, T, U)
        zero_padding(ws_gates, lengths, B, T, 3 * U)
        if ws_vh != NULL:
            zero_padding(ws_vh, lengths, B, T, U)
    if max_length(lengths, B) > 0:
        Wp = packed_weights(W, 3 * U, D, 3 * U, Wbuf, prepacked)
        if not per_step:
            product(B * T, D, x, D, W, 3 * U, False, Wp, 3 * U, xw, 3 * U, isa)
    return Wp


cdef inline void _step_inputs(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U, const floating* x,
                              const floating* Wp, const int64_t* lengths, Py_ssize_t lo, Py_ssize_t hi,
                              Py_ssize_t s, bint reverse, floating* xw, int isa) noexcept nogil:
    """per_step: xw's rows lo..hi = step s's x W (row stride 3U), from fused_blas.step_inputs (gathered, when
    they must be, after xw's B rows). Unlike LSTM's, GRU's h gate keeps x W and h R apart (r multiplies one of
    them), so the projection is a product of its own, its rows read back from L2 by the gate math."""
    cdef Py_ssize_t lda
    cdef const floating* xt = step_inputs(x, T, D, lengths, lo, hi, s, reverse, xw + B * 3 * U, &lda)
    packed_matmul(hi - lo, D, xt, lda, Wp, 3 * U, xw + lo * 3 * U, 3 * U, isa)


cdef void _forward_reset_after(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                               const floating* x, const floating* W, const floating* R,
                               const floating* b_in, const floating* b_rec, const floating* h0,
                               const int64_t* lengths, bint reverse, floating* y, floating* h,
                               floating* ws_hprev, floating* ws_gates, floating* ws_vh,
                               floating* xw, floating* hr, floating* Wbuf, floating* Rbuf, bint prepacked,
                               bint per_step) noexcept nogil:
    # The running state lives in the output hT (= h); inactive rows are not written.
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, G = 3 * U, pos
    cdef bint training = ws_hprev != NULL
    cdef int isa = fr_isa()
    cdef const floating* Wp
    cdef const floating* Rp
    cdef const floating* u
    cdef floating* v
    cdef floating* hrow
    cdef floating* yrow

    Wp = _start(B, T, D, U, x, W, h0, lengths, y, h, ws_hprev, ws_gates, ws_vh, xw, Wbuf, isa, prepacked, per_step)
    n_steps = max_length(lengths, B)
    Rp = packed_weights(R, G, U, G, Rbuf, prepacked)
    for s in range(n_steps):
        active_rows(lengths, B, s, &lo, &hi)
        if per_step:
            _step_inputs(B, T, D, U, x, Wp, lengths, lo, hi, s, reverse, xw, isa)
        # hr = h @ R (all three gates at once) for the block of rows holding the active ones
        product(hi - lo, U, h + lo * U, U, R, G, False, Rp, G, hr + lo * G, G, isa, panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            u = xw + (bb if per_step else pos) * G
            v = hr + bb * G
            hrow = h + bb * U
            yrow = y + pos * U
            if training:
                memcpy(ws_hprev + pos * U, hrow, U * sizeof(floating))
            # v's row: z, r, hh activated in place; the new h (fused_blas.gru_row)
            gru_row(v, u, b_in, b_rec, U, hrow, hrow, ws_vh + pos * U if ws_vh != NULL else NULL)
            memcpy(yrow, hrow, U * sizeof(floating))
            if training:
                memcpy(ws_gates + pos * G, v, G * sizeof(floating))


cdef void _forward_reset_before(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                                const floating* x, const floating* W, const floating* R,
                                const floating* bias, const floating* h0,
                                const int64_t* lengths, bint reverse, floating* y, floating* h,
                                floating* ws_hprev, floating* ws_gates,
                                floating* xw, floating* hr, floating* rh, floating* Wbuf, floating* Rbuf,
                                floating* Rhbuf, bint prepacked, bint per_step) noexcept nogil:
    # reset_after=False needs r before the h gate's matmul, so each step is: matmul (z, r columns of R),
    # pass 1 (z, r, r * h_prev), matmul (h columns of R), pass 2 (hh, new state). The column blocks of R are
    # addressed in place through BLAS leading dimensions: R[:, :2U] = (R, ld 3U), R[:, 2U:] = (R + 2U, ld 3U)
    # (or packed each on its own). hr's row holds [z, r, (r * h_prev) R_h] between the passes, then [z, r, hh].
    cdef Py_ssize_t s, bb, t, lo, hi, n_steps, G = 3 * U, pos
    cdef bint training = ws_hprev != NULL
    cdef int isa = fr_isa()
    cdef const floating* Wp
    cdef const floating* Rp
    cdef const floating* Rhp
    cdef const floating* u
    cdef floating* v
    cdef floating* hrow
    cdef floating* yrow

    Wp = _start(B, T, D, U, x, W, h0, lengths, y, h, ws_hprev, ws_gates, NULL, xw, Wbuf, isa, prepacked, per_step)
    n_steps = max_length(lengths, B)
    Rp = packed_weights(R, G, U, 2 * U, Rbuf, prepacked)
    Rhp = packed_weights(R + 2 * U, G, U, U, Rhbuf, prepacked)
    for s in range(n_steps):
        active_rows(lengths, B, s, &lo, &hi)
        if per_step:
            _step_inputs(B, T, D, U, x, Wp, lengths, lo, hi, s, reverse, xw, isa)
        product(hi - lo, U, h + lo * U, U, R, G, False, Rp, 2 * U, hr + lo * G, G, isa, panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            u = xw + (bb if per_step else bb * T + t) * G
            v = hr + bb * G
            hrow = h + bb * U
            gru_gates_row(v, u, bias, U, hrow, rh + bb * U)  # z, r; r * h_prev (fused_blas)
        product(hi - lo, U, rh + lo * U, U, R + 2 * U, G, False, Rhp, U, hr + lo * G + 2 * U, G, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            u = xw + (bb if per_step else pos) * G
            v = hr + bb * G
            hrow = h + bb * U
            yrow = y + pos * U
            if training:
                memcpy(ws_hprev + pos * U, hrow, U * sizeof(floating))
            gru_state_row(v, u, bias, U, hrow, hrow)  # hh; the new h (fused_blas)
            memcpy(yrow, hrow, U * sizeof(floating))
            if training:
                memcpy(ws_gates + pos * G, v, G * sizeof(floating))


# ---------------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------------

def gru_backward(cnp.ndarray x not None, cnp.ndarray W not None, cnp.ndarray R not None,
                 cnp.ndarray lengths not None, bint reverse, bint reset_after, cnp.ndarray ws_hprev not None,
                 cnp.ndarray ws_gates not None, cnp.ndarray ws_vh not None, cnp.ndarray dy not None,
                 cnp.ndarray dhT not None, cnp.ndarray dx not None, cnp.ndarray dh0 not None,
                 cnp.ndarray dW not None, cnp.ndarray dR not None, cnp.ndarray db_in not None,
                 cnp.ndarray db_rec not None):
    # ndarray arguments, checked by array_args (as the forward's)
    cdef Py_ssize_t dims[4]
    cdef int tn = need_backward(x, W, R, 3, lengths, dy, dhT, dx, dh0, dW, dR, dims)
    cdef Py_ssize_t B = dims[0], T = dims[1], D = dims[2], U = dims[3], G = 3 * U
    need("ws_hprev", ws_hprev, tn, False, 3, B, T, U)
    need("ws_gates", ws_gates, tn, False, 3, B, T, G)
    if reset_after:  # reset_after=False does not read it (it may have size 0)
        need("ws_vh", ws_vh, tn, False, 3, B, T, U)
    need("db_in", db_in, tn, True, 1, G, -1, -1)
    need("db_rec", db_rec, tn, True, 1, G, -1, -1)
    # Scratch, once per call, in one block: du, the gradient w.r.t. the input projection x W + b_in, every position
    # (read by the matmuls after the loop); `extra`: reset_after: dv, the same w.r.t. h_prev R + b_rec (differs
    # from du in the h gate only), reset_after=False: r * h_prev of every position, for dR's h block; one step's
    # gradient (dstep) and one step's product with R.T (dhr); W.T (dx) and R.T (every step; reset_after=False:
    # R[:, :2U].T, then R[:, 2U:].T) packed for fused_blas.product where that pays; the work of
    # fused_blas.weight_grads; x with zeros at padded positions for dW (fused_blas.active_inputs), only when some
    # row is padded. And a double accumulator per gate column (fused_blas.column_sums).
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef bint pack_r = pack_pays_steps(max_length(lens, B), B)
    cdef Py_ssize_t sizes[9]
    sizes[0] = B * T * G
    sizes[1] = B * T * (G if reset_after else U)
    sizes[2] = B * G
    sizes[3] = B * U
    sizes[4] = packed_elements(G, D, item) if pack_pays_rows(B * T) else 0
    sizes[5] = packed_elements((3 if reset_after else 2) * U, U, item) if pack_r else 0
    sizes[6] = packed_elements(U, U, item) if pack_r and not reset_after else 0
    sizes[7] = weight_grads_work(max(D, U), G, B * T, item)
    sizes[8] = B * T * D if has_padding(lens, B, T) else 0
    cdef double small[SMALL_SCRATCH]
    cdef double small_acc[SMALL_SCRATCH]
    cdef void* work
    cdef void* acc
    held = scratch(small, tn, total(sizes, 9), &work)
    held_acc = scratch(small_acc, cnp.NPY_FLOAT64, G, &acc)
    if tn == cnp.NPY_FLOAT32:
        _backward_arrays(<float*> work, sizes, <double*> acc, x, W, R, lengths, reverse, reset_after, ws_hprev,
                         ws_gates, ws_vh, dy, dhT, dx, dh0, dW, dR, db_in, db_rec)
    else:
        _backward_arrays(<double*> work, sizes, <double*> acc, x, W, R, lengths, reverse, reset_after, ws_hprev,
                         ws_gates, ws_vh, dy, dhT, dx, dh0, dW, dR, db_in, db_rec)


cdef void _backward_arrays(floating* du, const Py_ssize_t* sizes, double* acc, cnp.ndarray x, cnp.ndarray W,
                           cnp.ndarray R, cnp.ndarray lengths, bint reverse, bint reset_after,
                           cnp.ndarray ws_hprev, cnp.ndarray ws_gates, cnp.ndarray ws_vh, cnp.ndarray dy,
                           cnp.ndarray dhT, cnp.ndarray dx, cnp.ndarray dh0, cnp.ndarray dW, cnp.ndarray dR,
                           cnp.ndarray db_in, cnp.ndarray db_rec):
    """The backward variant on the checked arrays' data; the scratch block at du holds du, extra, dstep, dhr,
    W.T packed, R.T packed, R[:, 2U:].T packed, weight_grads' work, x_active (`sizes`)."""
    cdef floating* extra = du + sizes[0]
    cdef floating* dstep = extra + sizes[1]
    cdef floating* dhr = dstep + sizes[2]
    cdef floating* pWT = dhr + sizes[3] if sizes[4] else NULL
    cdef floating* pRT = dhr + sizes[3] + sizes[4] if sizes[5] else NULL
    cdef floating* pRhT = dhr + sizes[3] + sizes[4] + sizes[5] if sizes[6] else NULL
    cdef floating* wg = dhr + sizes[3] + sizes[4] + sizes[5] + sizes[6]
    cdef floating* x_active = wg + sizes[7] if sizes[8] else NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], D = x.shape[2], U = R.shape[0]
    cdef const int64_t* lens = <const int64_t*> cnp.PyArray_DATA(lengths)
    cdef const floating* px = <floating*> cnp.PyArray_DATA(x)
    cdef const floating* pw = <floating*> cnp.PyArray_DATA(W)
    cdef const floating* pr = <floating*> cnp.PyArray_DATA(R)
    cdef const floating* phprev = <floating*> cnp.PyArray_DATA(ws_hprev)
    cdef const floating* pgates = <floating*> cnp.PyArray_DATA(ws_gates)
    cdef const floating* pvh = <floating*> cnp.PyArray_DATA(ws_vh)
    cdef const floating* pdy = <floating*> cnp.PyArray_DATA(dy)
    cdef const floating* pdhT = <floating*> cnp.PyArray_DATA(dhT)
    cdef floating* pdx = <floating*> cnp.PyArray_DATA(dx)
    cdef floating* pdh0 = <floating*> cnp.PyArray_DATA(dh0)
    cdef floating* pdW = <floating*> cnp.PyArray_DATA(dW)
    cdef floating* pdR = <floating*> cnp.PyArray_DATA(dR)
    cdef floating* pdb_in = <floating*> cnp.PyArray_DATA(db_in)
    cdef floating* pdb_rec = <floating*> cnp.PyArray_DATA(db_rec)
    cdef const floating* xa
    cdef unsigned int fp_mode
    with nogil:
        fp_mode = flush_denormals()
        xa = active_inputs(px, lens, B, T, D, x_active)
        if reset_after:
            _backward_reset_after(B, T, D, U, xa, pw, pr, pWT, pRT, lens, reverse, phprev, pgates, pvh, pdy, pdhT,
                                  pdx, pdh0, pdW, pdR, pdb_in, pdb_rec, du, extra, dstep, dhr, acc, wg)
        else:
            _backward_reset_before(B, T, D, U, xa, pw, pr, pWT, pRT, pRhT, lens, reverse, phprev, pgates, pdy,
                                   pdhT, pdx, pdh0, pdW, pdR, pdb_in, du, extra, dstep, dhr, acc, wg)
            memset(pdb_rec, 0, 3 * U * sizeof(floating))  # one bias: its gradient is all in db_in
        restore_fp_mode(fp_mode)


cdef void _backward_reset_after(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                                const floating* x, const floating* W, const floating* R, floating* WTbuf,
                                floating* RTbuf, const int64_t* lengths, bint reverse,
                                const floating* ws_hprev, const floating* ws_gates, const floating* ws_vh,
                                const floating* dy, const floating* dhT,
                                floating* dx, floating* dh, floating* dW, floating* dR,
                                floating* db_in, floating* db_rec,
                                floating* du, floating* dv, floating* dv_step, floating* dhr,
                                double* acc, floating* wg) noexcept nogil:
    # The running gradient w.r.t. the state lives in the output dh0 (= dh); inactive rows keep it.
    cdef Py_ssize_t s, bb, t, j, lo, hi, n_steps, G = 3 * U, BT = B * T, pos
    cdef int isa = fr_isa()
    cdef const floating* RTp
    cdef const floating* WTp
    cdef floating* dvrow

    memcpy(dh, dhT, B * U * sizeof(floating))
    zero_padding(du, lengths, B, T, G)  # padded positions add nothing to the matmuls after the loop
    zero_padding(dv, lengths, B, T, G)
    n_steps = max_length(lengths, B)
    RTp = pack_for(R, G, G, U, True, RTbuf)

    for s in range(n_steps - 1, -1, -1):
        active_rows(lengths, B, s, &lo, &hi)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            dvrow = dv_step + bb * G
            gru_backward_row(ws_gates + pos * G, ws_hprev + pos * U, ws_vh + pos * U, dy + pos * U, dh + bb * U,
                             du + pos * G, dvrow, U, U)
            memcpy(dv + pos * G, dvrow, G * sizeof(floating))
        product(hi - lo, G, dv_step + lo * G, G, R, G, True, RTp, U, dhr + lo * U, U, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] > s:
                for j in range(U):
                    dh[bb * U + j] += dhr[bb * U + j]

    # Weight and input gradients: a few large matmuls over all positions at once.
    weight_grads(BT, G, du, G, D, x, D, dW, 0, NULL, 0, NULL, G, wg, isa)            # dW = x^T du
    WTp = pack_for(W, G, G, D, True, WTbuf)
    product(BT, G, du, G, W, G, True, WTp, D, dx, D, isa)
    zero_padding(dx, lengths, B, T, D)  # 0 already, unless W holds inf / NaN (0 * inf): padded inputs get no gradient
    weight_grads(BT, G, dv, G, U, ws_hprev, U, dR, 0, NULL, 0, NULL, G, wg, isa)     # dR = h_prev^T dv
    column_sums(du, BT, G, G, acc, db_in)
    column_sums(dv, BT, G, G, acc, db_rec)


cdef void _backward_reset_before(Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                                 const floating* x, const floating* W, const floating* R, floating* WTbuf,
                                 floating* RTbuf, floating* RhTbuf, const int64_t* lengths, bint reverse,
                                 const floating* ws_hprev, const floating* ws_gates,
                                 const floating* dy, const floating* dhT,
                                 floating* dx, floating* dh, floating* dW, floating* dR, floating* db,
                                 floating* du, floating* rh, floating* dstep, floating* dhr,
                                 double* acc, floating* wg) noexcept nogil:
    # Per step, mirroring the forward: pass 1 (dz, da_h, direct path), matmul d(r*h) = da_h @ R_h.T,
    # pass 2 (da_z, da_r, reset path), matmul da_zr @ R[:, :2U].T, pass 3 (add it to dh).
    # dstep's row holds [dz -> da_z, da_r, da_h]; dhr holds d(r*h), then da_zr @ R[:, :2U].T.
    cdef Py_ssize_t s, bb, t, j, lo, hi, n_steps, G = 3 * U, BT = B * T, pos
    cdef int isa = fr_isa()
    cdef const floating* RTp
    cdef const floating* RhTp
    cdef const floating* WTp
    cdef floating* drow

    memcpy(dh, dhT, B * U * sizeof(floating))
    zero_padding(du, lengths, B, T, G)  # padded positions add nothing to the matmuls after the loop
    n_steps = max_length(lengths, B)
    RTp = pack_for(R, G, 2 * U, U, True, RTbuf)          # R[:, :2U].T
    RhTp = pack_for(R + 2 * U, G, U, U, True, RhTbuf)    # R[:, 2U:].T

    for s in range(n_steps - 1, -1, -1):
        active_rows(lengths, B, s, &lo, &hi)
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            gru_reset_backward_row1(ws_gates + pos * G, ws_hprev + pos * U, dy + pos * U, dh + bb * U,
                                    dstep + bb * G, U, U)
        product(hi - lo, U, dstep + lo * G + 2 * U, G, R + 2 * U, G, True, RhTp, U, dhr + lo * U, U, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] <= s:
                continue
            t = position(s, lengths[bb], reverse)
            pos = bb * T + t
            drow = dstep + bb * G
            gru_reset_backward_row2(ws_gates + pos * G, ws_hprev + pos * U, dhr + bb * U, dh + bb * U, drow, U, U)
            memcpy(du + pos * G, drow, G * sizeof(floating))
        product(hi - lo, 2 * U, dstep + lo * G, G, R, G, True, RTp, U, dhr + lo * U, U, isa,
                panels_backward(s, hi - lo))
        for bb in range(lo, hi):
            if lengths[bb] > s:
                for j in range(U):
                    dh[bb * U + j] += dhr[bb * U + j]

    # r * h_prev of every position (zero where padded), recomputed from the workspaces for dR's h block.
    for bb in range(B):
        for t in range(lengths[bb]):
            pos = bb * T + t
            for j in range(U):
                rh[pos * U + j] = ws_gates[pos * G + U + j] * ws_hprev[pos * U + j]
    zero_padding(rh, lengths, B, T, U)

    # Weight and input gradients: a few large matmuls over all positions at once.
    weight_grads(BT, G, du, G, D, x, D, dW, 0, NULL, 0, NULL, G, wg, isa)                # dW = x^T du
    WTp = pack_for(W, G, G, D, True, WTbuf)
    product(BT, G, du, G, W, G, True, WTp, D, dx, D, isa)
    zero_padding(dx, lengths, B, T, D)  # 0 already, unless W holds inf / NaN (0 * inf): padded inputs get no gradient
    weight_grads(BT, 2 * U, du, G, U, ws_hprev, U, dR, 0, NULL, 0, NULL, G, wg, isa)     # dR[:, :2U] = h_prev^T du
    weight_grads(BT, U, du + 2 * U, G, U, rh, U, dR + 2 * U, 0, NULL, 0, NULL, G, wg, isa)  # dR[:, 2U:]
    column_sums(du, BT, G, G, acc, db)
