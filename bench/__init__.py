"""Benchmarks (GPU): kernels.py times the Triton kernels; timing.py holds the shared helpers."""
