"""Subcommand modules: each exposes ``register(subparsers)`` (and may ``register_bench``)."""
