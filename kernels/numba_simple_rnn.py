"""SimpleRNN forward and BPTT in Numba: h_t = act(x_t W + h_{t-1} R + b), act = tanh or relu.

Contract (arguments, layouts, lengths, reverse, workspaces): kernels/README.md.
"""
import numpy as np
from numba import njit

from .numba_common import (FLAG, JIT, LENGTHS, In, Out, active_inputs_2d, add_bias, column_sums, copy,
                           matmul_transposed, max_length, matmul, position, relu_of_sum, signatures, tanh_of_sum,
                           transposed_for_steps, zero_padded)

__all__ = ["simple_rnn_forward", "simple_rnn_backward"]


# Row loops of the element-wise passes (why they are separate functions: numba_common, "Row loops").

@njit(**JIT)
def _tanh_grad(da, dh, dy, h):
    """da = (dh + dy) * (1 - h^2), the gradient of the pre-activation given h = tanh(a)."""
    one = da.dtype.type(1)
    for j in range(da.shape[0]):
        da[j] = (dh[j] + dy[j]) * (one - h[j] * h[j])


@njit(**JIT)
def _relu_grad(da, dh, dy, h):
    """da = (dh + dy) * (h > 0), the gradient of the pre-activation given h = relu(a)."""
    one, zero = da.dtype.type(1), da.dtype.type(0)
    for j in range(da.shape[0]):
        da[j] = (dh[j] + dy[j]) * (one if h[j] > zero else zero)


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), In(F, 1), In(F, 2), LENGTHS, FLAG, FLAG, FLAG,
                            Out(F, 3), Out(F, 2), Out(F, 3), Out(F, 3))), **JIT)
def simple_rnn_forward(x, W, R, b, h0, lengths, reverse, relu, training, y, hT, ws_hprev, ws_h):
    B, T, D = x.shape
    U = R.shape[0]
    # Input projection of every step: one GEMM before the loop, bias folded in.
    XW = np.empty((B * T, U), x.dtype)
    matmul(x.reshape(B * T, D), W, XW)
    add_bias(XW, b)
    XW3 = XW.reshape(B, T, U)
    A = np.empty((B, U), x.dtype)  # h @ R of the current step, all rows; becomes the new h
    h = hT                         # the running state lives in hT: inactive rows simply keep theirs
    h[:, :] = h0
    for s in range(max_length(lengths)):
        matmul(h, R, A)
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            t = position(s, L, reverse)
            a = A[bb]
            if relu:
                relu_of_sum(a, XW3[bb, t])
            else:
                tanh_of_sum(a, XW3[bb, t])
            if training:
                copy(ws_hprev[bb, t], h[bb])
                copy(ws_h[bb, t], a)
            copy(h[bb], a)
            copy(y[bb, t], a)
    zero_padded(y, lengths)
    if training:  # the workspaces come uninitialized (kernels/README.md): zeros where padded
        zero_padded(ws_hprev, lengths)
        zero_padded(ws_h, lengths)


@njit(signatures(lambda F: (In(F, 3), In(F, 2), In(F, 2), LENGTHS, FLAG, FLAG, In(F, 3), In(F, 3), In(F, 3),
                            In(F, 2), Out(F, 3), Out(F, 2), Out(F, 2), Out(F, 2), Out(F, 1))), **JIT)
def simple_rnn_backward(x, W, R, lengths, reverse, relu, ws_hprev, ws_h, dy, dhT, dx, dh0, dW, dR, db):
    B, T, D = x.shape
    U = R.shape[0]
    dU = np.zeros((B * T, U), x.dtype)  # gradient of the pre-activation at every (b, t); zero where padded
    dU3 = dU.reshape(B, T, U)
    # This step's rows of dU, contiguous for the GEMM. Rows of inactive sequences stay 0: going backward in time
    # a row only ever turns from inactive to active.
    dA = np.zeros((B, U), x.dtype)
    dHrec = np.empty((B, U), x.dtype)   # dA @ R.T
    RT = transposed_for_steps(R, B)
    dh = dh0                            # the running gradient of h lives in dh0
    dh[:, :] = dhT
    for s in range(max_length(lengths) - 1, -1, -1):
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            t = position(s, L, reverse)
            da = dA[bb]
            if relu:
                _relu_grad(da, dh[bb], dy[bb, t], ws_h[bb, t])
            else:
                _tanh_grad(da, dh[bb], dy[bb, t], ws_h[bb, t])
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
