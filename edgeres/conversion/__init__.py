"""The converter side: needs the `convert` extra (torch, onnx, onnxruntime)."""
