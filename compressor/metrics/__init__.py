"""How outputs are scored: classification (top-k, agreement, MACs), retrieval (rank-k, mAP), task-aware
evaluation of a PyTorch model, and the metric vocabulary (:data:`METRICS`).

May import: ``compressor.errors``, ``compressor.core``.
"""
