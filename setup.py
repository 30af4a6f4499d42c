"""Build the Cython kernels in kernels/ into the package fastrnn.kernels.

Metadata lives in pyproject.toml; this file only declares the compiled extensions.
Every kernels/cython_*.pyx becomes fastrnn.kernels.cython_*.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

extensions = [
    Extension(
        "fastrnn.kernels." + os.path.splitext(os.path.basename(path))[0],
        [os.path.relpath(path, HERE)],
        # kernels/: packed_gemm.h, included through fused_blas.pxd
        include_dirs=[numpy.get_include(), os.path.relpath(os.path.join(HERE, "kernels"), HERE)],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -fno-trapping-math: lets gcc if-convert, and so vectorize, the selects of fused_blas's exp/sigmoid/tanh
        # (FP exception flags are never read; NaN and inf results are unchanged).
        extra_compile_args=["-O3", "-fno-trapping-math"],
    )
    for path in sorted(glob.glob(os.path.join(HERE, "kernels", "cython_*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        # kernels/fused_blas.pxd is cimported as `fused_blas` (inline functions only: nothing imported at run time)
        include_path=[os.path.join(HERE, "kernels")],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
