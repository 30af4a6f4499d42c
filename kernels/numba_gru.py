"""GRU forward and BPTT in Numba, gates z, r, h (Keras order):

    u = x_t W + b_in;  z = sigmoid(u_z + v_z),  r = sigmoid(u_r + v_r),  h_t = z * h_{t-1} + (1 - z) * hh
    reset_after=True : v = h_{t-1} R + b_rec,               hh = tanh(u_h + r * v_h)
    reset_after=False: v_zr = h_{t-1} R[:, :2U] (one bias), hh = tanh(u_h + (r * h_{t-1}) R[:, 2U:])

Contract (arguments, layouts, lengths, reverse, workspaces): kernels/README.md. With reset_after=False, b_rec is
zeros and ignored, ws_vh is neither read nor written and db_rec is written with zeros.
"""
import numpy as np
from numba import njit

from .numba_common import (FLAG, JIT, LENGTHS, In, Out, active_inputs_2d, add_bias, add_into, column_sums, copy,
                           matmul_transposed, max_length, matmul, mul_into, position, sigmoid, sigmoid_grad, sigmoid_of_sum,
                           signatures, tanh, tanh_of_sum, transposed_for_steps, zero_padded)

__all__ = ["gru_forward", "gru_backward"]


# Row loops of the element-wise passes (why they are separate functions: numba_common, "Row loops").

@njit(**JIT)
def _gates_zr(a, x, b_rec):
    """a = sigmoid(x + (a + b_rec)): z and r from u and v = h R + b_rec (reset_after=True)."""
    for j in range(a.shape[0]):
        a[j] = sigmoid(x[j] + (a[j] + b_rec[j]))


@njit(**JIT)
def _sum(out, a, b):
    """out = a + b"""
    for j in range(out.shape[0]):
        out[j] = a[j] + b[j]


@njit(**JIT)
def _product(out, a, b):
    """out = a * b"""
    for j in range(out.shape[0]):
        out[j] = a[j] * b[j]


@njit(**JIT)
def _candidate(a, x, r, vh):
    """a = tanh(x + r * vh): the candidate state hh (reset_after=True)."""
    for j in range(a.shape[0]):
        a[j] = tanh(x[j] + r[j] * vh[j])


@njit(**JIT)
def _new_state(h, z, hh):
    """h = z * h + (1 - z) * hh"""
    one = h.dtype.type(1)
    for j in range(h.shape[0]):
        h[j] = z[j] * h[j] + (one - z[j]) * hh[j]


@njit(**JIT)
def _candidate_grad(da_h, dh, z, hh):
    """da_h = dh * (1 - z) * (1 - hh^2): gradient of hh's pre-activation."""
    one = dh.dtype.type(1)
    for j in range(dh.shape[0]):
        da_h[j] = dh[j] * (one - z[j]) * (one - hh[j] * hh[j])


@njit(**JIT)
def _update_gate_grad(da_z, dh, hp, hh, z):
    """da_z = dh * (h_prev - hh) * z * (1 - z)"""
    one = dh.dtype.type(1)
    for j in range(dh.shape[0]):
        da_z[j] = dh[j] * (hp[j] - hh[j]) * z[j] * (one - z[j])


@njit(**JIT)
def _hprev_grad_direct(dh, z, d_rh, r):
    """dh = dh * z + d(r * h_prev) * r: the direct paths to h_prev (reset_after=False), before the GEMM term."""
    for j in range(dh.shape[0]):
        dh[j] = dh[j] * z[j] + d_rh[j] * r[j]


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), In(F, 1), In(F, 1), In(F, 2), LENGTHS, FLAG, FLAG, FLAG,
                            Out(F, 3), Out(F, 2), Out(F, 3), Out(F, 3), Out(F, 3))), **JIT)
