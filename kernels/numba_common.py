"""Shared pieces of the Numba kernels (numba_simple_rnn, numba_lstm, numba_gru).

- Explicit signatures. Every kernel is compiled for exactly two signatures (float32, float64) in which the inputs
  are typed read-only and the outputs writable. Numba converts a writable array to a read-only parameter but
  never the other way, so one compiled version serves writable and read-only callers alike, and Numba never
  compiles at call time: the module import compiles or, normally, loads the on-disk cache (cache=True).
- Scalar math (exp, tanh, sigmoid, relu) that LLVM can vectorize and that keeps the caller's float type.
- Row loops: the small functions the element-wise passes are made of, and why they are written that way.
- Helpers around the time loop (time mapping, bias, padding).

Caching caveat: Numba invalidates a kernel module's cache only when that module's own file changes. The functions
here are compiled into each kernel, so after editing this file delete kernels/__pycache__/numba_*.nb[ic] (or
touch the kernel modules), or the kernels keep running the old code.
"""
import math

import numpy as np
# Numba's np.dot calls SciPy's BLAS (scipy.linalg.cython_blas), otherwise loaded lazily at the first matmul.
# Load it with the kernels: threadpoolctl limits only reach libraries already loaded when a limit is entered, so
# a lazily loaded BLAS inside `with threadpool_limits(1):` would run with all its threads.
import scipy.linalg.cython_blas  # noqa: F401
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

FLOATS = (types.float32, types.float64)
FLAG = types.boolean
LENGTHS = types.Array(types.int64, 1, "C", readonly=True)

JIT = dict(cache=True, nogil=True, error_model="numpy")
# No fastmath: NaN and inf must propagate exactly as in NumPy. error_model="numpy": float division by zero
# gives inf/NaN instead of raising, which also removes the zero checks that would stop loop vectorization.


def In(F, ndim):
    """An input array: C-contiguous, read-only (writable arrays convert to it)."""
    return types.Array(F, ndim, "C", readonly=True)


def Out(F, ndim):
    """An output array: C-contiguous, written by the kernel."""
    return types.Array(F, ndim, "C")


def signatures(make):
    """[void(make(float32)...), void(make(float64)...)]: make(F) gives the argument types for float type F."""
    return [types.void(*make(F)) for F in FLOATS]


# ---------------------------------------------------------------------------------------------------------------
# Scalar math, branch-free and call-free so that LLVM vectorizes the gate loops (libm's exp/tanh are scalar
# calls, which made the element-wise pass cost more than the matmuls). Each function keeps the argument's
# float type (constants of that type; a float32 path of its own). Accuracy: within a few ulp of NumPy for
# float64 and float32; NaN in -> NaN out; +-inf and huge arguments saturate without overflow.
#
# The Python bodies say what the functions compute (and run outside Numba); inside Numba the overloads run.
# ---------------------------------------------------------------------------------------------------------------

def exp_neg(x):
    """exp(x) for x <= 0 (the only exponentials the gates need: exp(-|a|))."""
    return math.exp(x)


def tanh(x):
    return math.tanh(x)


def sigmoid(a):
    """Logistic sigmoid; exp is only taken of non-positive numbers, so it never overflows."""
    e = math.exp(-abs(a))
    return (1.0 if a >= 0 else e) / (1.0 + e)


def relu(a):
    """max(a, 0), propagating NaN like np.maximum."""
    return 0.0 if a <= 0 else a


@intrinsic
def _bits_as_float(typingctx, bits):
    """Reinterpret int64 bits as float64, or int32 bits as float32 (builds 2**k for the exp scaling)."""
    ft = {types.int64: types.float64, types.int32: types.float32}[bits]

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(ft))
    return ft(bits), codegen


# exp: x = k ln2 + r, |r| <= ln2/2, exp(r) by fdlibm's rational form (float64, < 1 ulp) or Cephes' expf
# polynomial (float32), times 2**k built from exponent bits. 2**k is applied as two factors so that results
# down to the smallest subnormal come out right; below the clamp exp rounds to 0 anyway.
_EXP64 = dict(lo=-746.0, invln2=1.44269504088896338700e+00, ln2hi=6.93147180369123816490e-01,
              ln2lo=1.90821492927058770002e-10,
              p=(1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
                 -1.65339022054652515390e-06, 4.13813679705723846039e-08))
_EXP32 = dict(lo=-104.0, invln2=1.44269504088896341, ln2hi=0.693359375, ln2lo=-2.12194440e-4,
              p=(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                 5.0000001201e-1))
# tanh for |x| < 0.625 (Cephes tanh / tanhf); above, (1 - e) / (1 + e) with e = exp(-2|x|) has no cancellation.
_TANH64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
_TANH32_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)


