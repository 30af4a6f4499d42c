# cython: language_level=3
"""What this CPU runs: which instruction-set variant of the Cython kernels fastrnn.kernels.cython_module may load.

Built for baseline x86-64 only (setup.py), so importing it is safe on every CPU; the variants built with
-march=x86-64-v3 / -v4 are imported only after level() says the CPU (and the OS, which must save the wider
registers) supports them, because their module code itself may already use those instructions.
"""

cdef extern from *:
    """
    /* 0: baseline; 1: x86-64-v3 (AVX2, FMA, BMI1/2, F16C, MOVBE, LZCNT); 2: x86-64-v4 (v3 + AVX-512 F/BW/CD/DQ/VL).
       The level names in __builtin_cpu_supports need GCC 12 or Clang 16 (which also check that the OS enabled the
       registers, through XGETBV); other compilers report 0, and only the baseline modules are used. */
    static int fastrnn_cpu_level(void) {
    #if (defined(__x86_64__) || defined(__i386__)) && \
        ((defined(__clang__) && __clang_major__ >= 16) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12))
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4"))
            return 2;
        if (__builtin_cpu_supports("x86-64-v3"))
            return 1;
    #endif
        return 0;
    }
    """
    int fastrnn_cpu_level() nogil

cdef extern from *:
    """
    /* The FMA peak of one core: 12 independent chains of vector multiply-adds (enough to cover the FMA latency
       on current x86 cores), n rounds; returns the flops done. The widest vectors this CPU runs. The result of
       the chains goes to *sink so that the compiler keeps them (a * m + c cannot be folded without fast-math). */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define FR_FMA_LOOP(NAME, ATTR, BYTES)                                                                    \
    ATTR static double NAME(long long n, float* sink) {                                                      \
        typedef float v __attribute__((vector_size(BYTES)));                                                 \
        v a[12], m = (v){0} + 0.999999f, c = (v){0} + 1e-7f;                                              \
        int i;                                                                                               \
        for (i = 0; i < 12; i++) a[i] = (v){0} + (float) i;                                                 \
        for (long long k = 0; k < n; k++) {                                                                  \
            _Pragma("GCC unroll 12") for (i = 0; i < 12; i++) a[i] = a[i] * m + c;                          \
        }                                                                                                    \
        for (i = 1; i < 12; i++) a[0] += a[i];                                                               \
        *sink = a[0][0];                                                                                     \
        return 2.0 * 12 * (BYTES / 4) * (double) n;                                                          \
    }
    FR_FMA_LOOP(fr_fma_avx512, __attribute__((target("avx512f"))), 64)
    FR_FMA_LOOP(fr_fma_avx2, __attribute__((target("avx2,fma"))), 32)
    FR_FMA_LOOP(fr_fma_sse, , 16)
    static double fastrnn_fma_flops(long long n, float* sink) {
        int level = fastrnn_cpu_level();
        return level == 2 ? fr_fma_avx512(n, sink) : level == 1 ? fr_fma_avx2(n, sink) : fr_fma_sse(n, sink);
    }
    #else
    static double fastrnn_fma_flops(long long n, float* sink) {
        float a = 1;
        for (long long k = 0; k < n; k++) a = a * 0.999999f + 1e-7f;
        *sink = a;
        return 2.0 * (double) n;
    }
    #endif
    """
    double fastrnn_fma_flops(long long n, float* sink) nogil


def level():
    """0 baseline, 1 x86-64-v3 (AVX2 + FMA), 2 x86-64-v4 (AVX-512): the best variant this CPU and OS run."""
    return fastrnn_cpu_level()


def fma_gflops(double seconds=0.2):
    """GFLOP/s of float32 multiply-adds on this core, with the widest vectors it runs (kernels: no memory, no
    dependencies between the 12 chains): the arithmetic peak that no matmul exceeds. Best of rounds of ~10 ms
    within `seconds`; releases the GIL, so n Python threads measure n cores at once."""
    import time
    cdef float sink
    cdef double flops, best = 0.0
    cdef long long n = 1000000
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        with nogil:
            flops = fastrnn_fma_flops(n, &sink)
        dt = time.perf_counter() - t0
        best = max(best, flops / dt / 1e9)
        if dt < 0.005:
            n *= 2
        if time.perf_counter() > t_end:
            return best
