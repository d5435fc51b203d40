"""Benchmarks: `make bench` (python -m bench). They print, they never assert."""