@overload(exp_neg)
def _exp_neg_impl(x):
    if x == types.float64:
        F, c = np.float64, _EXP64
    elif x == types.float32:
        F, c = np.float32, _EXP32
    else:
        return None
    lo, invln2, ln2hi, ln2lo = F(c["lo"]), F(c["invln2"]), F(c["ln2hi"]), F(c["ln2lo"])
    zero, half, one, two = F(0), F(0.5), F(1), F(2)

    if x == types.float64:
        p1, p2, p3, p4, p5 = (F(v) for v in c["p"])

        def impl(x):
            x = lo if x < lo else x             # NaN stays NaN
            kf = np.floor(x * invln2 + half)
            kf = kf if kf == kf else zero       # NaN -> k = 0 before the int conversion (the result is NaN anyway)
            # Cody-Waite reduction (ln2hi has trailing zero bits, so kf * ln2hi is exact); then fdlibm e_exp.c.
            hi = x - kf * ln2hi
            lo_ = kf * ln2lo
            r = hi - lo_
            t = r * r
            cc = r - t * (p1 + t * (p2 + t * (p3 + t * (p4 + t * p5))))
            y = one - ((lo_ - (r * cc) / (two - cc)) - hi)
            k = np.int64(kf)
            k1 = k >> 1
            return y * _bits_as_float((k1 + 1023) << 52) * _bits_as_float((k - k1 + 1023) << 52)
        return impl

    p0, p1, p2, p3, p4, p5 = (F(v) for v in c["p"])

    def impl32(x):
        x = lo if x < lo else x
        kf = np.floor(x * invln2 + half)
        kf = kf if kf == kf else zero
        r = (x - kf * ln2hi) - kf * ln2lo       # Cephes expf
        y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
        k = np.int64(kf)
        k1 = k >> 1
        return y * _bits_as_float(np.int32((k1 + 127) << 23)) * _bits_as_float(np.int32((k - k1 + 127) << 23))
    return impl32


@overload(tanh)
def _tanh_impl(x):
    if x == types.float64:
        p0, p1, p2 = (np.float64(v) for v in _TANH64_P)
        q0, q1, q2 = (np.float64(v) for v in _TANH64_Q)
        one, small, m2 = np.float64(1), np.float64(0.625), np.float64(-2)

        def impl(x):
            ax = abs(x)
            e = exp_neg(m2 * ax)
            big = (one - e) / (one + e)
            big = big if x >= 0 else -big
            s = x * x
            poly = x + x * s * (((p0 * s + p1) * s + p2) / (((s + q0) * s + q1) * s + q2))
            return big if ax >= small else poly  # NaN takes the poly branch and stays NaN
        return impl
    if x == types.float32:
        p0, p1, p2, p3, p4 = (np.float32(v) for v in _TANH32_P)
        one, small, m2 = np.float32(1), np.float32(0.625), np.float32(-2)

        def impl(x):
            ax = abs(x)
            e = exp_neg(m2 * ax)
            big = (one - e) / (one + e)
            big = big if x >= 0 else -big
            s = x * x
            poly = ((((p0 * s + p1) * s + p2) * s + p3) * s + p4) * s * x + x
            return big if ax >= small else poly
        return impl


@overload(sigmoid)
def _sigmoid_impl(a):
    if isinstance(a, types.Float):
        one = as_dtype(a).type(1)

        def impl(a):
            e = exp_neg(-abs(a))
            return (one if a >= 0 else e) / (one + e)  # NaN: a >= 0 is False, e is NaN
        return impl


@overload(relu)
def _relu_impl(a):
    if isinstance(a, types.Float):
        zero = as_dtype(a).type(0)

        def impl(a):
            return zero if a <= zero else a
        return impl


# ---------------------------------------------------------------------------------------------------------------
# Row loops. The element-wise passes are made of small @njit functions over 1-D row views (A[b], A[b, U:2*U], ...),
# each touching a few arrays, with loops starting at 0. Reasons (each measured, 3-10x on the element-wise pass):
# - Numba optimizes every jitted function on its own before linking it into its caller, so a loop in a small
#   function is vectorized in a clean context; the same loop written inline in a kernel was sometimes not;
# - an index such as A[b, U + j] is not provably non-negative, and Numba's negative-index wraparound code keeps
#   LLVM from vectorizing;
# - LLVM gives up vectorizing when too many pairs of arrays need a runtime overlap check.
# ---------------------------------------------------------------------------------------------------------------

@njit(**JIT)
def copy(dst, src):
    for j in range(src.shape[0]):
        dst[j] = src[j]


@njit(**JIT)
def add_into(a, b):
    """a += b"""
    for j in range(a.shape[0]):
        a[j] += b[j]


