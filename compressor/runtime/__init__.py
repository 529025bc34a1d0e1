"""Where artifacts run and how they are measured: runtime backends, benchmark targets and their runner,
latency statistics, the environment record, and the benchmark of foreign files (``compressor bench``).

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``, ``compressor.report``,
``compressor.train``.
"""