def gru_forward(x, W, R, b_in, b_rec, h0, lengths, reverse, reset_after, training, y, hT, ws_hprev, ws_gates, ws_vh):
    B, T, D = x.shape
    U = R.shape[0]
    G = 3 * U
    # Input projection of every step: one GEMM before the loop, input bias folded in.
    XW = np.empty((B * T, G), x.dtype)
    matmul(x.reshape(B * T, D), W, XW)
    add_bias(XW, b_in)
    XW3 = XW.reshape(B, T, G)
    h = hT  # the running state lives in hT: inactive rows simply keep theirs
    h[:, :] = h0
    S = max_length(lengths)

    if reset_after:
        A = np.empty((B, G), x.dtype)   # h @ R of the current step; its row becomes z, r, hh
        VH = np.empty((B, U), x.dtype)  # v_h = (h @ R + b_rec)[h part]
        brec_zr, brec_h = b_rec[:2 * U], b_rec[2 * U:]
        for s in range(S):
            matmul(h, R, A)
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                a, xw, vh, hb = A[bb], XW3[bb, t], VH[bb], h[bb]
                azr, ah, xzr, xh = a[:2 * U], a[2 * U:], xw[:2 * U], xw[2 * U:]
                z, r = a[:U], a[U:2 * U]
                _gates_zr(azr, xzr, brec_zr)
                _sum(vh, ah, brec_h)
                _candidate(ah, xh, r, vh)
                if training:
                    copy(ws_hprev[bb, t], hb)
                    copy(ws_gates[bb, t], a)
                    copy(ws_vh[bb, t], vh)
                _new_state(hb, z, ah)
                copy(y[bb, t], hb)
    else:
        # The h gate needs r first, so each step takes two GEMMs, on contiguous copies of R's column blocks.
        Rzr = np.ascontiguousarray(R[:, :2 * U])
        Rh = np.ascontiguousarray(R[:, 2 * U:])
        Azr = np.empty((B, 2 * U), x.dtype)  # h @ R[:, :2U]; its row becomes z, r
        rh = np.zeros((B, U), x.dtype)       # r * h (rows of inactive sequences: stale, their results dropped)
        Ah = np.empty((B, U), x.dtype)       # (r * h) @ R[:, 2U:]; its row becomes hh
        for s in range(S):
            matmul(h, Rzr, Azr)
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                azr, hb, rhb = Azr[bb], h[bb], rh[bb]
                r = azr[U:]
                sigmoid_of_sum(azr, XW3[bb, t, :2 * U])
                _product(rhb, r, hb)
            matmul(rh, Rh, Ah)
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                azr, ah, hb, xh = Azr[bb], Ah[bb], h[bb], XW3[bb, t, 2 * U:]
                z = azr[:U]
                tanh_of_sum(ah, xh)
                if training:
                    copy(ws_hprev[bb, t], hb)
                    gates = ws_gates[bb, t]
                    copy(gates[:2 * U], azr)
                    copy(gates[2 * U:], ah)
                _new_state(hb, z, ah)
                copy(y[bb, t], hb)
    zero_padded(y, lengths)
    if training:  # the workspaces come uninitialized (kernels/README.md): zeros where padded
        zero_padded(ws_hprev, lengths)
        zero_padded(ws_gates, lengths)
        if reset_after:  # (reset_after=False does not use ws_vh)
            zero_padded(ws_vh, lengths)


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), LENGTHS, FLAG, FLAG, In(F, 3), In(F, 3), In(F, 3),
                            In(F, 3), In(F, 2),
                            Out(F, 3), Out(F, 2), Out(F, 2), Out(F, 2), Out(F, 1), Out(F, 1))), **JIT)
