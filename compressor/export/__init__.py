"""Converters from PyTorch to ONNX, OpenVINO IR and TFLite as a library (no stage context needed),
converter errors naming the operator, and agreement checks against the PyTorch model.

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``, ``compressor.train``,
``compressor.runtime``.
"""