@njit(**JIT)
def mul_into(a, b):
    """a *= b"""
    for j in range(a.shape[0]):
        a[j] *= b[j]


@njit(**JIT)
def sigmoid_of_sum(a, x):
    """a = sigmoid(x + a), in place."""
    for j in range(a.shape[0]):
        a[j] = sigmoid(x[j] + a[j])


@njit(**JIT)
def tanh_of_sum(a, x):
    """a = tanh(x + a), in place."""
    for j in range(a.shape[0]):
        a[j] = tanh(x[j] + a[j])


@njit(**JIT)
def relu_of_sum(a, x):
    """a = relu(x + a), in place."""
    for j in range(a.shape[0]):
        a[j] = relu(x[j] + a[j])


@njit(**JIT)
def sigmoid_grad(out, g, v, s):
    """out = g * v * s * (1 - s): gradient of the pre-activation of a sigmoid gate s whose output is multiplied
    by v, given the gradient g of that product."""
    one = out.dtype.type(1)
    for j in range(out.shape[0]):
        out[j] = g[j] * v[j] * s[j] * (one - s[j])


# ---------------------------------------------------------------------------------------------------------------
# The per-step products (and the input projection), in column blocks
#
# OpenBLAS (0.3.16+) runs GEMMs with m * n * k <= 100^3 on a "small matrix" kernel that skips packing the
# operands, on CPUs that have one (AVX-512: SKYLAKEX/COOPERLAKE/SAPPHIRERAPIDS, which includes this Zen4) and for
# transpose flags 'NN'. A per-step h @ R at batch 16 is just above the limit (16 x 128 x 512) and spends a third
# of its time repacking R every step: measured 50 GFLOP/s whole vs 100-110 in column blocks under the limit
# (units 128-512, batch 16, float32). Elsewhere blocking costs one more BLAS call per block; R is packed once in
# total either way. The same blocking is in kernels/fused_blas.pxd (gemm).
# ---------------------------------------------------------------------------------------------------------------

SMALL_GEMM_MNK = 1_000_000
# Block widths: powers of two from 64. The small kernel was fast on blocks of 64, 128, 256 columns (108-115
# GFLOP/s) and slow on 16 or 48 (20-70); where only narrower blocks would fit, one whole GEMM is faster (e.g.
# (64, 512) @ (512, 2048): 84 whole vs 38 in blocks of 16).
MIN_BLOCK = 64


@intrinsic
def _gemm_columns(typingctx, a, b, out, j0, width):
    """out[:, j0:j0+width] = a @ b[:, j0:j0+width] for 2-D C-contiguous arrays of one float type: one BLAS gemm
    through Numba's own wrapper (numba_xxgemm, which np.dot uses), with the row strides np.dot cannot take."""
    from llvmlite import ir
    from numba.core import cgutils
    from numba.np import linalg

    def codegen(context, builder, sig, args):
        at, bt, ot = sig.args[:3]
        A = context.make_array(at)(context, builder, args[0])
        Bm = context.make_array(bt)(context, builder, args[1])
        O = context.make_array(ot)(context, builder, args[2])
        first = context.cast(builder, args[3], sig.args[3], types.intp)
        cols = context.cast(builder, args[4], sig.args[4], types.intp)
        m, k = cgutils.unpack_tuple(builder, A.shape, 2)
        n_b = cgutils.unpack_tuple(builder, Bm.shape, 2)[1]
        n_out = cgutils.unpack_tuple(builder, O.shape, 2)[1]
        vp, ch, ip = linalg.ll_void_p, linalg.ll_char, linalg.intp_t
        fnty = ir.FunctionType(ir.IntType(32), [ch, ch, ch, ip, ip, ip, vp, vp, ip, vp, ip, vp, vp, ip])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        alpha = linalg.make_constant_slot(context, builder, at.dtype, 1.0)
        beta = linalg.make_constant_slot(context, builder, at.dtype, 0.0)
        kind = ir.Constant(ch, ord(linalg.get_blas_kind(at.dtype)))
        notrans = ir.Constant(ch, ord("n"))
        cast = lambda v: builder.bitcast(v, vp)  # noqa: E731
        # Column-major BLAS sees row-major matrices transposed: out^T (cols, m) = b^T (cols, k) @ a^T (k, m).
        res = builder.call(fn, (kind, notrans, notrans, cols, m, k, cast(alpha),
                                cast(builder.gep(Bm.data, [first])), n_b, cast(A.data), k, cast(beta),
                                cast(builder.gep(O.data, [first])), n_out))
        linalg.check_blas_return(context, builder, res)
        return context.get_dummy_value()

    if not all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" and t.dtype in FLOATS
               for t in (a, b, out)) or len({a.dtype, b.dtype, out.dtype}) != 1:
        return None
    return types.void(a, b, out, j0, width), codegen


