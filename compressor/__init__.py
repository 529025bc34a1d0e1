"""compressor: take a trained PyTorch CNN to the edge from one YAML recipe."""

__version__ = "0.1.0"
