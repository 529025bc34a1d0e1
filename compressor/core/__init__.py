"""The run's vocabulary: frozen configs, the stage context, artifacts, the data module, distributed info.

May import: ``compressor.errors``. Nothing else of the package imports below this folder.
"""
