# cython: language_level=3, cdivision=True
"""Helpers shared by the Cython kernels (cython_*.pyx), for float and double: row-major BLAS, element-wise
math that vectorizes, and the bookkeeping of per-sequence lengths.

Everything here is `inline noexcept nogil` so the kernels can call it inside their `with nogil:` time loops;
a fused `floating` argument picks the float or double version at compile time. Only inline functions: the
modules that cimport this file import nothing from it at run time.

BLAS is scipy.linalg.cython_blas (the Fortran BLAS scipy links). Matrices are row-major (C order) with an
explicit leading dimension `ld` (distance between rows, in elements), so a column block of a wider matrix,
e.g. R[:, 2U:] of an (U, 3U) array, is just `R + 2*U` with `ld = 3*U`: no copy. Matrix sizes are C ints, as
in BLAS: batch * timesteps must stay below 2^31.
"""
from cython cimport floating
from libc.math cimport copysign, copysignf, fabs, fabsf
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


# ---------------------------------------------------------------------------------------------------------------
# Denormals. x86 SSE arithmetic with a subnormal operand or result takes a microcode assist: measured here 4-5x
# slower per multiply / exp, and the kernels 2-3.5x slower end to end on subnormal inputs. Every kernel entry sets
# FTZ (subnormal results become 0) and DAZ (subnormal inputs read as 0) in MXCSR for the duration of the call, in
# the calling thread only, and restores the caller's mode before returning. Results differ from exact IEEE
# arithmetic by less than the smallest normal number (1.2e-38 float32, 2.2e-308 float64); the exp here already
# flushes below it. Other CPUs: no-ops.
# ---------------------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #if defined(__SSE2__) || defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned int fastrnn_flush_denormals(void) {
        unsigned int mode = _mm_getcsr();
        _mm_setcsr(mode | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
        return mode;
    }
    static inline void fastrnn_restore_fp_mode(unsigned int mode) { _mm_setcsr(mode); }
    #else
    static inline unsigned int fastrnn_flush_denormals(void) { return 0; }
    static inline void fastrnn_restore_fp_mode(unsigned int mode) { (void) mode; }
    #endif
    """
    unsigned int flush_denormals "fastrnn_flush_denormals"() noexcept nogil
    void restore_fp_mode "fastrnn_restore_fp_mode"(unsigned int mode) noexcept nogil


# Software prefetch (pack_gate_columns): a hint, a no-op where the compiler has none.
cdef extern from *:
    """
    #if defined(__GNUC__)
    #define fastrnn_prefetch_read(p) __builtin_prefetch((const void*) (p), 0, 3)
    #else
    #define fastrnn_prefetch_read(p) ((void) (p))
    #endif
    """
    void prefetch_read "fastrnn_prefetch_read"(const void* p) noexcept nogil


# ---------------------------------------------------------------------------------------------------------------
# BLAS, row-major
# ---------------------------------------------------------------------------------------------------------------

# OpenBLAS (0.3.16+) runs GEMMs with m * n * k <= 100^3 on a "small matrix" kernel that skips packing the
# operands, on CPUs with that kernel (AVX-512: SKYLAKEX/COOPERLAKE/SAPPHIRERAPIDS, which includes this Zen4) and
# for transpose flags 'NN'. A per-step h @ R at batch 16 is just above the limit (16 x 128 x 512) and spends a
# third of its time repacking R every step: measured 50 GFLOP/s whole vs 100-110 in column blocks under the
# limit (units 128-512, batch 16, float32). Elsewhere blocking costs one more call per block; R is packed once
# in total either way.
# Block widths: powers of two from 64. The small kernel was fast on blocks of 64, 128, 256 columns (108-115
# GFLOP/s) and slow on 16 or 48 (20-70); where only narrower blocks would fit, one whole GEMM is faster (e.g.
# (64, 512) @ (512, 2048): 84 whole vs 38 in blocks of 16).
cdef enum:
    SMALL_GEMM_MNK = 1000000
    MIN_BLOCK = 64

cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* A, int lda, const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major; op(A) is (m, k), op(B) is (k, n).

    A is stored (m, k) or, with trans_a, (k, m); likewise B. lda/ldb/ldc are row strides.
    As in BLAS, C is not read when beta == 0 (it may hold anything, even NaN).
    """
    # Fortran BLAS is column-major, and a row-major matrix read column-major is its transpose. So ask BLAS
    # for C^T = op(B)^T @ op(A)^T: pass B before A and swap m and n. The transpose flags keep their meaning.
    # BLAS takes non-const pointers but never writes A or B, hence the casts.
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m == 1:
        # One row (batch of one, or the last active row of a ragged batch): gemv skips gemm's packing of the
        # whole of B, about twice as fast for a (256, 1024) recurrent kernel.
        gemv(trans_b, k, n, alpha, B, ldb, A, lda if trans_a else 1, beta, C)
        return
    cdef int j0, nb = n, width
    if not trans_a and not trans_b and <double> m * n * k > SMALL_GEMM_MNK and m * k * MIN_BLOCK <= SMALL_GEMM_MNK:
        # Column blocks small enough for OpenBLAS's small-matrix GEMM (see SMALL_GEMM_MNK): 2x on the per-step
        # products h @ R at batch 16-64. Each block of C needs only the same columns of B.
        nb = MIN_BLOCK
        while 2 * nb * m * k <= SMALL_GEMM_MNK:
            nb *= 2
    j0 = 0
    while j0 < n:
        width = min(nb, n - j0)
        if floating is float:
            sgemm(&tb, &ta, &width, &m, &k, &alpha, <float*> B + j0, &ldb, <float*> A, &lda, &beta, C + j0, &ldc)
        else:
            dgemm(&tb, &ta, &width, &m, &k, &alpha, <double*> B + j0, &ldb, <double*> A, &lda, &beta, C + j0,
                  &ldc)
        j0 += nb


cdef inline void gemv(bint trans_b, int k, int n, floating alpha, const floating* B, int ldb,
                      const floating* x, int incx, floating beta, floating* y) noexcept nogil:
    """y (n,) = alpha * x @ op(B) + beta * y for a row-major B stored (k, n), or (n, k) with trans_b.

    x has k elements spaced incx apart; y is contiguous. Not read when beta == 0.
    """
    if beta == 0:
        # Some OpenBLAS versions scale y by beta (0 * NaN = NaN) instead of overwriting it: clear it first.
        memset(y, 0, n * sizeof(floating))
    # Column-major, B stored (k, n) is an (n, k) matrix: y = B_cm @ x is gemv 'N' with (M, N) = (n, k).
    # Stored (n, k) it is (k, n): y = B_cm^T @ x, gemv 'T' with (M, N) = (k, n).
    cdef char t = b'T' if trans_b else b'N'
    cdef int rows = n if not trans_b else k
    cdef int cols = k if not trans_b else n
    cdef int one = 1
    if floating is float:
        sgemv(&t, &rows, &cols, &alpha, <float*> B, &ldb, <float*> x, &incx, &beta, y, &one)
    else:
        dgemv(&t, &rows, &cols, &alpha, <double*> B, &ldb, <double*> x, &incx, &beta, y, &one)


