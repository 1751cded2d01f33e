"""Pulse, the application: the `pulse` CLI and its commands, the demo, the benchmarks.

Nothing imports this package; it imports every layer below it.
"""
