"""INT8 quantization engines (ONNX Runtime, OpenVINO, LiteRT), accuracy control and sensitivity analysis."""
