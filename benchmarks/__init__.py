"""Benchmarks of composefs-py against the C tools (``python -m benchmarks``)."""
