"""bnserve's benchmark: `make bench` (python -m benchmarks). See benchmarks/README in the main README."""
