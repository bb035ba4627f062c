"""Checkpoint files: safe loading, atomic writes, averaging, embedding files and dumps."""