@njit(**JIT)
def matmul(a, b, out):
    """out = a @ b (2-D, C-contiguous): the per-step products and the input projection. In column blocks that
    stay under SMALL_GEMM_MNK when the whole product is above it and blocks of MIN_BLOCK columns are under it
    (measured: never slower than one np.dot; 85 -> 108 GFLOP/s for the (100, 128) @ (128, 512) projection)."""
    m, k = a.shape
    n = b.shape[1]
    if m < 2 or m * n * k <= SMALL_GEMM_MNK or m * k * MIN_BLOCK > SMALL_GEMM_MNK:
        np.dot(a, b, out)  # one row: np.dot's gemv; otherwise one gemm
        return
    nb = MIN_BLOCK
    while 2 * nb * m * k <= SMALL_GEMM_MNK:
        nb *= 2
    for j0 in range(0, n, nb):
        _gemm_columns(a, b, out, j0, min(nb, n - j0))


# ---------------------------------------------------------------------------------------------------------------
# The per-step product of the backward pass, dA @ M.T
# ---------------------------------------------------------------------------------------------------------------

@njit(**JIT)
def transposed_for_steps(M, rows):
    """M.T as a contiguous copy, made once per call; an empty (0, 0) array when the step products have one row.

    With several rows, BLAS's GEMM with a transposed operand was up to 2x slower than with this copy. With one row
    the product is a GEMV that reads M.T in place as fast, and the copy would cost more than all the steps.
    The copy goes in 8 x 8 tiles: a plain M.T copy strides through memory and was ~4x slower.
    """
    if rows <= 1:
        return np.empty((0, 0), M.dtype)
    n, m = M.shape
    MT = np.empty((m, n), M.dtype)
    for i0 in range(0, n, 8):
        i1 = min(i0 + 8, n)
        for j0 in range(0, m, 8):
            for j in range(j0, min(j0 + 8, m)):
                mt = MT[j]
                for i in range(i0, i1):
                    mt[i] = M[i, j]
    return MT


@njit(**JIT)
def matmul_transposed(a, M, MT, out):
    """out = a @ M.T, where MT is transposed_for_steps(M, a.shape[0])."""
    if MT.shape[0] == 0:
        np.dot(a, M.T, out)
    else:
        matmul(a, MT, out)


# ---------------------------------------------------------------------------------------------------------------
# Time mapping and whole-array helpers
# ---------------------------------------------------------------------------------------------------------------

@njit(**JIT)
def position(s, length, reverse):
    """Input position consumed at processing step s by a row of this length (the row must be active: s < length)."""
    return length - 1 - s if reverse else s


@njit(**JIT)
def max_length(lengths):
    """Steps past the longest row have no active row: the time loops stop there."""
    m = 0
    for L in lengths:
        if L > m:
            m = L
    return m


@njit(**JIT)
def add_bias(Z, b):
    """Z[n, :] += b for every row of a 2-D array."""
    for n in range(Z.shape[0]):
        z = Z[n]
        for j in range(b.shape[0]):
            z[j] += b[j]


@njit(**JIT)
def column_sums(Z, out):
    """out[j] = sum over rows of Z[:, j] (the bias gradient from a (B*T, G*U) gradient).

    Accumulated in float64, as the Cython kernels do: a float32 running sum over B*T rows loses digits as the
    batch and sequences grow (2e-5 relative at B*T = 640,000, against 1e-7 with a float64 accumulator)."""
    acc = np.zeros(out.shape[0], np.float64)
    for n in range(Z.shape[0]):
        z = Z[n]
        for j in range(acc.shape[0]):
            acc[j] += z[j]
    for j in range(out.shape[0]):
        out[j] = acc[j]


@njit(**JIT)
def zero_padded(y, lengths):
    """y[b, t, :] = 0 for every padded position t >= lengths[b]."""
    for b in range(y.shape[0]):
        for t in range(lengths[b], y.shape[1]):
            y[b, t, :] = 0


@njit(**JIT)
def active_inputs_2d(x, lengths):
    """x as (B*T, D) for the weight gradient x2d.T @ dU2d.

    dU is zero at padded positions, but 0 * inf = NaN: when some row is padded, its padded inputs (which the
    forward never read and which need not be finite) are replaced by zeros in a copy. Inputs are never modified.
    """
    B, T, D = x.shape
    x2d = x.reshape(B * T, D)
    for b in range(B):
        if lengths[b] < T:
            xm = x2d.copy()
            zero_padded(xm.reshape(B, T, D), lengths)
            return xm
    return x2d