def gru_backward(x, W, R, lengths, reverse, reset_after, ws_hprev, ws_gates, ws_vh, dy, dhT,
                 dx, dh0, dW, dR, db_in, db_rec):
    B, T, D = x.shape
    U = R.shape[0]
    G = 3 * U
    dU = np.zeros((B * T, G), x.dtype)  # gradient w.r.t. u = x W + b_in at every (b, t); zero where padded
    dU3 = dU.reshape(B, T, G)
    dHrec = np.empty((B, U), x.dtype)
    dh = dh0  # the running gradient of h lives in dh0
    dh[:, :] = dhT
    S = max_length(lengths)
    # Per-step buffers below are contiguous for the GEMMs. Their rows of inactive sequences stay 0: going backward
    # in time a row only ever turns from inactive to active.

    if reset_after:
        # dV (w.r.t. v = h R + b_rec) equals dU except in the h gate, where dV_h = dU_h * r.
        dV = np.zeros((B, G), x.dtype)
        RT = transposed_for_steps(R, B)
        for s in range(S - 1, -1, -1):
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                hp, gates, vh = ws_hprev[bb, t], ws_gates[bb, t], ws_vh[bb, t]
                z, r, hh = gates[:U], gates[U:2 * U], gates[2 * U:]
                dv, dhb, dyb = dV[bb], dh[bb], dy[bb, t]
                dv_z, dv_r, dv_h = dv[:U], dv[U:2 * U], dv[2 * U:]
                add_into(dhb, dyb)  # now the total gradient of h_t; dh0 is rewritten below
                _candidate_grad(dv_h, dhb, z, hh)  # this is dU_h
                _update_gate_grad(dv_z, dhb, hp, hh, z)
                sigmoid_grad(dv_r, dv_h, vh, r)
                mul_into(dhb, z)
                copy(dU3[bb, t], dv)
                mul_into(dv_h, r)
            matmul_transposed(dV, R, RT, dHrec)
            for bb in range(B):
                if s < lengths[bb]:
                    add_into(dh[bb], dHrec[bb])
        np.dot(active_inputs_2d(x, lengths).T, dU, dW)
        np.dot(dU, W.T, dx.reshape(B * T, D))
        column_sums(dU, db_in)
        # Turn dU into dV in place (h gate times r; padded rows stay 0), then the recurrent gradients.
        gates2d = ws_gates.reshape(B * T, G)
        for n in range(B * T):
            mul_into(dU[n, 2 * U:], gates2d[n, U:2 * U])
        np.dot(ws_hprev.reshape(B * T, U).T, dU, dR)
        column_sums(dU, db_rec)
    else:
        # Two GEMMs per step: the h gate's gradient gives d(r*h), which r's gradient needs.
        Rzr = np.ascontiguousarray(R[:, :2 * U])
        Rh = np.ascontiguousarray(R[:, 2 * U:])
        RzrT = transposed_for_steps(Rzr, B)
        RhT = transposed_for_steps(Rh, B)
        dZR = np.zeros((B * T, 2 * U), x.dtype)      # dU[:, :2U] and dU[:, 2U:], contiguous for dR after the loop
        dAH = np.zeros((B * T, U), x.dtype)
        dZR3 = dZR.reshape(B, T, 2 * U)
        dAH3 = dAH.reshape(B, T, U)
        dzr_step = np.zeros((B, 2 * U), x.dtype)
        dah_step = np.zeros((B, U), x.dtype)
        d_rh = np.empty((B, U), x.dtype)             # gradient w.r.t. r * h_prev: dah_step @ R[:, 2U:].T
        for s in range(S - 1, -1, -1):
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                gates = ws_gates[bb, t]
                z, hh = gates[:U], gates[2 * U:]
                dah, dhb, dyb = dah_step[bb], dh[bb], dy[bb, t]
                add_into(dhb, dyb)  # total gradient of h_t, kept for the second pass
                _candidate_grad(dah, dhb, z, hh)
                copy(dU3[bb, t, 2 * U:], dah)
                copy(dAH3[bb, t], dah)
            matmul_transposed(dah_step, Rh, RhT, d_rh)
            for bb in range(B):
                L = lengths[bb]
                if s >= L:
                    continue
                t = position(s, L, reverse)
                hp, gates = ws_hprev[bb, t], ws_gates[bb, t]
                z, r, hh = gates[:U], gates[U:2 * U], gates[2 * U:]
                dzr, drh, dhb = dzr_step[bb], d_rh[bb], dh[bb]
                dz, dr = dzr[:U], dzr[U:]
                _update_gate_grad(dz, dhb, hp, hh, z)
                sigmoid_grad(dr, drh, hp, r)
                _hprev_grad_direct(dhb, z, drh, r)
                copy(dU3[bb, t, :2 * U], dzr)
                copy(dZR3[bb, t], dzr)
            matmul_transposed(dzr_step, Rzr, RzrT, dHrec)
            for bb in range(B):
                if s < lengths[bb]:
                    add_into(dh[bb], dHrec[bb])
        np.dot(active_inputs_2d(x, lengths).T, dU, dW)
        np.dot(dU, W.T, dx.reshape(B * T, D))
        column_sums(dU, db_in)
        db_rec[:] = 0
        # dR[:, :2U] = hprev2d.T @ dZR2d;  dR[:, 2U:] = (r * hprev)2d.T @ dAH2d, r * hprev recomputed here.
        hp2d = ws_hprev.reshape(B * T, U)
        gates2d = ws_gates.reshape(B * T, G)
        rh2d = np.empty((B * T, U), x.dtype)
        for n in range(B * T):
            _product(rh2d[n], gates2d[n, U:2 * U], hp2d[n])
        dR_zr = np.empty((U, 2 * U), x.dtype)
        dR_h = np.empty((U, U), x.dtype)
        np.dot(hp2d.T, dZR, dR_zr)
        np.dot(rh2d.T, dAH, dR_h)
        for i in range(U):
            copy(dR[i, :2 * U], dR_zr[i])
            copy(dR[i, 2 * U:], dR_h[i])
    zero_padded(dx, lengths)  # already 0 unless W holds inf/NaN; padded inputs get no gradient
