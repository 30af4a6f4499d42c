/* Packed-panel matrix product for the Cython kernels: C (M, N) = A (M, K) @ P, where P is a K x N matrix
   copied once into panels (the recurrent kernel R, or W, packed once per call), run on AVX-512, AVX2+FMA or
   baseline x86-64, picked at run time. Included by kernels/fused_blas.pxd (declarations and the Cython-side
   packing and row chunking live there); each extension module gets its own static copy.

   Why not BLAS: the per-step products of an RNN are small-M GEMMs against the same B every step. OpenBLAS packs B
   again on every call (or, under its small-matrix limit, reads it unpacked with large strides); packing once per
   call and streaming the panels every step measured 1.5-6x as fast at 1-16 rows and 1.0-1.15x on the input
   projection (this Zen 4, one core: 100-117 GFLOP/s, the FMA peak being ~117, kernels/cpu.pyx). */
#ifndef FASTRNN_PACKED_GEMM_H
#define FASTRNN_PACKED_GEMM_H

#include <stddef.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------------------
   C (M, N) = A (M, K) @ P (or C += A @ P; also + A2 @ P2), P packed in panels (below); row-major A and C with
   row strides lda, ldc.

   Packing: P holds the K x N matrix as ceil(N / NR) panels of NR columns, each panel K rows of NR
   contiguous elements (128 bytes: two 64-byte vectors), the last panel zero-padded; P is 64-byte aligned.
   A panel row is then two aligned vector loads, and a panel is read front to back once per block of rows.
   Blocks of up to MR rows of A keep MR x 2 vector accumulators in registers; with few rows (a GEMV) the k
   loop is split over KS sets of accumulators, so that the FMAs of consecutive k do not wait for each other.
   --------------------------------------------------------------------------------------------------------- */
#define FR_PANEL_BYTES 128

#if defined(__GNUC__)
/* Vectors of each instruction set's width: AVX-512 64 bytes, AVX2 32, SSE2 (baseline x86-64) 16. A panel row is
   FR_PANEL_BYTES / (vector bytes) of them. */
typedef float fr_vf16 __attribute__((vector_size(64)));
typedef float fr_vf8 __attribute__((vector_size(32)));
typedef float fr_vf4 __attribute__((vector_size(16)));
typedef double fr_vd8 __attribute__((vector_size(64)));
typedef double fr_vd4 __attribute__((vector_size(32)));
typedef double fr_vd2 __attribute__((vector_size(16)));
#define FR_INLINE static inline __attribute__((always_inline))

/* The k loops of a block (below; T, V its types): c[s][r][:] += AA[r, k] * PP's row k over the KK rows of one
   source, the k loop split over KS sets of accumulators, the last KK % KS rows into set 0. AA[r, k] is at
   AA[r * LDA + k * AKS]: AKS is 1, or A is read transposed (LDA 1; fr_matmul_at). */
