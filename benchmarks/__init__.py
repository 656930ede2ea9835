"""Training-throughput benchmarks: ``python -m benchmarks.run`` (see benchmarks/results.md)."""
