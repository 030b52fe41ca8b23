"""Benchmarks that run the real thing: ``python -m bench`` is the fan-out benchmark (see
``bench.fanout``)."""
