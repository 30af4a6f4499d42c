"""Compiled time loops (Numba and Cython). See README.md in this folder for the contract.

The Cython modules are built for up to three instruction sets (setup.py): cython_<name> for baseline x86-64, and
cython_<name>_avx2 / cython_<name>_avx512 compiled with -march=x86-64-v3 / -v4 (where the compiler takes them), so
that the gate math is vectorized for the CPU it runs on. cython_module imports the best variant this CPU runs
(cpu.level()); the environment variable FASTRNN_ISA=baseline|avx2|avx512 caps the choice.
"""
import importlib
import os

ISA_NAMES = ("baseline", "avx2", "avx512")   # by level (kernels/cpu.pyx)
ISA_SUFFIXES = ("", "_avx2", "_avx512")


def isa_level():
    """The highest variant level cython_module loads: cpu.level() (0 when that module is not built), capped by
    FASTRNN_ISA."""
    try:
        from . import cpu
        level = cpu.level()
    except ImportError:
        level = 0
    cap = os.environ.get("FASTRNN_ISA", "").strip().lower()
    if cap:
        if cap not in ISA_NAMES:
            raise ValueError(f"FASTRNN_ISA must be one of {', '.join(ISA_NAMES)}, got {cap!r}")
        level = min(level, ISA_NAMES.index(cap))
    return level


def cython_module(name, level=None):
    """fastrnn.kernels.<name> in the best variant built at or below `level` (default isa_level()): <name>_avx512,
    <name>_avx2, else <name> itself (ImportError when none is built)."""
    level = isa_level() if level is None else level
    for lv in range(level, 0, -1):
        try:
            return importlib.import_module(f"{__name__}.{name}{ISA_SUFFIXES[lv]}")
        except ImportError:
            pass  # not built (compiler without the flag): the next lower variant
    return importlib.import_module(f"{__name__}.{name}")