#define FR_BLOCK_SUMS(T, V, KK, AA, LDA, AKS, PP)                                                                  \
    for (k = 0; k + KS <= KK; k += KS) {                                                                    \
        _Pragma("GCC unroll 4") for (s = 0; s < KS; s++) {                                                  \
            V p[NVEC];                                                                                      \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                              \
                p[v] = *(const V*) (PP + (ptrdiff_t) (k + s) * NR + v * VL);                                \
            _Pragma("GCC unroll 4") for (r = 0; r < MR; r++) {                                              \
                const T a = AA[r * LDA + (ptrdiff_t) (k + s) * AKS];                                                            \
                _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                          \
                    c[s][r][v] += a * p[v];                                                                 \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    for (; k < KK; k++) {                                                                                   \
        V p[NVEC];                                                                                          \
        _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                                  \
            p[v] = *(const V*) (PP + (ptrdiff_t) k * NR + v * VL);                                          \
        _Pragma("GCC unroll 4") for (r = 0; r < MR; r++) {                                                  \
            const T a = AA[r * LDA + (ptrdiff_t) k * AKS];                                                                    \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                              \
                c[0][r][v] += a * p[v];                                                                     \
        }                                                                                                   \
    }

/* One block of MR rows (MR <= 4) and one panel, with the k loop split over KS sets of accumulators:
   a template over the element type T and the vector type V, as a macro. acc: add to C instead of overwriting it
   (the weight gradients, summed over chunks of k). */
#define FR_DEFINE_BLOCK(T, V, NAME)                                                                         \
FR_INLINE void NAME(const int MR, const int KS, int K, const T* A, ptrdiff_t lda, ptrdiff_t aks,          \
                    const T* P, int K2, const T* A2, ptrdiff_t lda2, const T* P2, int nc, T* C, ptrdiff_t ldc,  \
                    int acc) {                                                                              \
    enum { NR = FR_PANEL_BYTES / sizeof(T), NVEC = FR_PANEL_BYTES / sizeof(V), VL = sizeof(V) / sizeof(T) }; \
    V c[4][4][NVEC];                                                                                        \
    int k, r, s, v, j;                                                                                      \
    _Pragma("GCC unroll 4") for (s = 0; s < KS; s++)                                                        \
        _Pragma("GCC unroll 4") for (r = 0; r < MR; r++)                                                    \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                              \
                c[s][r][v] = (V){0};                                                                        \
    FR_BLOCK_SUMS(T, V, K, A, lda, aks, P)                                                                  \
    FR_BLOCK_SUMS(T, V, K2, A2, lda2, 1, P2)  /* the second source: C = A @ P + A2 @ P2 */                     \
    _Pragma("GCC unroll 4") for (s = 1; s < KS; s++)                                                        \
        _Pragma("GCC unroll 4") for (r = 0; r < MR; r++)                                                    \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                              \
                c[0][r][v] += c[s][r][v];                                                                   \
    _Pragma("GCC unroll 4") for (r = 0; r < MR; r++) {                                                      \
        if (nc == NR) {                                                                                     \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++) {                                            \
                if (acc) {                                                                                  \
                    V old;                                                                                  \
                    memcpy(&old, C + r * ldc + v * VL, sizeof(V));                                          \
                    c[0][r][v] += old;                                                                      \
                }                                                                                           \
                memcpy(C + r * ldc + v * VL, &c[0][r][v], sizeof(V));                                       \
            }                                                                                               \
        } else {                                                                                            \
            T tmp[NR];                                                                                      \
            _Pragma("GCC unroll 8") for (v = 0; v < NVEC; v++)                                              \
                memcpy(tmp + v * VL, &c[0][r][v], sizeof(V));                                               \
            for (j = 0; j < nc; j++)                                                                        \
                C[r * ldc + j] = acc ? C[r * ldc + j] + tmp[j] : tmp[j];                                    \
        }                                                                                                   \
    }                                                                                                       \
}

FR_DEFINE_BLOCK(float, fr_vf16, fr_block_f32_512)
FR_DEFINE_BLOCK(double, fr_vd8, fr_block_f64_512)
FR_DEFINE_BLOCK(float, fr_vf8, fr_block_f32_256)
FR_DEFINE_BLOCK(double, fr_vd4, fr_block_f64_256)
FR_DEFINE_BLOCK(float, fr_vf4, fr_block_f32_128)
FR_DEFINE_BLOCK(double, fr_vd2, fr_block_f64_128)

/* The whole product: panels outer (a panel stays in L1/L2 while the row blocks pass), row blocks inner.
   Register budget by LEVEL: 2 (AVX-512, 32 registers): blocks of 4 rows, GEMV split 4 ways;
   1 (AVX2, 16 registers): 2 rows, GEMV split 2 ways; 0 (SSE2): 1 row, no split.
   backward: the panels last to first (the same sums: each column's are in one panel). A time loop streams all
   of R every step; where R is about the size of the L2 cache, a pass in the other direction than the previous
   step's starts with the panels that pass left in the cache (fused_blas.panels_backward).
   TRANS 1: A is read transposed, A[r, k] at A[k * lda + r] (the weight gradients' x^T and h^T: each k's MR
   values are neighbours, so no transposed copy is needed; K2 is then 0). */
#define FR_DEFINE_MATMUL(T, BLOCK, NAME, ATTR, LEVEL, TRANS)                                                \
ATTR static void NAME(int M, int K, const T* A, ptrdiff_t lda, const T* P, int K2, const T* A2,             \
                      ptrdiff_t lda2, const T* P2, int N, T* C, ptrdiff_t ldc, int acc, int backward) {     \
    enum { NR = FR_PANEL_BYTES / sizeof(T) };                                                               \
    const ptrdiff_t rs = TRANS ? 1 : lda, ks = TRANS ? lda : 1;  /* A's strides between rows, along k */     \
    int q, p, i, npan = (N + NR - 1) / NR;                                                                  \
    for (q = 0; q < npan; q++) {                                                                            \
        p = backward ? npan - 1 - q : q;                                                                    \
        const T* Pp = P + (ptrdiff_t) p * K * NR;                                                           \
        const T* P2p = P2 + (ptrdiff_t) p * K2 * NR;                                                        \
        int nc = N - p * NR < NR ? N - p * NR : NR;                                                         \
        T* Cp = C + p * NR;                                                                                 \
        for (i = 0; i < M;) {                                                                               \
            int left = M - i;                                                                               \
            const T* Ai = A + i * rs;                                                                       \
            const T* A2i = A2 + i * lda2;                                                                   \
            T* Ci = Cp + i * ldc;                                                                           \
            if (LEVEL >= 2 && left >= 4) {                                                                  \
                BLOCK(4, 1, K, Ai, rs, ks, Pp, K2, A2i, lda2, P2p, nc, Ci, ldc, acc); i += 4;               \
            } else if (LEVEL >= 2 && left == 3) {                                                           \
                BLOCK(3, 1, K, Ai, rs, ks, Pp, K2, A2i, lda2, P2p, nc, Ci, ldc, acc); i += 3;               \
            } else if (LEVEL >= 1 && left >= 2) {                                                           \
                BLOCK(2, LEVEL >= 2 ? 2 : 1, K, Ai, rs, ks, Pp, K2, A2i, lda2, P2p, nc, Ci, ldc, acc);      \
                i += 2;                                                                                     \
            } else {                                                                                        \
                BLOCK(1, LEVEL >= 2 ? 4 : LEVEL >= 1 ? 2 : 1, K, Ai, rs, ks, Pp, K2, A2i, lda2, P2p, nc, Ci, \
                      ldc, acc);                                                                            \
                i += 1;                                                                                     \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
}

#if defined(__x86_64__) || defined(__i386__)
#define FR_AVX512 __attribute__((target("avx512f")))
#define FR_AVX2 __attribute__((target("avx2,fma")))
FR_DEFINE_MATMUL(float, fr_block_f32_512, fr_matmul_f32_avx512, FR_AVX512, 2, 0)
FR_DEFINE_MATMUL(double, fr_block_f64_512, fr_matmul_f64_avx512, FR_AVX512, 2, 0)
FR_DEFINE_MATMUL(float, fr_block_f32_256, fr_matmul_f32_avx2, FR_AVX2, 1, 0)
FR_DEFINE_MATMUL(double, fr_block_f64_256, fr_matmul_f64_avx2, FR_AVX2, 1, 0)
FR_DEFINE_MATMUL(float, fr_block_f32_512, fr_matmul_at_f32_avx512, FR_AVX512, 2, 1)
FR_DEFINE_MATMUL(double, fr_block_f64_512, fr_matmul_at_f64_avx512, FR_AVX512, 2, 1)
FR_DEFINE_MATMUL(float, fr_block_f32_256, fr_matmul_at_f32_avx2, FR_AVX2, 1, 1)
FR_DEFINE_MATMUL(double, fr_block_f64_256, fr_matmul_at_f64_avx2, FR_AVX2, 1, 1)
#define FR_X86 1
#endif
FR_DEFINE_MATMUL(float, fr_block_f32_128, fr_matmul_f32_base, , 0, 0)
FR_DEFINE_MATMUL(double, fr_block_f64_128, fr_matmul_f64_base, , 0, 0)
FR_DEFINE_MATMUL(float, fr_block_f32_128, fr_matmul_at_f32_base, , 0, 1)
FR_DEFINE_MATMUL(double, fr_block_f64_128, fr_matmul_at_f64_base, , 0, 1)

#else  /* not GCC / Clang: plain loops */
#define FR_DEFINE_PLAIN(T, NAME, TRANS)                                                                     \
static void NAME(int M, int K, const T* A, ptrdiff_t lda, const T* P, int K2, const T* A2, ptrdiff_t lda2,  \
                 const T* P2, int N, T* C, ptrdiff_t ldc, int acc, int backward) {                          \
    enum { NR = FR_PANEL_BYTES / sizeof(T) };                                                               \
    const ptrdiff_t rs = TRANS ? 1 : lda, ks = TRANS ? lda : 1;                                              \
    int i, j, k;                                                                                            \
    (void) backward;                                                                                        \
    for (i = 0; i < M; i++)                                                                                 \
        for (j = 0; j < N; j++) {                                                                           \
            const T* Pp = P + (ptrdiff_t) (j / NR) * K * NR + j % NR;                                       \
            const T* P2p = P2 + (ptrdiff_t) (j / NR) * K2 * NR + j % NR;                                    \
            T sum = 0;                                                                                      \
            for (k = 0; k < K; k++)                                                                         \
                sum += A[i * rs + k * ks] * Pp[(ptrdiff_t) k * NR];                                       \
            for (k = 0; k < K2; k++)                                                                        \
                sum += A2[i * lda2 + k] * P2p[(ptrdiff_t) k * NR];                                          \
            C[i * ldc + j] = acc ? C[i * ldc + j] + sum : sum;                                              \
        }                                                                                                   \
}
FR_DEFINE_PLAIN(float, fr_matmul_f32_base, 0)
FR_DEFINE_PLAIN(double, fr_matmul_f64_base, 0)
FR_DEFINE_PLAIN(float, fr_matmul_at_f32_base, 1)
FR_DEFINE_PLAIN(double, fr_matmul_at_f64_base, 1)
#endif


/* Instruction set: 2 AVX-512, 1 AVX2+FMA, 0 baseline; fr_isa_max caps it (tests: fr_set_isa_cap, per module). */
static int fr_isa_max = 2;

static int fr_set_isa_cap(int level) {
    int old = fr_isa_max;
    fr_isa_max = level;
    return old;
}

static int fr_isa(void) {
    int isa = 0;
#if defined(FR_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        isa = 2;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        isa = 1;
#endif
    return isa < fr_isa_max ? isa : fr_isa_max;
}

/* fr_matmul2_f32 / fr_matmul2_f64: C = A @ P + A2 @ P2 (C += with acc) on the instruction set `isa` (fr_isa()),
   P (K x N) and P2 (K2 x N) packed alike, summed in registers (one pass over C: the LSTM and SimpleRNN forwards'
   x_t W + h R, fused_blas.step_projection_pays). fr_matmul_f32 / fr_matmul_f64: C = A @ P (K2 = 0).
   backward: the panels last to first. fr_matmul_at_f32 / fr_matmul_at_f64: C = A^T @ P, A (K, M) row-major. */
#if defined(FR_X86)
#define FR_DISPATCH_ISA(NAME, ...)                                                                          \
    if (isa == 2) { NAME##_avx512(__VA_ARGS__); return; }                                                   \
    if (isa == 1) { NAME##_avx2(__VA_ARGS__); return; }
#else
#define FR_DISPATCH_ISA(NAME, ...)
#endif
#define FR_DEFINE_DISPATCH(T, NAME, NAME2, NAME_AT)                                                         \
static void NAME2(int M, int K, const T* A, ptrdiff_t lda, const T* P, int K2, const T* A2, ptrdiff_t lda2, \
                  const T* P2, int N, T* C, ptrdiff_t ldc, int acc, int backward, int isa) {                \
    if (M <= 0 || N <= 0)                                                                                   \
        return;                                                                                             \
    FR_DISPATCH_ISA(NAME, M, K, A, lda, P, K2, A2, lda2, P2, N, C, ldc, acc, backward)                      \
    (void) isa;                                                                                             \
    NAME##_base(M, K, A, lda, P, K2, A2, lda2, P2, N, C, ldc, acc, backward);                               \
}                                                                                                           \
static void NAME(int M, int K, const T* A, ptrdiff_t lda, const T* P, int N, T* C, ptrdiff_t ldc,           \
                 int acc, int backward, int isa) {                                                          \
    NAME2(M, K, A, lda, P, 0, A, lda, P, N, C, ldc, acc, backward, isa);                                    \
}                                                                                                           \
static void NAME_AT(int M, int K, const T* A, ptrdiff_t lda, const T* P, int N, T* C, ptrdiff_t ldc,        \
                    int acc, int isa) {                                                                     \
    if (M <= 0 || N <= 0)                                                                                   \
        return;                                                                                             \
    FR_DISPATCH_ISA(NAME_AT, M, K, A, lda, P, 0, A, lda, P, N, C, ldc, acc, 0)                              \
    (void) isa;                                                                                             \
    NAME_AT##_base(M, K, A, lda, P, 0, A, lda, P, N, C, ldc, acc, 0);                                       \
}
FR_DEFINE_DISPATCH(float, fr_matmul_f32, fr_matmul2_f32, fr_matmul_at_f32)
FR_DEFINE_DISPATCH(double, fr_matmul_f64, fr_matmul2_f64, fr_matmul_at_f64)

/* fr_transpose_f32 / fr_transpose_f64: AT (cols, rows), row stride ldt = the rows x cols block of A (row stride
   lda), transposed in 16 x 16 tiles (a plain strided copy misses the cache on every write): the left operand of
   the weight gradients' products (fused_blas.weight_grads). A function of its own, restrict, out of line: inlined
   into weight_grads, gcc kept its pointers on the stack and the copy took ~5 cycles an element. */
/* C99 restrict as each compiler spells it (also gate_grads.h's) */
#if defined(__GNUC__) || defined(__clang__)
#define FR_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define FR_RESTRICT __restrict
#else
#define FR_RESTRICT restrict
#endif
#if defined(__GNUC__) || defined(__clang__)
#define FR_NOINLINE __attribute__((noinline))
#else
#define FR_NOINLINE
#endif
#define FR_DEFINE_TRANSPOSE(T, NAME)                                                                        \
FR_NOINLINE static void NAME(const T* FR_RESTRICT A, ptrdiff_t lda, ptrdiff_t rows, ptrdiff_t cols,         \
                             T* FR_RESTRICT AT, ptrdiff_t ldt) {                                            \
    ptrdiff_t i0, j0, i, j;                                                                                 \
    for (i0 = 0; i0 < rows; i0 += 16) {                                                                     \
        const ptrdiff_t i1 = i0 + 16 < rows ? i0 + 16 : rows;                                               \
        for (j0 = 0; j0 < cols; j0 += 16) {                                                                 \
            const ptrdiff_t j1 = j0 + 16 < cols ? j0 + 16 : cols;                                           \
            for (j = j0; j < j1; j++)                                                                       \
                for (i = i0; i < i1; i++)                                                                   \
                    AT[j * ldt + i] = A[i * lda + j];                                                       \
        }                                                                                                   \
    }                                                                                                       \
}
FR_DEFINE_TRANSPOSE(float, fr_transpose_f32)
FR_DEFINE_TRANSPOSE(double, fr_transpose_f64)

#endif  /* FASTRNN_PACKED_GEMM_H */