# ---------------------------------------------------------------------------------------------------------------
# Packed-panel products (kernels/packed_gemm.h): the matmuls against a matrix that is the same for many calls
# (R every step, W for all steps). The matrix is copied once per kernel call into panels of FR_PANEL_BYTES
# columns; every product then streams the panels with aligned vector loads. Measured on this Zen 4, one core,
# float32, against scipy's OpenBLAS (with the column blocks of `gemm` above): 16 x 128..512 @ x 4*units 117 vs
# 52-73 GFLOP/s, 4 x 1024 @ 1024 x 4096 100 vs 16, 1 x 128 @ 128 x 512 57 vs 39, the input projection
# (1600 x 128..1024 rows) 105-112 vs 97-102.
# ---------------------------------------------------------------------------------------------------------------

cdef extern from "packed_gemm.h":
    int FR_PANEL_BYTES
    int fr_isa() noexcept nogil
    int fr_set_isa_cap(int level) noexcept nogil
    void fr_matmul_f32(int M, int K, const float* A, Py_ssize_t lda, const float* P, int N, float* C,
                       Py_ssize_t ldc, int acc, int backward, int isa) noexcept nogil
    void fr_matmul_f64(int M, int K, const double* A, Py_ssize_t lda, const double* P, int N, double* C,
                       Py_ssize_t ldc, int acc, int backward, int isa) noexcept nogil
    void fr_matmul2_f32(int M, int K, const float* A, Py_ssize_t lda, const float* P, int K2, const float* A2,
                        Py_ssize_t lda2, const float* P2, int N, float* C, Py_ssize_t ldc, int acc, int backward,
                        int isa) noexcept nogil
    void fr_matmul2_f64(int M, int K, const double* A, Py_ssize_t lda, const double* P, int K2, const double* A2,
                        Py_ssize_t lda2, const double* P2, int N, double* C, Py_ssize_t ldc, int acc, int backward,
                        int isa) noexcept nogil
    void fr_transpose_f32(const float* A, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t cols, float* AT,
                          Py_ssize_t ldt) noexcept nogil
    void fr_transpose_f64(const double* A, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t cols, double* AT,
                          Py_ssize_t ldt) noexcept nogil
    void fr_matmul_at_f32(int M, int K, const float* A, Py_ssize_t lda, const float* P, int N, float* C,
                          Py_ssize_t ldc, int acc, int isa) noexcept nogil
    void fr_matmul_at_f64(int M, int K, const double* A, Py_ssize_t lda, const double* P, int N, double* C,
                          Py_ssize_t ldc, int acc, int isa) noexcept nogil

# fr_matmul passes each panel over all rows of A: past ~1 MB of A (a core's L2 here) the rows come from L3, and
# the input projection of 6400 x 512 @ 512 x 2048 fell to 91 GFLOP/s (1600 rows: 105). packed_matmul hands it
# A in chunks of about PACKED_CHUNK_BYTES, a multiple of 4 rows (its row block: every row's sums then run in the
# same order as in one call).
cdef enum:
    PACKED_CHUNK_BYTES = 1 << 20
    PACK_MIN_USES = 4
    PACK_MIN_GEMV_STEPS = 16
    PACK_T_ROWS = 16       # pack_transposed's tile height
    PACK_TILE_BYTES = 4 << 20  # pack_gate_columns: from this size in groups of panels, prefetching
    PACK_TILE_PANELS = 2
    PACK_PREFETCH_ROWS = 8


cdef inline Py_ssize_t panel_width(Py_ssize_t itemsize) noexcept nogil:
    """Columns per panel."""
    return FR_PANEL_BYTES // itemsize


cdef inline Py_ssize_t packed_size(Py_ssize_t K, Py_ssize_t N, Py_ssize_t itemsize) noexcept nogil:
    """Elements of a packed K x N matrix: ceil(N / panel width) panels of K rows."""
    cdef Py_ssize_t nr = panel_width(itemsize)
    return (N + nr - 1) // nr * K * nr


cdef inline Py_ssize_t packed_elements(Py_ssize_t K, Py_ssize_t N, Py_ssize_t itemsize) noexcept nogil:
    """Elements to allocate for a packed K x N matrix, with room to align its start (aligned64)."""
    return max(1, packed_size(K, N, itemsize)) + 64 // itemsize


