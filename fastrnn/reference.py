"""The NumPy oracle: forward and back-propagation through time for SimpleRNN, LSTM and GRU.

Written to be read, not to be fast. Every compiled kernel is tested against these functions, and every
benchmark compares against them. The equations are those of DESIGN.md, in the Keras layout:

    x (B, T, D)   W (D, G*U)   R (U, G*U)   b (G*U,)  [GRU reset_after: b (2, 3U) = input bias, recurrent bias]

Lengths (right-padded batches): row b consumes x[b, :lengths[b]]. With `reverse` it consumes them from its own
last valid step back to step 0. Outputs stay aligned with input positions, are zero at padded positions, and a
row's final state is its state after its own last step.

Each `<cell>_forward` returns `(y, final_states, cache)`; `cache` is None unless `training=True`.
Each `<cell>_backward(cache, dy, d_final_states)` returns a dict of gradients of a scalar loss with respect to
x, the initial states and the weights, given its gradients `dy` (B, T, U) and `d_final_states`.
"""
import numpy as np

__all__ = [
    "sigmoid",
    "simple_rnn_forward", "simple_rnn_backward",
    "lstm_forward", "lstm_backward",
    "gru_forward", "gru_backward",
]


def sigmoid(a):
    """Logistic sigmoid that never overflows: exp is only taken of non-positive numbers."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def _steps(lengths, T, reverse):
    """Yield, for each processing step s, the active rows and the input position t each of them consumes."""
    for s in range(T):
        rows = np.flatnonzero(s < lengths)
        t = lengths[rows] - 1 - s if reverse else np.full(rows.size, s)
        yield rows, t


def _setup(x, U, initial_states, lengths):
    """Zero initial states where none are given; lengths default to the full sequence."""
    B, T, _ = x.shape
    states = [np.zeros((B, U), x.dtype) if s is None else np.array(s, dtype=x.dtype) for s in initial_states]
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    return states, lengths


def _zeros_if_none(grad, shape, dtype):
    return np.zeros(shape, dtype) if grad is None else np.asarray(grad, dtype)


# ---------------------------------------------------------------------------------------------------------------
# SimpleRNN: h_t = act(x_t W + h_{t-1} R + b)
# ---------------------------------------------------------------------------------------------------------------

_ACTIVATIONS = {
    # name: (function, derivative expressed through the activation's output h)
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "relu": (lambda a: np.maximum(a, 0), lambda h: (h > 0).astype(h.dtype)),
}


def simple_rnn_forward(x, W, R, b, h0=None, lengths=None, reverse=False, activation="tanh", training=False):
    act = _ACTIVATIONS[activation][0]
    B, T, _ = x.shape
    U = R.shape[0]
    (h,), lengths = _setup(x, U, [h0], lengths)
    y = np.zeros((B, T, U), x.dtype)
    steps = []
    for rows, t in _steps(lengths, T, reverse):
        h_prev = h[rows]
        h_new = act(x[rows, t] @ W + h_prev @ R + b)
        h[rows] = h_new
        y[rows, t] = h_new
        if training:
            steps.append((rows, t, h_prev, h_new))
    cache = dict(x=x, W=W, R=R, activation=activation, steps=steps) if training else None
    return y, (h,), cache


def simple_rnn_backward(cache, dy, d_final_states):
    x, W, R = cache["x"], cache["W"], cache["R"]
    d_act = _ACTIVATIONS[cache["activation"]][1]
    B, T, _ = x.shape
    U = R.shape[0]
    dy = _zeros_if_none(dy, (B, T, U), x.dtype)
    dh = _zeros_if_none(d_final_states[0] if d_final_states else None, (B, U), x.dtype).copy()
    dx, dW, dR, db = np.zeros_like(x), np.zeros_like(W), np.zeros_like(R), np.zeros(R.shape[1], x.dtype)
    for rows, t, h_prev, h_new in reversed(cache["steps"]):
        da = (dh[rows] + dy[rows, t]) * d_act(h_new)  # gradient of the pre-activation a
        dx[rows, t] = da @ W.T
        dW += x[rows, t].T @ da
        dR += h_prev.T @ da
        db += da.sum(axis=0)
        dh[rows] = da @ R.T
    return dict(dx=dx, dh0=dh, dW=dW, dR=dR, db=db)


# ---------------------------------------------------------------------------------------------------------------
# LSTM, gates i, f, c, o:  c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)
# ---------------------------------------------------------------------------------------------------------------

def lstm_forward(x, W, R, b, h0=None, c0=None, lengths=None, reverse=False, training=False):
    B, T, _ = x.shape
    U = R.shape[0]
    (h, c), lengths = _setup(x, U, [h0, c0], lengths)
    y = np.zeros((B, T, U), x.dtype)
    steps = []
    for rows, t in _steps(lengths, T, reverse):
        h_prev, c_prev = h[rows], c[rows]
        a = x[rows, t] @ W + h_prev @ R + b
        i = sigmoid(a[:, :U])
        f = sigmoid(a[:, U:2 * U])
        g = np.tanh(a[:, 2 * U:3 * U])
        o = sigmoid(a[:, 3 * U:])
        c_new = f * c_prev + i * g
        h_new = o * np.tanh(c_new)
        h[rows], c[rows] = h_new, c_new
        y[rows, t] = h_new
        if training:
            steps.append((rows, t, h_prev, c_prev, i, f, g, o, c_new))
    cache = dict(x=x, W=W, R=R, steps=steps) if training else None
    return y, (h, c), cache


def lstm_backward(cache, dy, d_final_states):
    x, W, R = cache["x"], cache["W"], cache["R"]
    B, T, _ = x.shape
    U = R.shape[0]
    dy = _zeros_if_none(dy, (B, T, U), x.dtype)
    d_final_states = d_final_states or (None, None)
    dh = _zeros_if_none(d_final_states[0], (B, U), x.dtype).copy()
    dc = _zeros_if_none(d_final_states[1], (B, U), x.dtype).copy()
    dx, dW, dR, db = np.zeros_like(x), np.zeros_like(W), np.zeros_like(R), np.zeros(R.shape[1], x.dtype)
    for rows, t, h_prev, c_prev, i, f, g, o, c_new in reversed(cache["steps"]):
        dh_t = dh[rows] + dy[rows, t]
        tanh_c = np.tanh(c_new)
        dc_t = dc[rows] + dh_t * o * (1.0 - tanh_c * tanh_c)
        da = np.concatenate([
            dc_t * g * i * (1.0 - i),           # input gate
            dc_t * c_prev * f * (1.0 - f),      # forget gate
            dc_t * i * (1.0 - g * g),           # candidate
            dh_t * tanh_c * o * (1.0 - o),      # output gate
        ], axis=1)
        dx[rows, t] = da @ W.T
        dW += x[rows, t].T @ da
        dR += h_prev.T @ da
        db += da.sum(axis=0)
        dh[rows] = da @ R.T
        dc[rows] = dc_t * f
    return dict(dx=dx, dh0=dh, dc0=dc, dW=dW, dR=dR, db=db)


# ---------------------------------------------------------------------------------------------------------------
# GRU, gates z, r, h:  h_t = z * h_{t-1} + (1 - z) * hh
#   reset_after=True : hh = tanh(u_h + r * v_h),   u = x W + b_in, v = h_{t-1} R + b_rec
#   reset_after=False: hh = tanh(u_h + (r * h_{t-1}) R_h),   one bias
# ---------------------------------------------------------------------------------------------------------------

def _gru_biases(b, U, reset_after, dtype):
    if reset_after:
        return b[0], b[1]
    return b, np.zeros(3 * U, dtype)


def gru_forward(x, W, R, b, h0=None, lengths=None, reverse=False, reset_after=True, training=False):
    B, T, _ = x.shape
    U = R.shape[0]
    (h,), lengths = _setup(x, U, [h0], lengths)
    b_in, b_rec = _gru_biases(b, U, reset_after, x.dtype)
    y = np.zeros((B, T, U), x.dtype)
    steps = []
    for rows, t in _steps(lengths, T, reverse):
        h_prev = h[rows]
        u = x[rows, t] @ W + b_in
        if reset_after:
            v = h_prev @ R + b_rec
            z = sigmoid(u[:, :U] + v[:, :U])
            r = sigmoid(u[:, U:2 * U] + v[:, U:2 * U])
            hh = np.tanh(u[:, 2 * U:] + r * v[:, 2 * U:])
            v_h = v[:, 2 * U:]
        else:
            v_zr = h_prev @ R[:, :2 * U]
            z = sigmoid(u[:, :U] + v_zr[:, :U])
            r = sigmoid(u[:, U:2 * U] + v_zr[:, U:])
            hh = np.tanh(u[:, 2 * U:] + (r * h_prev) @ R[:, 2 * U:])
            v_h = None
        h_new = z * h_prev + (1.0 - z) * hh
        h[rows] = h_new
        y[rows, t] = h_new
        if training:
            steps.append((rows, t, h_prev, z, r, hh, v_h))
    cache = dict(x=x, W=W, R=R, reset_after=reset_after, steps=steps) if training else None
    return y, (h,), cache


def gru_backward(cache, dy, d_final_states):
    x, W, R, reset_after = cache["x"], cache["W"], cache["R"], cache["reset_after"]
    B, T, _ = x.shape
    U = R.shape[0]
    dy = _zeros_if_none(dy, (B, T, U), x.dtype)
    dh = _zeros_if_none(d_final_states[0] if d_final_states else None, (B, U), x.dtype).copy()
    dx, dW, dR = np.zeros_like(x), np.zeros_like(W), np.zeros_like(R)
    db_in, db_rec = np.zeros(3 * U, x.dtype), np.zeros(3 * U, x.dtype)
    for rows, t, h_prev, z, r, hh, v_h in reversed(cache["steps"]):
        dh_t = dh[rows] + dy[rows, t]
        dz = dh_t * (h_prev - hh)
        da_h = dh_t * (1.0 - z) * (1.0 - hh * hh)  # gradient of hh's pre-activation
        dh_prev = dh_t * z
        if reset_after:
            dr = da_h * v_h
            da_z, da_r = dz * z * (1.0 - z), dr * r * (1.0 - r)
            du = np.concatenate([da_z, da_r, da_h], axis=1)         # w.r.t. x W + b_in
            dv = np.concatenate([da_z, da_r, da_h * r], axis=1)     # w.r.t. h_prev R + b_rec
            dR += h_prev.T @ dv
            db_rec += dv.sum(axis=0)
            dh_prev = dh_prev + dv @ R.T
        else:
            d_rh = da_h @ R[:, 2 * U:].T                            # w.r.t. r * h_prev
            dr = d_rh * h_prev
            da_z, da_r = dz * z * (1.0 - z), dr * r * (1.0 - r)
            du = np.concatenate([da_z, da_r, da_h], axis=1)
            dR[:, :2 * U] += h_prev.T @ du[:, :2 * U]
            dR[:, 2 * U:] += (r * h_prev).T @ da_h
            dh_prev = dh_prev + du[:, :2 * U] @ R[:, :2 * U].T + d_rh * r
        dx[rows, t] = du @ W.T
        dW += x[rows, t].T @ du
        db_in += du.sum(axis=0)
        dh[rows] = dh_prev
    db = np.stack([db_in, db_rec]) if reset_after else db_in
    return dict(dx=dx, dh0=dh, dW=dW, dR=dR, db=db)
