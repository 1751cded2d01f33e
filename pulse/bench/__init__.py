"""Benchmarks: each prints a table of figures, with ratios against a reference run.

`--json` prints the same figures as one JSON object.
"""
