"""Benchmarks: kernel microbenchmarks (bench_kernels.py) and PSNR against wall time (train_to_psnr.py).

A package so that tests can import the harnesses; both are run as scripts (see benchmarks/README.md).
"""
