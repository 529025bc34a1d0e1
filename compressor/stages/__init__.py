"""One stage per module; each exposes a frozen config model and a ``run_*(cfg, ctx)`` function."""
