"""One stage per module: a frozen config model and a ``run_*(cfg, ctx)`` function, thin wiring over the
library folders. No stage imports another; helpers shared by stages live in ``_*.py`` modules here.

May import: every folder (``core``, ``metrics``, ``report``, ``train``, ``runtime``, ``export``, ``quant``,
``release``) and ``compressor.errors``; never the top-level ``registry``, ``recipe``, ``engine`` or ``cli``.
"""
