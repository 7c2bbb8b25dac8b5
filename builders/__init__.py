"""Builders: topics -> conversations -> tokens with phases -> activations -> Parquet dataset.

Importing this package is cheap (no torch); the model-running modules are imported where used.
"""
