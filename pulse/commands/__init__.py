"""Subcommand modules: each exposes ``register(subparsers)`` (and may ``register_bench``).

``args`` holds the argument value parsers they share.
"""
