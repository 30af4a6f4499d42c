"""The instruction-set variants of the Cython kernels (setup.py, fastrnn.kernels.cython_module): each variant this
CPU runs equals the NumPy reference, forward and gradients, and the loader picks the best one, capped by
FASTRNN_ISA."""
import os
import platform

import numpy as np
import pytest

from fastrnn import _column_split, kernels, ops
from helpers import CELL_OPTION_IDS, CELL_OPTIONS, random_problem, rel_err
from test_kernel_conformance import assert_conforms

X86 = platform.machine().lower() in ("x86_64", "amd64")


def cpu_level():
    from fastrnn.kernels import cpu
    return cpu.level()


def levels():
    """The variant levels this CPU runs (all of them were built by setup.py on x86-64 with GCC >= 12)."""
    return list(range(cpu_level() + 1))


@pytest.fixture
def variant(monkeypatch):
    """Install the cython kernels of one level in the dispatch table (and the column-split module) for a test."""
    def install(level):
        for cell in ops.GATES:
            mod = kernels.cython_module(f"cython_{cell}", level)
            assert mod.__name__.endswith(f"cython_{cell}{kernels.ISA_SUFFIXES[level]}"), mod.__name__
            kernel = ops.KERNELS[(cell, "cython", np.dtype(np.float32))]
            kernel._load()
            monkeypatch.setattr(kernel, "_module", mod)
        monkeypatch.setattr(_column_split, "_module", kernels.cython_module("cython_threaded", level))
    return install


def test_cpu_level_is_known_and_variants_are_built():
    level = cpu_level()
    assert level in (0, 1, 2)
    if X86 and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
        v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm"} <= flags
        v4 = v3 and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags
        assert (level >= 1, level >= 2) == (v3, v4)
    for lv in levels():
        for name in ("cython_lstm", "cython_gru", "cython_simple_rnn", "cython_threaded"):
            mod = kernels.cython_module(name, lv)
            assert mod.__name__ == f"fastrnn.kernels.{name}{kernels.ISA_SUFFIXES[lv]}", \
                f"the {kernels.ISA_NAMES[lv]} variant of {name} was not built (see setup.py)"


def test_loader_takes_the_best_level_capped_by_fastrnn_isa(monkeypatch):
    monkeypatch.delenv("FASTRNN_ISA", raising=False)
    assert kernels.isa_level() == cpu_level()
    for lv, name in enumerate(kernels.ISA_NAMES):
        monkeypatch.setenv("FASTRNN_ISA", name.upper() if lv == 1 else name)
        assert kernels.isa_level() == min(lv, cpu_level())
        assert kernels.cython_module("cython_lstm").__name__.endswith(
            "cython_lstm" + kernels.ISA_SUFFIXES[min(lv, cpu_level())])
    monkeypatch.setenv("FASTRNN_ISA", "sse9")
    with pytest.raises(ValueError, match="FASTRNN_ISA must be one of baseline, avx2, avx512, got 'sse9'"):
        kernels.isa_level()


@pytest.mark.parametrize("level", [0, 1, 2], ids=kernels.ISA_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_variant_matches_reference(variant, level, cell, options, dtype):
    if level > cpu_level():
        pytest.skip(f"this CPU does not run {kernels.ISA_NAMES[level]}")
    variant(level)
    # packed products (9 steps, 42 rows of x) and BLAS ones (3 steps), odd sizes, ragged lengths, both directions
    for T, reverse in ((9, False), (3, True)):
        p = random_problem(cell, B=7, T=T, D=13, U=21, seed=20 + T, lengths="mixed", scale=0.3, **options)
        assert_conforms("cython", cell, options, p, dtype, reverse)


@pytest.mark.parametrize("level", [0, 1, 2], ids=kernels.ISA_NAMES)
@pytest.mark.parametrize("cell,options", CELL_OPTIONS, ids=CELL_OPTION_IDS)
def test_column_split_variant_matches_reference(variant, level, cell, options):
    if level > cpu_level():
        pytest.skip(f"this CPU does not run {kernels.ISA_NAMES[level]}")
    variant(level)
    p = random_problem(cell, B=2, T=6, D=5, U=40, seed=31, lengths="mixed", scale=0.3, **options)
    prob = ops.make_problem(cell, p["x"], [p["W"], p["R"], p["b"]], list(p["states"]), p["lengths"],
                            activation=options.get("activation", "tanh"),
                            reset_after=options.get("reset_after", True))
    want = ops.rnn_forward(cell, p["x"], [p["W"], p["R"], p["b"]], list(p["states"]), p["lengths"],
                           backend="numpy", **options)
    for n in (1, 2):
        y, finals = _column_split.forward(prob, n)
        assert rel_err(y, want.outputs) < 1e-10
        for a, b in zip(finals, want.states):
            assert rel_err(a, b) < 1e-10


def test_fastrnn_info_names_the_build_it_loaded(capsys, monkeypatch):
    from fastrnn import cli
    monkeypatch.delenv("FASTRNN_ISA", raising=False)
    assert cli.main(["info"]) == 0
    name = kernels.ISA_NAMES[cpu_level()]
    assert f"backend cython  available ({name} build: cython_*{kernels.ISA_SUFFIXES[cpu_level()]})" \
        in capsys.readouterr().out
