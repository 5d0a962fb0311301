"""Benchmarks that print tables of ratios measured in one run (never timed asserts)."""