cdef inline floating* aligned64(floating* buffer) noexcept nogil:
    """The first 64-byte aligned element of a buffer of packed_elements(...): where the packed matrix goes."""
    return <floating*> ((<size_t> buffer + 63) // 64 * 64)


cdef inline void pack_gate_columns(const floating* src, Py_ssize_t ld, Py_ssize_t K, Py_ssize_t U, Py_ssize_t u0,
                                   Py_ssize_t nu, Py_ssize_t g0, Py_ssize_t ng, floating* P,
                                   bint grouped=False) noexcept nogil:
    """Pack columns g*U + [u0, u0+nu) of gates g0..g0+ng-1 of src (K rows, row stride ld), in that order, into
    P (64-byte aligned) in panels: panel p holds local columns [p * nr, p * nr + nr) as K rows of nr contiguous
    elements, the last panel zero-padded; local column j = (g - g0) * nu + i holds global column g * U + u0 + i.
    (The column-split kernel packs each thread's units this way; `pack` is the whole matrix.)

    Row by row (the source is read in order), panel by panel: a panel row gathers at most a few contiguous runs
    of a source row (one per gate it spans). From PACK_TILE_BYTES of packed matrix, in groups of PACK_TILE_PANELS
    panels (all rows for one group, then the next), with the rows PACK_PREFETCH_ROWS ahead prefetched: writing
    every panel's row at once is one write stream per panel (128 of them at 4096 columns), and measured here,
    float32, one core, interleaved A/B, that ran at 3 GB/s on 12.6-16.8 MB (1024 units), 10 at 4.2 MB; the groups
    were 2.6-3.0x as fast at 12.6-16.8 MB, 1.27x at 4.2 MB, but 0.71-0.94x at 0.3-3.1 MB (kept as it was).
    grouped: in groups whatever the size. The column split packs each thread's share of W and R on every call,
    both threads at once and the sources often no longer in cache (its loop streams R): there the groups took
    0.91x the time of the call at 512 units (LSTM batch 1 and 4, GRU batch 1; 2 threads, side by side), the same
    at 128-256 (shares under 1 MB) and at 1024 (shares of 4 MB or more were grouped already)."""
    cdef Py_ssize_t nr = panel_width(sizeof(floating))
    cdef Py_ssize_t N = ng * nu, npan = (N + nr - 1) // nr, p0, p1, p, k, j0, nc, c, g, i, run, m
    cdef bint tiled = grouped or K * N * <Py_ssize_t> sizeof(floating) >= PACK_TILE_BYTES
    cdef Py_ssize_t group = PACK_TILE_PANELS if tiled else npan
    cdef floating* dst
    cdef const floating* row
    cdef const floating* from_
    p0 = 0
    while p0 < npan:
        p1 = min(npan, p0 + group)
        for k in range(K):
            row = src + k * ld
            for p in range(p0, p1):
                j0 = p * nr
                nc = min(nr, N - j0)
                dst = P + (p * K + k) * nr
                c = 0
                while c < nc:
                    g = (j0 + c) // nu           # the gate of local column j0 + c, and its unit
                    i = j0 + c - g * nu
                    run = min(nu - i, nc - c)    # up to the end of that gate's units, or of the panel
                    from_ = row + (g0 + g) * U + u0 + i
                    if tiled and k + PACK_PREFETCH_ROWS < K:  # a page or more away: the hardware does not fetch it
                        prefetch_read(from_ + PACK_PREFETCH_ROWS * ld)
                        prefetch_read(from_ + PACK_PREFETCH_ROWS * ld + run - 1)
                    for m in range(run):         # a loop gcc vectorizes: cheaper than memcpy calls of ~128 bytes
                        dst[c + m] = from_[m]
                    c += run
                if nc < nr:
                    memset(dst + nc, 0, (nr - nc) * sizeof(floating))
        p0 = p1


cdef inline void pack(const floating* src, Py_ssize_t ld, Py_ssize_t K, Py_ssize_t N, floating* P) noexcept nogil:
    """P (64-byte aligned) = the K x N matrix src (row stride ld) in panels (pack_gate_columns' layout)."""
    pack_gate_columns(src, ld, K, N, 0, N, 0, 1, P)


cdef inline void pack_transposed(const floating* src, Py_ssize_t ld, Py_ssize_t K, Py_ssize_t N,
                                 floating* P) noexcept nogil:
    """As pack, for the K x N matrix src.T: src is (N, K) with row stride ld (R.T for the backward pass).

    In tiles of PACK_T_ROWS panel rows: a panel row is 128 bytes, so writing a whole column of a panel (K rows)
    at once touched a new cache line per element; a tile's 16 rows stay in L1 while its columns are filled.
    Measured (one core, source from memory): 1.4x as fast at 512 x 2048 (R.T of LSTM 512), 2.7x at 2048 x 512,
    2.2x at 1024 x 4096; still 5-11 GB/s (scalar stores). An unpacked A @ B.T kernel (dot products of rows) was
    tried instead and lost as much in the per-step products (63-70 GB/s vs 82) as it saved in packing."""
    cdef Py_ssize_t nr = panel_width(sizeof(floating)), p, k, k0, k1, j, nc
    cdef floating* dst
    cdef const floating* row
    for p in range((N + nr - 1) // nr):
        nc = min(nr, N - p * nr)
        dst = P + p * K * nr
        k0 = 0
        while k0 < K:
            k1 = min(k0 + PACK_T_ROWS, K)
            for j in range(nc):
                row = src + (p * nr + j) * ld
                for k in range(k0, k1):
                    dst[k * nr + j] = row[k]
            if nc < nr:
                for k in range(k0, k1):
                    for j in range(nc, nr):
                        dst[k * nr + j] = 0
            k0 = k1


cdef inline bint pack_pays(Py_ssize_t uses) noexcept nogil:
    """Whether to pack a matrix that `uses` products will each stream whole (R: once per step; W: once per block
    of 4 rows of x). Packing costs about two such passes; a kernel call with few steps (a T=1 call of the
    latency path with 1024 units would copy 16 MB of R for one GEMV) keeps BLAS."""
    return uses >= PACK_MIN_USES


cdef inline bint pack_pays_rows(Py_ssize_t rows) noexcept nogil:
    """pack_pays for W, which the packed product streams once per block of 4 rows of x (its row block)."""
    return pack_pays((rows + 3) // 4)


cdef inline bint pack_pays_steps(Py_ssize_t steps, Py_ssize_t batch) noexcept nogil:
    """pack_pays for R (R.T in the backward), which every step streams whole. At batch 1 each step is a GEMV that
    BLAS reads about as fast as the packed product (from L3 both run at the cache's rate), so the copy pays only
    from PACK_MIN_GEMV_STEPS steps: measured with 4, 8, 16 side by side, 1 thread, batch 1, LSTM/GRU 128-512
    units, 6-12 steps: 16 took 0.48-0.91x the time of 4 in inference and 0.52-0.98x forward + backward, the same
    from 16 steps. At batch 2 and more BLAS's gemm repacks R on every step, and its transposed product (the
    backward's dA @ R.T) is slow: 4 stays (8 took 1.2-1.6x the time of 4 in training at batch 4)."""
    return steps >= (PACK_MIN_GEMV_STEPS if batch == 1 else PACK_MIN_USES)


# ---------------------------------------------------------------------------------------------------------------
# Where the input projection runs. Whole (one product x W over all positions before the loop, into xw) or per
# step, fused with the recurrent one: a_t = [x_t | h] @ [W; R] as one product (packed_matmul2), summed in
# registers. The whole projection writes B*T*N elements that the loop reads back a step at a time, scattered
# (a row per batch row), and the gate math waited on those reads: LSTM 128 units, batch 64, one core, 14% of the
# call in the kernel's own code, a third of it on the first load of xw. Per step, the fused product writes the
# gate inputs once and they are read from L2. Measured side by side (float32, T=100, one core, LSTM): 0.90x the
# time at 128 units / batch 64, 0.94x at 256 / 64, 0.97x at 512 / 8-64, 0.98-1.0 at 128-256 / 4-16; but 1.09x
# at batch 2 (each step's product is then too small to hide the reads of W) and 1.13-1.43x at 1024 units (W and
# R, 32 MB, no longer fit the L3 cache with the rest: each step read both from memory). Hence from
# STEP_PROJECTION_MIN_ROWS rows, with W and R (packed, float or double) of at most STEP_PROJECTION_MAX_BYTES.
# GRU projects per step too, in a product of its own (its h gate needs x W and h R apart; cython_gru): 0.80-0.90x
# the time at 128-256 units / batch 64, 0.92x at 256 / 16, 0.96x at 512 / 8-16, both reset_after variants.
# ---------------------------------------------------------------------------------------------------------------

cdef enum:
    STEP_PROJECTION_MIN_ROWS = 8
    STEP_PROJECTION_MAX_BYTES = 8 << 20


cdef inline bint step_projection_pays(Py_ssize_t B, Py_ssize_t D, Py_ssize_t U, Py_ssize_t N, Py_ssize_t itemsize,
                                      bint packed) noexcept nogil:
    """Whether a forward with W (D, N) and R (U, N) projects x per step (above). packed: W and R both packed,
    by the caller or by this call (the per-step products run on the packed panels only)."""
    return packed and B >= STEP_PROJECTION_MIN_ROWS and \
        packed_size(D + U, N, itemsize) * itemsize <= STEP_PROJECTION_MAX_BYTES


cdef inline bint forward_scratch(Py_ssize_t* sizes, Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                                 Py_ssize_t N, Py_ssize_t steps, Py_ssize_t itemsize, bint given) noexcept nogil:
    """The parts of the scratch block of a forward with one gate matrix (LSTM, SimpleRNN: W (D, N), R (U, N)):
    the input projection of every step (or, projected per step, one step's inputs: step_preactivations), one step's
    products, W packed and R packed where that pays (else 0: BLAS reads them as they are; 0 too when `given`,
    packed by the caller). Returns whether to project per step. GRU, whose R is split, lays out its own."""
    cdef bint pack_w = pack_pays_rows(B * T), pack_r = pack_pays_steps(steps, B)
    cdef bint per_step = step_projection_pays(B, D, U, N, itemsize, given or (pack_w and pack_r))
    sizes[0] = B * D if per_step else B * T * N
    sizes[1] = B * N
    sizes[2] = packed_elements(D, N, itemsize) if pack_w and not given else 0
    sizes[3] = packed_elements(U, N, itemsize) if pack_r and not given else 0
    return per_step


cdef inline const floating* step_inputs(const floating* x, Py_ssize_t T, Py_ssize_t D, const int64_t* lengths,
                                        Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t s, bint reverse, floating* xs,
                                        Py_ssize_t* lda) noexcept nogil:
    """The inputs of rows [lo, hi) (active_rows) at step s, for a product projecting them per step: read in
    place from x (row stride lda = T * D) when every row is at the same position (forward in time, or all of one
    length), else gathered into xs (B x D, rows at bb * D, lda = D; zeros for inactive rows). Inactive rows inside
    the block are projected and never read."""
    cdef Py_ssize_t bb
    cdef bint same = not reverse
    if not same:
        same = True
        for bb in range(lo + 1, hi):
            if lengths[bb] != lengths[lo]:
                same = False
                break
    if same:
        lda[0] = T * D
        return x + (lo * T + position(s, lengths[lo], reverse)) * D
    for bb in range(lo, hi):
        if lengths[bb] <= s:
            memset(xs + bb * D, 0, D * sizeof(floating))
        else:
            memcpy(xs + bb * D, x + (bb * T + position(s, lengths[bb], reverse)) * D, D * sizeof(floating))
    lda[0] = D
    return xs + lo * D


cdef inline void step_preactivations(bint per_step, const floating* x, Py_ssize_t T, Py_ssize_t D,
                                     const int64_t* lengths, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t s,
                                     bint reverse, const floating* Wp, const floating* h, Py_ssize_t U,
                                     const floating* R, const floating* Rp, Py_ssize_t N, floating* hr, floating* xs,
                                     int isa) noexcept nogil:
    """Step s's products for rows [lo, hi) (active_rows) of a forward with one gate matrix (LSTM, SimpleRNN):
    hr = h R, or with per_step (forward_scratch) hr = x_t W + h R in one product over the packed Wp and Rp,
    x_t from step_inputs (xs: its gather buffer). Rows at lo..hi of h and hr (row strides U, N)."""
    cdef Py_ssize_t lda
    cdef const floating* xt
    if not per_step:
        product(hi - lo, U, h + lo * U, U, R, N, False, Rp, N, hr + lo * N, N, isa, panels_backward(s, hi - lo))
        return
    xt = step_inputs(x, T, D, lengths, lo, hi, s, reverse, xs, &lda)
    packed_matmul2(hi - lo, D, xt, lda, Wp, U, h + lo * U, U, Rp, N, hr + lo * N, N, isa)


cdef inline void backward_scratch(Py_ssize_t* sizes, Py_ssize_t B, Py_ssize_t T, Py_ssize_t D, Py_ssize_t U,
                                  Py_ssize_t N, const int64_t* lengths, Py_ssize_t itemsize) noexcept nogil:
    """The parts of the scratch block of the matching backward: dA of every position (the matmuls after the loop
    read it), one step's dA, one step's dA @ R.T; R.T (every step) and W.T (dx) packed where that pays; the work
    of weight_grads; x with zeros at padded positions for dW (active_inputs), only when some row is padded."""
    sizes[0] = B * T * N
    sizes[1] = B * N
    sizes[2] = B * U
    sizes[3] = packed_elements(N, U, itemsize) if pack_pays_steps(max_length(lengths, B), B) else 0
    sizes[4] = packed_elements(N, D, itemsize) if pack_pays_rows(B * T) else 0
    sizes[5] = weight_grads_work(max(D, U), N, B * T, itemsize)
    sizes[6] = B * T * D if has_padding(lengths, B, T) else 0


cdef inline floating* pack_for(const floating* B, Py_ssize_t ldb, Py_ssize_t K, Py_ssize_t N, bint transposed,
                               floating* buffer) noexcept nogil:
    """The packed K x N right operand (B, or B.T when `transposed`; row stride ldb) in `buffer` (packed_elements
    of it), or NULL when buffer is NULL: the kernel's Python part allocates a buffer only where packing pays
    (pack_pays), so that decision is made once per call. Pass the result to `product`."""
    if buffer == NULL:
        return NULL
    cdef floating* P = aligned64(buffer)
    if transposed:
        pack_transposed(B, ldb, K, N, P)
    else:
        pack(B, ldb, K, N, P)
    return P


cdef inline const floating* packed_weights(const floating* src, Py_ssize_t ld, Py_ssize_t K, Py_ssize_t N,
                                         floating* buffer, bint prepacked) noexcept nogil:
    """pack_for(src, ld, K, N, False, buffer) or, when `prepacked`, buffer itself: src packed once before, by a
    <cell>_pack entry, into an array starting at a 64-byte boundary (kernels/README.md, "Packed weights")."""
    if prepacked:
        return buffer
    return pack_for(src, ld, K, N, False, buffer)


cdef inline void product(Py_ssize_t M, Py_ssize_t K, const floating* A, Py_ssize_t lda, const floating* B,
                         Py_ssize_t ldb, bint transposed, const floating* P, Py_ssize_t N, floating* C,
                         Py_ssize_t ldc, int isa, bint backward=False) noexcept nogil:
    """C (M, N) = A (M, K) @ B (K x N; B.T when `transposed`), through its packed copy P when there is one
    (pack_for), else BLAS. C is overwritten. backward: P's panels last to first (panels_backward)."""
    if P != NULL:
        packed_matmul(M, K, A, lda, P, N, C, ldc, isa, backward)
    else:
        gemm(False, transposed, <int> M, <int> N, <int> K, <floating> 1, A, <int> lda, B, <int> ldb, <floating> 0,
             C, <int> ldc)


cdef inline bint panels_backward(Py_ssize_t step, Py_ssize_t rows) noexcept nogil:
    """Whether the time loop's product with R (or R.T) at `step` runs through its panels last to first: at every
    other step when it has one row. Each step streams all of R; reversing the direction each step starts a pass
    with the panels the previous one read last, still in L2. Measured side by side (float32, T=100, batch 1, one
    thread): 0.94-0.96x the time of a call with R of 1 MB (LSTM and GRU 256 units, SimpleRNN 512; L2 is 1 MB
    here), 0.96x at LSTM 128 and 1024, 1.0x at LSTM 512; training 0.97x (LSTM, GRU 256); 2 threads (the column
    split, each thread its share of R) 0.98-0.99x. With 4 or 16 rows 1.00-1.01x: not done there."""
    return rows == 1 and step % 2 == 1


cdef inline void packed_matmul(Py_ssize_t M, Py_ssize_t K, const floating* A, Py_ssize_t lda, const floating* P,
                               Py_ssize_t N, floating* C, Py_ssize_t ldc, int isa, bint backward=False
                               ) noexcept nogil:
    """C (M, N) = A (M, K) @ P, P packed by pack / pack_transposed; row-major A and C with row strides lda, ldc.
    isa: fr_isa(), read once per kernel call. C is overwritten (never read). K == 0 gives zeros.
    backward: P's panels last to first (the same result: panels_backward)."""
    packed_matmul_into(M, K, A, lda, P, N, C, ldc, False, isa, backward)


cdef inline void packed_matmul_into(Py_ssize_t M, Py_ssize_t K, const floating* A, Py_ssize_t lda,
                                    const floating* P, Py_ssize_t N, floating* C, Py_ssize_t ldc, bint accumulate,
                                    int isa, bint backward=False) noexcept nogil:
    """packed_matmul, or with `accumulate` C += A @ P."""
    cdef Py_ssize_t i0 = 0, m, rows = max(4, PACKED_CHUNK_BYTES // max(1, K * <Py_ssize_t> sizeof(floating)) // 4 * 4)
    while i0 < M:
        m = min(rows, M - i0)
        if floating is float:
            fr_matmul_f32(<int> m, <int> K, A + i0 * lda, lda, P, <int> N, C + i0 * ldc, ldc, accumulate, backward,
                          isa)
        else:
            fr_matmul_f64(<int> m, <int> K, A + i0 * lda, lda, P, <int> N, C + i0 * ldc, ldc, accumulate, backward,
                          isa)
        i0 += m


cdef inline void packed_matmul2(Py_ssize_t M, Py_ssize_t K, const floating* A, Py_ssize_t lda, const floating* P,
                                Py_ssize_t K2, const floating* A2, Py_ssize_t lda2, const floating* P2,
                                Py_ssize_t N, floating* C, Py_ssize_t ldc, int isa) noexcept nogil:
    """C (M, N) = A (M, K) @ P + A2 (M, K2) @ P2, both packed (pack), summed in registers: one pass over C."""
    if floating is float:
        fr_matmul2_f32(<int> M, <int> K, A, lda, P, <int> K2, A2, lda2, P2, <int> N, C, ldc, False, False, isa)
    else:
        fr_matmul2_f64(<int> M, <int> K, A, lda, P, <int> K2, A2, lda2, P2, <int> N, C, ldc, False, False, isa)


# ---------------------------------------------------------------------------------------------------------------
# Weight gradients: C = A^T @ dZ summed over all positions (x^T dA for the kernel W, h^T dA for R). Here k (the
# positions) goes in chunks of WGRAD_K_CHUNK: each chunk of dZ is packed once in panels, A's rows for it are
# taken in blocks of about WGRAD_BLOCK_BYTES of columns (they stay in L2 while the panels pass), and the chunk's
# products are added into C. On AVX-512 the product reads A transposed where it lies (fr_matmul_at); on AVX2 and
# baseline each block is first copied transposed, as reading in place measured slower there (float32, 1600 x 256
# x 768: 71 vs 98 GFLOP/s on AVX2, 27 vs 36 baseline); on AVX-512 in place vs the copy: 1.2-1.3x at 6400 x 128 x
# 128 (the copy took a fifth of the time), 1.1x at 6400 x 128 x 384, 1.0x at 1600 x 1024 x 3072. Measured against scipy's OpenBLAS (gemm with the transposed operand as it is), one
# core, float32, same process: 1.02-1.21x (74 -> 90 GFLOP/s at 128 x 6400 x 384, GRU 128 units at batch 64;
# 90 -> 104 at 256 x 100 x 1024). Chunks of 256 positions were 0.9x at 1024 x 3200 x 4096: C (16 MB) is read and
# written once per chunk.
# ---------------------------------------------------------------------------------------------------------------

cdef enum:
    WGRAD_K_CHUNK = 512
    WGRAD_BLOCK_BYTES = 512 * 1024


cdef inline Py_ssize_t _wgrad_rows(Py_ssize_t M, Py_ssize_t kc, Py_ssize_t itemsize) noexcept nogil:
    """Rows of A^T per transposed block: a multiple of 4 (the matmul's row block) near WGRAD_BLOCK_BYTES."""
    return min(M, max(4, WGRAD_BLOCK_BYTES // (kc * itemsize) // 4 * 4))


cdef inline Py_ssize_t weight_grads_work(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, Py_ssize_t itemsize) noexcept nogil:
    """Elements of the work buffer weight_grads needs for A's of up to M columns, N columns of dZ and K positions."""
    cdef Py_ssize_t kc = max(1, min(K, WGRAD_K_CHUNK))
    return packed_elements(kc, N, itemsize) + _wgrad_rows(max(M, 1), kc, itemsize) * kc


cdef inline void _transpose_block(const floating* A, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t cols,
                                  floating* AT) noexcept nogil:
    """AT (cols, rows), row stride rows = the rows x cols block of A (row stride lda), transposed (packed_gemm.h)."""
    if floating is float:
        fr_transpose_f32(A, lda, rows, cols, AT, rows)
    else:
        fr_transpose_f64(A, lda, rows, cols, AT, rows)


cdef inline void weight_grads(Py_ssize_t K, Py_ssize_t N, const floating* dZ, Py_ssize_t ldz,
                              Py_ssize_t M1, const floating* A1, Py_ssize_t lda1, floating* C1,
                              Py_ssize_t M2, const floating* A2, Py_ssize_t lda2, floating* C2,
                              Py_ssize_t ldc, floating* work, int isa) noexcept nogil:
    """C1 (M1, N) = A1^T @ dZ and, unless A2 is NULL, C2 (M2, N) = A2^T @ dZ, with dZ (K, N), A1 (K, M1),
    A2 (K, M2) row-major (row strides ldz, lda1, lda2) and C1, C2 of row stride ldc: each chunk of dZ is packed
    once for both. work: weight_grads_work(max(M1, M2), N, K) elements. K == 0 gives zeros."""
    cdef Py_ssize_t item = sizeof(floating), kc = max(1, min(K, WGRAD_K_CHUNK)), k0, kk, m0
    cdef floating* P = aligned64(work)
    cdef floating* AT = work + packed_elements(kc, N, item)
    if K == 0:
        for m0 in range(M1):
            memset(C1 + m0 * ldc, 0, N * sizeof(floating))
        if A2 != NULL:
            for m0 in range(M2):
                memset(C2 + m0 * ldc, 0, N * sizeof(floating))
        return
    k0 = 0
    while k0 < K:
        kk = min(kc, K - k0)
        pack(dZ + k0 * ldz, ldz, kk, N, P)
        _wgrad_chunk(k0, kk, kc, N, P, M1, A1, lda1, C1, ldc, AT, isa)
        if A2 != NULL:
            _wgrad_chunk(k0, kk, kc, N, P, M2, A2, lda2, C2, ldc, AT, isa)
        k0 += kc


cdef inline void _wgrad_chunk(Py_ssize_t k0, Py_ssize_t kk, Py_ssize_t kc, Py_ssize_t N, const floating* P,
                              Py_ssize_t M, const floating* A, Py_ssize_t lda, floating* C, Py_ssize_t ldc,
                              floating* AT, int isa) noexcept nogil:
    """C (+)= A[k0:k0+kk]^T @ (the chunk packed in P), in blocks of A's columns: read in place (AVX-512) or
    copied transposed into AT first."""
    cdef Py_ssize_t step = _wgrad_rows(M, kc, sizeof(floating)), m0 = 0, mm
    while m0 < M:
        mm = min(step, M - m0)
        if isa < 2:
            _transpose_block(A + k0 * lda + m0, lda, kk, mm, AT)
            packed_matmul_into(mm, kk, AT, kk, P, N, C + m0 * ldc, ldc, k0 > 0, isa)
        elif floating is float:
            fr_matmul_at_f32(<int> mm, <int> kk, A + k0 * lda + m0, lda, P, <int> N, C + m0 * ldc, ldc, k0 > 0, isa)
        else:
            fr_matmul_at_f64(<int> mm, <int> kk, A + k0 * lda + m0, lda, P, <int> N, C + m0 * ldc, ldc, k0 > 0, isa)
        m0 += step


# ---------------------------------------------------------------------------------------------------------------
# Element-wise math that the C compiler can vectorize
#
# A libm call (exp, tanh) cannot be vectorized and costs 3-30 ns: with them the gate math of an LSTM took
# nearly as long as its matmuls, and the kernel was slower than a NumPy loop (whose exp/tanh are SIMD). The
# functions below are arithmetic and selects only (a polynomial, a power of two built in the exponent bits),
# so gcc -O3 turns the loops sigmoid_inplace / tanh_inplace and the kernels' row loops into SIMD code; this
# needs -fno-trapping-math (setup.py), without which gcc will not if-convert a floating-point select.
# Accuracy, max over 4M-point sweeps against long double: float exp 1.2 ulp, sigmoid 2.7, tanh 2.3;
# double exp 1.2, sigmoid 2.8, tanh 3.2. NaN propagates; +-inf and |a| ~ 1e4 give the exact limits.
# ---------------------------------------------------------------------------------------------------------------

cdef inline float _float_from_bits(uint32_t i) noexcept nogil:
    cdef float f
    memcpy(&f, &i, sizeof(f))  # a bit cast; compiles to nothing, and vectorizes
    return f


cdef inline uint32_t _float_bits(float f) noexcept nogil:
    cdef uint32_t i
    memcpy(&i, &f, sizeof(f))
    return i


cdef inline double _double_from_bits(uint64_t i) noexcept nogil:
    cdef double f
    memcpy(&f, &i, sizeof(f))
    return f


cdef inline uint64_t _double_bits(double f) noexcept nogil:
    cdef uint64_t i
    memcpy(&i, &f, sizeof(f))
    return i


cdef inline floating fabs_(floating a) noexcept nogil:
    # fabs of the argument's own type: a float must not be promoted to double on its way through
    if floating is float:
        return fabsf(a)
    else:
        return fabs(a)


cdef inline floating copysign_(floating a, floating b) noexcept nogil:
    if floating is float:
        return copysignf(a, b)
    else:
        return copysign(a, b)


cdef inline floating exp_nonpos(floating x) noexcept nogil:
    """exp(x) for x <= 0 (all sigmoid and tanh need), -inf and NaN.

    x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; exp(r) by its Taylor polynomial (truncation
    < 0.1 ulp), times 2^n built in the exponent bits. n is rounded by adding 1.5 * 2^mantissa_bits: the sum's
    low mantissa bits then hold n, so no float-to-int conversion is needed. ln2 is split in a part with few
    bits (n * hi is exact) and the rest (Cody-Waite). Results below exp(-87) ~ 1.6e-38 (float) or
    exp(-708) ~ 3.3e-308 (double), i.e. about the smallest normal number, flush to 0.
    """
    cdef float tf, nf, rf, pf
    cdef double td, nd, rd, pd
    if floating is float:
        tf = x * <float> 1.4426950408889634 + <float> 12582912.0          # 1.5 * 2^23
        nf = tf - <float> 12582912.0
        rf = (x - nf * <float> 0.693359375) - nf * <float> -2.1219444005469058e-4
        pf = <float> (1.0 / 5040.0)
        pf = pf * rf + <float> (1.0 / 720.0)
        pf = pf * rf + <float> (1.0 / 120.0)
        pf = pf * rf + <float> (1.0 / 24.0)
        pf = pf * rf + <float> (1.0 / 6.0)
        pf = pf * rf + <float> 0.5
        pf = pf * rf + <float> 1
        pf = pf * rf + <float> 1
        # n in [-126, 0] here: biased exponent n + 127 >= 1, a normal power of two
        pf = pf * _float_from_bits((_float_bits(tf) - _float_bits(<float> 12582912.0) + <uint32_t> 127) << 23)
        return <float> 0 if x < <float> -87.0 else pf                              # NaN < c is false: NaN goes on
    else:
        td = x * 1.4426950408889634 + 6755399441055744.0                    # 1.5 * 2^52
        nd = td - 6755399441055744.0
        rd = (x - nd * 0.693145751953125) - nd * 1.4286068203094173e-06
        pd = 1.0 / 6227020800.0                                               # 1/13!
        pd = pd * rd + 1.0 / 479001600.0
        pd = pd * rd + 1.0 / 39916800.0
        pd = pd * rd + 1.0 / 3628800.0
        pd = pd * rd + 1.0 / 362880.0
        pd = pd * rd + 1.0 / 40320.0
        pd = pd * rd + 1.0 / 5040.0
        pd = pd * rd + 1.0 / 720.0
        pd = pd * rd + 1.0 / 120.0
        pd = pd * rd + 1.0 / 24.0
        pd = pd * rd + 1.0 / 6.0
        pd = pd * rd + 0.5
        pd = pd * rd + 1
        pd = pd * rd + 1
        # n in [-1021, 0] here: biased exponent n + 1023 >= 2
        pd = pd * _double_from_bits((_double_bits(td) - _double_bits(6755399441055744.0) + <uint64_t> 1023) << 52)
        return 0 if x < -708.0 else pd


cdef inline floating sigmoid(floating a) noexcept nogil:
    """Logistic sigmoid that never overflows and propagates NaN.

    exp is only taken of -|a| <= 0, so it lies in [0, 1]: 1 / (1 + e) for a >= 0, e / (1 + e) for a < 0,
    chosen by a select, not a branch. A NaN gives e = NaN and so NaN either way.
    """
    cdef floating one = 1
    cdef floating e = exp_nonpos(-fabs_(a))
    cdef floating s = one / (one + e)
    cdef floating es = e * s
    # Both sides are computed before the select: gcc only if-converts (and so vectorizes) a select whose
    # sides are plain values, as floating-point arithmetic may trap.
    return s if a >= 0 else es


cdef inline floating tanh_(floating a) noexcept nogil:
    """tanh; NaN propagates, +-inf and |a| ~ 1e4 give +-1.

    Large |a|: (1 - e) / (1 + e) with e = exp(-2|a|), sign restored. Small |a|, where 1 - e would cancel:
    the Taylor series a + a^3 (-1/3 + a^2 (2/15 + ...)) up to the order whose next term is < 0.1 ulp.
    """
    cdef floating one = 1
    cdef floating ax = fabs_(a)
    cdef floating e = exp_nonpos(-2 * ax)
    cdef floating big = copysign_((one - e) / (one + e), a)
    cdef floating z = a * a, p, small
    if floating is float:
        # |a| < 0.4: next term (a^15) < 5e-9 relative; above, e < 0.45 so 1 - e loses < 1 bit
        p = <float> 0.0035921280365724811
        p = p * z + <float> -0.0088632355299021973
        p = p * z + <float> 0.021869488536155203
        p = p * z + <float> -0.053968253968253971
        p = p * z + <float> 0.13333333333333333
        p = p * z + <float> -0.33333333333333331
        small = copysign_(a + a * z * p, a)  # copysign: tanh(-0.0) = -0.0
        return small if ax < <float> 0.4 else big
    else:
        # |a| < 0.2: next term (a^21) < 1e-18 relative; above, e < 0.68 and 1 - e is exact (Sterbenz)
        p = -0.00023912911424355248
        p = p * z + 0.00059002744094558595
        p = p * z + -0.0014558343870513183
        p = p * z + 0.0035921280365724811
        p = p * z + -0.0088632355299021973
        p = p * z + 0.021869488536155203
        p = p * z + -0.053968253968253971
        p = p * z + 0.13333333333333333
        p = p * z + -0.33333333333333331
        small = copysign_(a + a * z * p, a)
        return small if ax < 0.2 else big


cdef inline void sigmoid_inplace(floating* a, Py_ssize_t n) noexcept nogil:
    """a[:n] = sigmoid(a[:n]); a plain loop over one array, which the compiler vectorizes."""
    cdef Py_ssize_t j
    for j in range(n):
        a[j] = sigmoid(a[j])


cdef inline void tanh_inplace(floating* a, Py_ssize_t n) noexcept nogil:
    """a[:n] = tanh(a[:n]), vectorized like sigmoid_inplace."""
    cdef Py_ssize_t j
    for j in range(n):
        a[j] = tanh_(a[j])


# ---------------------------------------------------------------------------------------------------------------
# The forward gate math of one row over n units, shared by the whole-batch kernels (n = units) and the
# column-split kernel (cython_threaded, n = a thread's units). `a` holds the row's h @ R, gate-major blocks of n;
# xrow and bias the matching input projection and bias. Plain loops over contiguous runs, which gcc vectorizes.
# ---------------------------------------------------------------------------------------------------------------

cdef inline void simple_rnn_row(floating* a, const floating* xrow, const floating* bias, Py_ssize_t n,
                                bint relu) noexcept nogil:
    """a = act(a + xrow + bias): the new h, in place. xrow NULL: a holds x W already (step_projection_pays)."""
    cdef Py_ssize_t j
    cdef floating zero = 0
    if xrow == NULL:
        for j in range(n):
            a[j] += bias[j]
    else:
        for j in range(n):
            a[j] += xrow[j] + bias[j]
    if relu:
        for j in range(n):
            a[j] = zero if a[j] <= zero else a[j]  # NaN is not <= 0: it propagates, like np.maximum
    else:
        tanh_inplace(a, n)


cdef inline void lstm_row(floating* a, const floating* xrow, const floating* bias, Py_ssize_t n, floating* c,
                          floating* h) noexcept nogil:
    """a (i, f, g, o) = activated a + xrow + bias, in place; c = f * c + i * g; h = o * tanh(c). xrow NULL: a
    holds x W already (step_projection_pays)."""
    cdef Py_ssize_t j
    if xrow == NULL:
        for j in range(4 * n):
            a[j] += bias[j]
    else:
        for j in range(4 * n):
            a[j] += xrow[j] + bias[j]
    sigmoid_inplace(a, 2 * n)
    tanh_inplace(a + 2 * n, n)
    sigmoid_inplace(a + 3 * n, n)
    for j in range(n):
        c[j] = a[n + j] * c[j] + a[j] * a[2 * n + j]
    for j in range(n):
        h[j] = a[3 * n + j] * tanh_(c[j])


cdef inline void gru_row(floating* a, const floating* xrow, const floating* b_in, const floating* b_rec,
                         Py_ssize_t n, const floating* h_prev, floating* h, floating* vh) noexcept nogil:
    """GRU, reset_after=True. a holds h_prev R (z, r, h columns), xrow x W: a (z, r) = sigmoid(xrow + b_in + a +
    b_rec), a (h) = tanh(xrow + b_in + r * (a + b_rec)) (= hh), in place; h = z * h_prev + (1 - z) * hh (h may be
    h_prev). vh: NULL, or receives the h gate's a + b_rec (what backward needs for r's gradient)."""
    cdef Py_ssize_t j
    cdef floating one = 1
    for j in range(2 * n):
        a[j] = (xrow[j] + b_in[j]) + (a[j] + b_rec[j])
    sigmoid_inplace(a, 2 * n)
    if vh != NULL:
        for j in range(n):
            vh[j] = a[2 * n + j] + b_rec[2 * n + j]
    for j in range(n):
        a[2 * n + j] = (xrow[2 * n + j] + b_in[2 * n + j]) + a[n + j] * (a[2 * n + j] + b_rec[2 * n + j])
    tanh_inplace(a + 2 * n, n)
    for j in range(n):
        h[j] = a[j] * h_prev[j] + (one - a[j]) * a[2 * n + j]


cdef inline void gru_gates_row(floating* a, const floating* xrow, const floating* bias, Py_ssize_t n,
                               const floating* h_prev, floating* rh) noexcept nogil:
    """GRU, reset_after=False, the first half of a step. a (z, r) holds h_prev R[:, :2U], xrow x W: a (z, r) =
    sigmoid(xrow + bias + a), in place; rh = r * h_prev (the left operand of the h gate's product)."""
    cdef Py_ssize_t j
    for j in range(2 * n):
        a[j] = (xrow[j] + bias[j]) + a[j]
    sigmoid_inplace(a, 2 * n)
    for j in range(n):
        rh[j] = a[n + j] * h_prev[j]


cdef inline void gru_state_row(floating* a, const floating* xrow, const floating* bias, Py_ssize_t n,
                               const floating* h_prev, floating* h) noexcept nogil:
    """GRU, reset_after=False, the second half: a (h) holds (r * h_prev) R[:, 2U:]; a (h) = tanh(xrow + bias + a)
    (= hh), in place; h = z * h_prev + (1 - z) * hh (h may be h_prev)."""
    cdef Py_ssize_t j
    cdef floating one = 1
    for j in range(n):
        a[2 * n + j] = (xrow[2 * n + j] + bias[2 * n + j]) + a[2 * n + j]
    tanh_inplace(a + 2 * n, n)
    for j in range(n):
        h[j] = a[j] * h_prev[j] + (one - a[j]) * a[2 * n + j]


# ---------------------------------------------------------------------------------------------------------------
# The backward gate math of one row over n units, shared in the same way: the whole-batch kernels (n = units =
# stride) and the column-split kernel (n = a thread's units, pointers at its first unit, stride = units). Gate g
# of unit j sits at [g * stride + j] in the gate rows (ws_gates and the gradients written); dh, dc and the other
# per-unit rows are contiguous. dh (the running gradient w.r.t. h) and dc are updated in place.
# ---------------------------------------------------------------------------------------------------------------

cdef inline void simple_rnn_backward_row(const floating* hnew, const floating* dyrow, const floating* dh,
                                         floating* da, Py_ssize_t n, bint relu) noexcept nogil:
    """da = (dh + dy) * act'(h): the gradient w.r.t. the pre-activation (dh itself is replaced by da @ R.T)."""
    cdef Py_ssize_t j
    cdef floating one = 1, zero = 0, g, hv
    for j in range(n):
        g = dh[j] + dyrow[j]
        hv = hnew[j]
        if relu:
            da[j] = g * (one if hv > zero else zero)  # g * 0, not 0: a NaN gradient stays NaN
        else:
            da[j] = g * (one - hv * hv)


cdef extern from "gate_grads.h":
    # The loops of the three functions below, in C for restrict (gate_grads.h says why)
    void fr_lstm_grads_f32(const float* gates, const float* cprev, const float* dyrow, const float* dh, float* dc,
                           float* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_lstm_grads_f64(const double* gates, const double* cprev, const double* dyrow, const double* dh,
                           double* dc, double* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_grads_f32(const float* gates, const float* hprev, const float* vh, const float* dyrow, float* dh,
                          float* du, float* dv, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_grads_f64(const double* gates, const double* hprev, const double* vh, const double* dyrow,
                          double* dh, double* du, double* dv, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_reset_grads1_f32(const float* gates, const float* hprev, const float* dyrow, float* dh, float* da,
                                 Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_reset_grads1_f64(const double* gates, const double* hprev, const double* dyrow, double* dh,
                                 double* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_reset_grads2_f32(const float* gates, const float* hprev, const float* drh, float* dh, float* da,
                                 Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void fr_gru_reset_grads2_f64(const double* gates, const double* hprev, const double* drh, double* dh,
                                 double* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil


cdef inline void lstm_backward_row(const floating* gates, const floating* cprev, const floating* cnew,
                                   const floating* dyrow, const floating* dh, floating* dc, floating* da,
                                   Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """da (i, f, g, o) = the gradients w.r.t. the gates' pre-activations; dc = dc_t * f, the gradient w.r.t. c_{t-1}
    (dh itself is replaced by da @ R.T):
        dh_t = dh + dy,  dc_t = dc + dh_t * o * (1 - tanh(c_t)^2)
        da_i = dc_t * g * i (1 - i),  da_f = dc_t * c_{t-1} * f (1 - f),  da_g = dc_t * i * (1 - g^2),
        da_o = dh_t * tanh(c_t) * o (1 - o)
    All pointers to different buffers (restrict, in gate_grads.h)."""
    cdef Py_ssize_t j
    # tanh(c_t) goes to the o-gate slot first, in a loop of its own that gcc vectorizes
    for j in range(n):
        da[3 * stride + j] = tanh_(cnew[j])
    if floating is float:
        fr_lstm_grads_f32(gates, cprev, dyrow, dh, dc, da, n, stride)
    else:
        fr_lstm_grads_f64(gates, cprev, dyrow, dh, dc, da, n, stride)


cdef inline void gru_backward_row(const floating* gates, const floating* hprev, const floating* vh,
                                  const floating* dyrow, floating* dh, floating* du, floating* dv,
                                  Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """GRU, reset_after=True. du (z, r, h) = the gradients w.r.t. the input projection's gates, dv the same w.r.t.
    the recurrent projection (its h gate is r * du's); dh = (dh + dy) * z, the direct path (dv @ R.T is added by
    the caller):
        dh_t = dh + dy,  da_h = dh_t (1 - z)(1 - hh^2),  da_z = dh_t (h_prev - hh) z (1 - z),
        da_r = da_h * vh * r (1 - r)   (vh = the h gate's h_prev R + b_rec)
    All pointers to different buffers (restrict, in gate_grads.h)."""
    if floating is float:
        fr_gru_grads_f32(gates, hprev, vh, dyrow, dh, du, dv, n, stride)
    else:
        fr_gru_grads_f64(gates, hprev, vh, dyrow, dh, du, dv, n, stride)


cdef inline void gru_reset_backward_row1(const floating* gates, const floating* hprev, const floating* dyrow,
                                         floating* dh, floating* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """GRU, reset_after=False, before the product d(r * h_prev) = da_h @ R_h.T: da's z slot = dz (made da_z by
    row2), its h slot = da_h; dh = (dh + dy) * z, the direct path."""
    if floating is float:
        fr_gru_reset_grads1_f32(gates, hprev, dyrow, dh, da, n, stride)
    else:
        fr_gru_reset_grads1_f64(gates, hprev, dyrow, dh, da, n, stride)


cdef inline void gru_reset_backward_row2(const floating* gates, const floating* hprev, const floating* drh,
                                         floating* dh, floating* da, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """GRU, reset_after=False, after that product (drh = d(r * h_prev)): da's z, r slots = da_z, da_r; dh += the
    reset path drh * r (da_zr @ R[:, :2U].T is added by the caller)."""
    if floating is float:
        fr_gru_reset_grads2_f32(gates, hprev, drh, dh, da, n, stride)
    else:
        fr_gru_reset_grads2_f64(gates, hprev, drh, dh, da, n, stride)


# ---------------------------------------------------------------------------------------------------------------
# Lengths: which rows run at a processing step, and where their data sits
# ---------------------------------------------------------------------------------------------------------------

cdef inline int64_t max_length(const int64_t* lengths, Py_ssize_t B) noexcept nogil:
    """Number of processing steps: no row is active at or past the longest length."""
    cdef int64_t m = 0
    cdef Py_ssize_t b
    for b in range(B):
        if lengths[b] > m:
            m = lengths[b]
    return m


cdef inline void active_rows(const int64_t* lengths, Py_ssize_t B, Py_ssize_t s,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """The smallest row range [lo, hi) holding every row active at step s (lo = hi = 0 if none is).

    The per-step matmul runs over this one contiguous block; rows inside it that are inactive are computed
    but never read, which is cheaper than gathering the active rows.
    """
    cdef Py_ssize_t b
    lo[0] = 0
    hi[0] = 0
    for b in range(B):
        if lengths[b] > s:
            lo[0] = b
            break
    else:
        return
    for b in range(B - 1, lo[0] - 1, -1):
        if lengths[b] > s:
            hi[0] = b + 1
            return


cdef inline Py_ssize_t position(Py_ssize_t s, int64_t length, bint reverse) noexcept nogil:
    """Input position consumed at processing step s by a row of this length (s < length)."""
    return length - 1 - s if reverse else s


cdef inline void zero_padding(floating* a, const int64_t* lengths, Py_ssize_t B, Py_ssize_t T,
                              Py_ssize_t width) noexcept nogil:
    """a[b, lengths[b]:, :] = 0 for an array a of shape (B, T, width)."""
    cdef Py_ssize_t b
    for b in range(B):
        if lengths[b] < T:
            memset(a + (b * T + lengths[b]) * width, 0, (T - lengths[b]) * width * sizeof(floating))


cdef inline bint has_padding(const int64_t* lengths, Py_ssize_t B, Py_ssize_t T) noexcept nogil:
    """Whether some row is shorter than T."""
    cdef Py_ssize_t b
    for b in range(B):
        if lengths[b] < T:
            return True
    return False


cdef inline const floating* active_inputs(const floating* x, const int64_t* lengths, Py_ssize_t B, Py_ssize_t T,
                                          Py_ssize_t D, floating* scratch) noexcept nogil:
    """x (B, T, D) for backward's dW = x2d.T @ dU over all positions: x itself if scratch is NULL, else x copied to
    scratch with zeros at padded positions. dU is 0 there, but padded inputs need not be finite (the forward never
    reads them) and 0 * NaN = NaN; wrappers pass a scratch buffer when has_padding(). Never writes x."""
    if scratch == NULL:
        return x
    memcpy(scratch, x, B * T * D * sizeof(floating))
    zero_padding(scratch, lengths, B, T, D)
    return scratch


cdef inline void column_sums(const floating* a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lda,
                             double* acc, floating* out) noexcept nogil:
    """out[j] = sum_i a[i, j] over a (rows, cols) block with row stride lda.

    Rows are read in order (cache friendly) into a double accumulator acc (cols elements, scratch), so a
    float32 bias gradient summed over batch*timesteps rows does not lose digits.
    """
    cdef Py_ssize_t i, j
    cdef const floating* row
    for j in range(cols):
        acc[j] = 0
    for i in range(rows):
        row = a + i * lda
        for j in range(cols):
            acc[j] += row[j]
    for j in range(cols):
        out[j] = <floating> acc[j]
