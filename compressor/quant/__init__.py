"""INT8 quantization as a library: engines per format (ONNX Runtime, OpenVINO, LiteRT), plans as one
``(format, engine)`` table, runners in each runtime, accuracy control, sensitivity, QAT and the ONNX fold.

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``, ``compressor.train``,
``compressor.runtime``, ``compressor.export``.
"""
