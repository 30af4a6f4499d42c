"""Every example in examples/ trains to the quality its docstring states (seed 0, its default arguments).

The examples run on the default backend ("auto": a compiled kernel when one loads); together they take about 10 s
on a 2-core machine. Each example's main() returns its final metrics and the backend that trained it.
"""
import contextlib
import importlib.util
import pathlib
import subprocess
import sys
import time

import pytest

from fastrnn import ops

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
COMPILED = [b for b in ops.COMPILED_BACKENDS if ops.available_backends()[b] is None]

# The stated quality of each example (the threshold its docstring gives), checked on main()'s result.
STATED = {
    "next_number": lambda r: r["test_mae"] < 1.0 and abs(r["next_after_70_80_90"] - 100) < 1.5,
    "text_classification": lambda r: r["test_accuracy"] >= 0.95,
    "tagging": lambda r: r["test_accuracy"] >= 0.97 and r["ambiguous_accuracy"] >= 0.95,
    "seq2seq_reverse": lambda r: r["digit_accuracy"] >= 0.95 and r["string_accuracy"] >= 0.80,
    "deep_bidirectional": lambda r: r["test_accuracy"] >= 0.95,
}


def load(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def one_blas_thread():
    """numpy and scipy each bring an OpenBLAS thread pool; on a busy 2-core machine their threads wait on each
    other in the many tiny per-step matmuls and a run can take 10x longer. One thread keeps the timing steady;
    the results are the same (the examples were checked both ways)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


RESULTS = {}


def run(name):
    """main() of an example, once per test session (the quality and the backend tests share it)."""
    if name not in RESULTS:
        with one_blas_thread():
            start = time.perf_counter()
            result = load(name).main(seed=0, verbose=0)
            result["seconds"] = time.perf_counter() - start
        RESULTS[name] = result
    return RESULTS[name]


@pytest.mark.parametrize("name", sorted(STATED))
def test_example_reaches_its_stated_quality(name):
    result = run(name)
    assert STATED[name](result), f"{name}: {result}"


def test_every_example_states_its_quality_and_has_a_test():
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(STATED)
    for name in scripts:
        module = load(name)
        assert "Stated quality" in module.__doc__, name
        assert callable(module.main), name


@pytest.mark.skipif(not COMPILED, reason="no compiled backend (cython, numba) is available")
@pytest.mark.parametrize("name", sorted(STATED))
def test_examples_train_on_a_compiled_backend(name):
    """backend="auto" trains (forward and BPTT) on a compiled kernel, not on the NumPy reference."""
    assert run(name)["backend"] in {"cython", "numba"}


def test_examples_are_deterministic_for_a_seed():
    a = load("next_number").main(epochs=3, seed=1, verbose=0)
    b = load("next_number").main(epochs=3, seed=1, verbose=0)
    assert a == b


def test_example_runs_as_a_script_and_prints_progress():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "next_number.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'Model: "sequential"' in out and "Total params: 4,385" in out
    assert "Epoch 40/40" in out and "val_loss" in out
    assert "'test_mae'" in out  # the metrics dict main() returns

