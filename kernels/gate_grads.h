/* The backward gate math of one row (the gradients w.r.t. the gates' pre-activations), for float and double.
   The Cython wrappers, their documentation and the forward gate math are in kernels/fused_blas.pxd ("The backward
   gate math of one row"); the loops are here for one reason: C99 restrict, which Cython cannot spell.

   Each loop reads 4-7 rows and writes 2-4. gcc vectorizes a loop over arrays it cannot prove distinct only behind
   run-time overlap checks, 10 pairs at most (--param vect-max-version-for-alias-checks); the same loops written
   in Cython had more pairs than that and ran one element at a time (~12% of an LSTM backward at 128 units,
   batch 64). With every row restrict only one array's own gate slots are compared (`stride` is not known).

   Layout (fused_blas.pxd): gate g of unit j sits at [g * stride + j] in the gate rows; the per-unit rows are
   contiguous, n units long. Every pointer is to a different buffer (the callers' workspaces and scratch). */
#ifndef FASTRNN_GATE_GRADS_H
#define FASTRNN_GATE_GRADS_H

#include <stddef.h>

#include "packed_gemm.h"  /* FR_RESTRICT */

/* LSTM: da (i, f, g, o) from the gates (i, f, g, o activated), c_{t-1}, dy and the running dh, dc; da's o slot
   holds tanh(c_t) on entry (written by the Cython wrapper, with fused_blas's tanh). dc becomes dc_t * f. */
#define FR_DEFINE_LSTM_GRADS(T, NAME)                                                                       \
static inline void NAME(const T* FR_RESTRICT gates, const T* FR_RESTRICT cprev, const T* FR_RESTRICT dyrow,   \
                        const T* FR_RESTRICT dh, T* FR_RESTRICT dc, T* FR_RESTRICT da, ptrdiff_t n,          \
                        ptrdiff_t stride) {                                                                 \
    ptrdiff_t j;                                                                                            \
    for (j = 0; j < n; j++) {                                                                               \
        const T gi = gates[j], gf = gates[stride + j], gg = gates[2 * stride + j];                          \
        const T go = gates[3 * stride + j], tc = da[3 * stride + j];                                        \
        const T dht = dh[j] + dyrow[j];                                                                     \
        const T dct = dc[j] + dht * go * ((T) 1 - tc * tc);                                                 \
        da[j] = dct * gg * gi * ((T) 1 - gi);                      /* input gate */                         \
        da[stride + j] = dct * cprev[j] * gf * ((T) 1 - gf);       /* forget gate */                        \
        da[2 * stride + j] = dct * gi * ((T) 1 - gg * gg);         /* candidate */                          \
        da[3 * stride + j] = dht * tc * go * ((T) 1 - go);         /* output gate */                        \
        dc[j] = dct * gf;                                                                                   \
    }                                                                                                       \
}

/* GRU, reset_after=True: du (z, r, h) w.r.t. the input projection's gates, dv w.r.t. the recurrent projection's
   (its h gate is r * du's); vh = the h gate's h_prev R + b_rec; dh becomes (dh + dy) * z. */
#define FR_DEFINE_GRU_GRADS(T, NAME)                                                                        \
static inline void NAME(const T* FR_RESTRICT gates, const T* FR_RESTRICT hprev, const T* FR_RESTRICT vh,      \
                        const T* FR_RESTRICT dyrow, T* FR_RESTRICT dh, T* FR_RESTRICT du, T* FR_RESTRICT dv, \
                        ptrdiff_t n, ptrdiff_t stride) {                                                    \
    ptrdiff_t j;                                                                                            \
    for (j = 0; j < n; j++) {                                                                               \
        const T z = gates[j], r = gates[stride + j], hh = gates[2 * stride + j];                            \
        const T dht = dh[j] + dyrow[j];                                                                     \
        const T dah = dht * ((T) 1 - z) * ((T) 1 - hh * hh);      /* w.r.t. hh's pre-activation */          \
        const T daz = dht * (hprev[j] - hh) * z * ((T) 1 - z);                                              \
        const T dar = dah * vh[j] * r * ((T) 1 - r);                                                        \
        du[j] = daz;                                                                                        \
        du[stride + j] = dar;                                                                               \
        du[2 * stride + j] = dah;                                                                           \
        dv[j] = daz;                                                                                        \
        dv[stride + j] = dar;                                                                               \
        dv[2 * stride + j] = dah * r;                                                                       \
        dh[j] = dht * z;                                                                                    \
    }                                                                                                       \
}

/* GRU, reset_after=False, before the product d(r * h_prev) = da_h @ R_h.T: da's z slot = dz, its h slot = da_h;
   dh becomes (dh + dy) * z. */
#define FR_DEFINE_GRU_RESET_GRADS1(T, NAME)                                                                 \
static inline void NAME(const T* FR_RESTRICT gates, const T* FR_RESTRICT hprev, const T* FR_RESTRICT dyrow,   \
                        T* FR_RESTRICT dh, T* FR_RESTRICT da, ptrdiff_t n, ptrdiff_t stride) {              \
    ptrdiff_t j;                                                                                            \
    for (j = 0; j < n; j++) {                                                                               \
        const T z = gates[j], hh = gates[2 * stride + j];                                                   \
        const T dht = dh[j] + dyrow[j];                                                                     \
        da[j] = dht * (hprev[j] - hh);                                                                      \
        da[2 * stride + j] = dht * ((T) 1 - z) * ((T) 1 - hh * hh);                                         \
        dh[j] = dht * z;                                                                                    \
    }                                                                                                       \
}

/* ... and after it (drh = d(r * h_prev)): da's z, r slots = da_z, da_r; dh += drh * r, the reset path. */
#define FR_DEFINE_GRU_RESET_GRADS2(T, NAME)                                                                 \
static inline void NAME(const T* FR_RESTRICT gates, const T* FR_RESTRICT hprev, const T* FR_RESTRICT drh,     \
                        T* FR_RESTRICT dh, T* FR_RESTRICT da, ptrdiff_t n, ptrdiff_t stride) {              \
    ptrdiff_t j;                                                                                            \
    for (j = 0; j < n; j++) {                                                                               \
        const T z = gates[j], r = gates[stride + j];                                                       \
        da[j] = da[j] * z * ((T) 1 - z);                                                                    \
        da[stride + j] = drh[j] * hprev[j] * r * ((T) 1 - r);                                               \
        dh[j] += drh[j] * r;                                                                                \
    }                                                                                                       \
}

FR_DEFINE_LSTM_GRADS(float, fr_lstm_grads_f32)
FR_DEFINE_LSTM_GRADS(double, fr_lstm_grads_f64)
FR_DEFINE_GRU_GRADS(float, fr_gru_grads_f32)
FR_DEFINE_GRU_GRADS(double, fr_gru_grads_f64)
FR_DEFINE_GRU_RESET_GRADS1(float, fr_gru_reset_grads1_f32)
FR_DEFINE_GRU_RESET_GRADS1(double, fr_gru_reset_grads1_f64)
FR_DEFINE_GRU_RESET_GRADS2(float, fr_gru_reset_grads2_f32)
FR_DEFINE_GRU_RESET_GRADS2(double, fr_gru_reset_grads2_f64)

#endif
