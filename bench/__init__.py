"""Benchmarks, apart from the tests: ``python -m bench.chat`` (see bench/README.md)."""
