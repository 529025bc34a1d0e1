"""Releases: gates over benchmark rows, the bundle and its model card, and ``compressor verify``.

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``, ``compressor.report``,
``compressor.train``, ``compressor.runtime``, ``compressor.export``.
"""
