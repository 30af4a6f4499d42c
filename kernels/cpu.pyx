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


def level():
    """0 baseline, 1 x86-64-v3 (AVX2 + FMA), 2 x86-64-v4 (AVX-512): the best variant this CPU and OS run."""
    return fastrnn_cpu_level()
