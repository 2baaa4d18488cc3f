"""Benchmarks: line-completion tasks, metrics, and runners over a completion engine."""
