"""ONNX interchange: import ONNX models as cnngraph specs, export cnngraph models to ONNX."""
