"""Benchmark harness of senca: ``python benchmarks/run.py`` (see ``benchmarks/README.md``)."""
