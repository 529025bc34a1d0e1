"""Models and how they learn: model sources and saved forms, the training loop, losses, students,
embedding networks and structural pruning.

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``.
"""
