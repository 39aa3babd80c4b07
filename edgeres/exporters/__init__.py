"""Exporters: PyTorch to ONNX and TFLite, the shared graph helpers that targets build with.

They sit below both targets/ (which build with them) and conversion/ (which drives the
targets), so neither of those imports the other's internals.
"""
