"""What a run tells a person: report data, every Markdown table, HTML and PNG figures.

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``.
"""
