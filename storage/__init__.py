"""Stores every layer reads or writes: the lake, atomic snapshots, the model registry."""
