"""``compressor search``: the best compression plan under a target's budget, found with Optuna.

Each trial is the recipe with the options of its ``search:`` section sampled and written in, run by the
engine into one shared stage cache (trials that share a prefix reuse it), judged by its benchmark rows
(objectives) and by the release gates' own evaluation (constraints). Needs the ``search`` extra (Optuna).

May import: ``compressor.errors``, ``compressor.core``, ``compressor.metrics``, ``compressor.report``,
``compressor.runtime``, ``compressor.release``, ``compressor.registry``, ``compressor.search_config``,
``compressor.recipe``, ``compressor.engine``. Only ``compressor.cli`` imports it.
"""
