"""LSTM forward and BPTT in Numba, gates i, f, c, o:

    a = x_t W + h_{t-1} R + b;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_c)
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

Contract (arguments, layouts, lengths, reverse, workspaces): kernels/README.md.
"""
import numpy as np
from numba import njit

from .numba_common import (FLAG, JIT, LENGTHS, In, Out, active_inputs_2d, add_bias, add_into, column_sums, copy,
                           matmul_transposed, max_length, matmul, mul_into, position, sigmoid_grad, sigmoid_of_sum,
                           signatures, tanh, tanh_of_sum, transposed_for_steps, zero_padded)

__all__ = ["lstm_forward", "lstm_backward"]


# Row loops of the element-wise passes (why they are separate functions: numba_common, "Row loops").

@njit(**JIT)
def _cell_state(c, gi, gf, gg):
    """c = f * c + i * g"""
    for j in range(c.shape[0]):
        c[j] = gf[j] * c[j] + gi[j] * gg[j]


@njit(**JIT)
def _hidden_state(h, go, c):
    """h = o * tanh(c)"""
    for j in range(h.shape[0]):
        h[j] = go[j] * tanh(c[j])


@njit(**JIT)
def _output_gate_grad(dc, da_o, dh, go, c):
    """Through h_t = o * tanh(c_t): dc += dh * o * tanh'(c_t); da_o = dh * tanh(c_t) * o * (1 - o)."""
    one = dc.dtype.type(1)
    for j in range(dc.shape[0]):
        tc = tanh(c[j])
        dc[j] += dh[j] * go[j] * (one - tc * tc)
        da_o[j] = dh[j] * tc * go[j] * (one - go[j])


@njit(**JIT)
def _candidate_grad(da_c, dc, gi, gg):
    """da_c = dc * i * (1 - g^2)"""
    one = dc.dtype.type(1)
    for j in range(dc.shape[0]):
        da_c[j] = dc[j] * gi[j] * (one - gg[j] * gg[j])


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), In(F, 1), In(F, 2), In(F, 2), LENGTHS, FLAG, FLAG,
                            Out(F, 3), Out(F, 2), Out(F, 2), Out(F, 3), Out(F, 3), Out(F, 3), Out(F, 3))), **JIT)
def lstm_forward(x, W, R, b, h0, c0, lengths, reverse, training, y, hT, cT, ws_hprev, ws_cprev, ws_gates, ws_c):
    B, T, D = x.shape
    U = R.shape[0]
    G = 4 * U
    # Input projection of every step: one GEMM before the loop, bias folded in.
    XW = np.empty((B * T, G), x.dtype)
    matmul(x.reshape(B * T, D), W, XW)
    add_bias(XW, b)
    XW3 = XW.reshape(B, T, G)
    A = np.empty((B, G), x.dtype)  # h @ R of the current step, all gates, all rows
    # The running states live in hT and cT: inactive rows simply keep theirs.
    h, c = hT, cT
    h[:, :] = h0
    c[:, :] = c0
    for s in range(max_length(lengths)):
        matmul(h, R, A)
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            t = position(s, L, reverse)
            # The row of A becomes the activated gates i, f, g, o.
            a, xw = A[bb], XW3[bb, t]
            sigmoid_of_sum(a[:2 * U], xw[:2 * U])
            tanh_of_sum(a[2 * U:3 * U], xw[2 * U:3 * U])
            sigmoid_of_sum(a[3 * U:], xw[3 * U:])
            gi, gf, gg, go = a[:U], a[U:2 * U], a[2 * U:3 * U], a[3 * U:]
            hb, cb = h[bb], c[bb]
            if training:
                copy(ws_hprev[bb, t], hb)
                copy(ws_cprev[bb, t], cb)
                copy(ws_gates[bb, t], a)
            _cell_state(cb, gi, gf, gg)
            _hidden_state(hb, go, cb)
            copy(y[bb, t], hb)
            if training:
                copy(ws_c[bb, t], cb)
    zero_padded(y, lengths)
    if training:  # the workspaces come uninitialized (kernels/README.md): zeros where padded
        zero_padded(ws_hprev, lengths)
        zero_padded(ws_cprev, lengths)
        zero_padded(ws_gates, lengths)
        zero_padded(ws_c, lengths)


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), LENGTHS, FLAG, In(F, 3), In(F, 3), In(F, 3), In(F, 3),
                            In(F, 3), In(F, 2), In(F, 2),
                            Out(F, 3), Out(F, 2), Out(F, 2), Out(F, 2), Out(F, 2), Out(F, 1))), **JIT)
def lstm_backward(x, W, R, lengths, reverse, ws_hprev, ws_cprev, ws_gates, ws_c, dy, dhT, dcT,
                  dx, dh0, dc0, dW, dR, db):
    B, T, D = x.shape
    U = R.shape[0]
    G = 4 * U
    dU = np.zeros((B * T, G), x.dtype)  # gradient of the gate pre-activations a at every (b, t); zero where padded
    dU3 = dU.reshape(B, T, G)
    # This step's rows of dU, contiguous for the GEMM. Rows of inactive sequences stay 0: going backward in time
    # a row only ever turns from inactive to active.
    dA = np.zeros((B, G), x.dtype)
    dHrec = np.empty((B, U), x.dtype)   # dA @ R.T
    RT = transposed_for_steps(R, B)
    # The running gradients of h and c live in dh0 and dc0.
    dh, dc = dh0, dc0
    dh[:, :] = dhT
    dc[:, :] = dcT
    for s in range(max_length(lengths) - 1, -1, -1):
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            t = position(s, L, reverse)
            gates, cprev, cnew = ws_gates[bb, t], ws_cprev[bb, t], ws_c[bb, t]
            gi, gf, gg, go = gates[:U], gates[U:2 * U], gates[2 * U:3 * U], gates[3 * U:]
            da = dA[bb]
            da_i, da_f, da_c, da_o = da[:U], da[U:2 * U], da[2 * U:3 * U], da[3 * U:]
            dhb, dcb = dh[bb], dc[bb]
            add_into(dhb, dy[bb, t])  # now the total gradient of h_t; dh0 is rewritten after the GEMM
            _output_gate_grad(dcb, da_o, dhb, go, cnew)
            # through c_t = f * c_{t-1} + i * g
            sigmoid_grad(da_i, dcb, gg, gi)
            _candidate_grad(da_c, dcb, gi, gg)
            sigmoid_grad(da_f, dcb, cprev, gf)
            mul_into(dcb, gf)  # gradient of c_{t-1}
            copy(dU3[bb, t], da)
        matmul_transposed(dA, R, RT, dHrec)
        for bb in range(B):
            if s < lengths[bb]:
                copy(dh[bb], dHrec[bb])
    # Weight and input gradients over all steps at once.
    np.dot(active_inputs_2d(x, lengths).T, dU, dW)
    np.dot(dU, W.T, dx.reshape(B * T, D))
    np.dot(ws_hprev.reshape(B * T, U).T, dU, dR)
    column_sums(dU, db)
    zero_padded(dx, lengths)  # already 0 unless W holds inf/NaN; padded inputs get no gradient
