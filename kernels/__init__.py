"""Compiled time loops (Numba and Cython). See README.md in this folder for the contract.

The Cython modules are built for up to three instruction sets (setup.py): cython_<name> for baseline x86-64, and
cython_<name>_avx2 / cython_<name>_avx512 compiled with -march=x86-64-v3 / -v4 (where the compiler takes them), so
that the gate math is vectorized for the CPU it runs on. cython_module imports the best variant this CPU runs
(cpu.level()); the environment variable FASTRNN_ISA=baseline|avx2|avx512 caps the choice.
"""
import importlib
import os
import threading
import weakref

import numpy as np

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


# Large scratch blocks, kept per thread (array_args.pxd, scratch): a block allocated afresh for every call gets new
# pages from the OS, and each page's first write is a fault. Measured (LSTM 1024 units, batch 64, T=50, inference,
# one thread; its scratch holds the 52 MB input projection): 496-508 ms a call back to back, 915 ms with 390 ms of
# system time right after NumPy's sgemm of the same size had run, whose freed memory left the next large blocks to
# be faulted in 4 KB at a time. Blocks of 8 MB and more were kept at first; smaller ones fault too, whenever glibc has
# handed the top of its heap back to the OS (a training loop drops its step's results, fastrnn._recycle): LSTM 128
# units, batch 16, T=100, one thread, results dropped between steps: 15.5 ms a step with the forward's 3.3 MB
# projection in a new block each call, 14.1 kept.
KEEP_SCRATCH_BYTES = 256 << 10
_kept = threading.local()


def kept_scratch(nbytes):
    """A uint8 array of nbytes: a view of this thread's kept block (grown to the largest size asked for), or a new
    array while that block is lent to a call still running on this thread (the view lent last is alive)."""
    lent = getattr(_kept, "lent", None)
    if lent is not None and lent() is not None:
        return np.empty(nbytes, np.uint8)
    block = getattr(_kept, "block", None)
    if block is None or block.nbytes < nbytes:
        _kept.block = None   # free the smaller block first
        block = _kept.block = np.empty(nbytes, np.uint8)
    view = block[:nbytes]
    _kept.lent = weakref.ref(view)
    return view
