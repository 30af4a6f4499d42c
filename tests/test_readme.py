"""The README's Python examples run as written (in order, one namespace), so the documentation cannot rot."""
import pathlib
import re
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# Blocks that need an optional framework name it in their imports.
EXTRAS = {"torch": "torch", "keras": "keras", "onnxruntime": "onnxruntime"}


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples write model files
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # as the README's Keras example sets it
    namespace = {}
    for block in BLOCKS:
        for module, name in EXTRAS.items():
            if re.search(rf"^import {module}\b", block, flags=re.M):
                pytest.importorskip(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Keras 3 on numpy 2 warns about __array__
            exec(compile(block, str(README), "exec"), namespace)
