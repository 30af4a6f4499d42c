"""`import fastrnn.onnx`: the ONNX adapter (fastrnn.interop.onnx), under a shorter name.

    import fastrnn.onnx
    model = fastrnn.onnx.load("model.onnx")          # RNN / GRU / LSTM nodes run in fastrnn's kernels
    outputs = model.run(None, {"input": x})           # like onnxruntime.InferenceSession.run
    proto = fastrnn.onnx.export(seq_model, "model.onnx", input_shape=(None, 16))

The `onnx` package is imported on first use, not when this module is imported.
"""
from fastrnn.interop.onnx import (SUPPORTED_OPS, OnnxModel, export, keras_to_onnx_weights, load,
                                  onnx_to_keras_weights)

__all__ = ["load", "export", "OnnxModel", "SUPPORTED_OPS", "onnx_to_keras_weights", "keras_to_onnx_weights"]
