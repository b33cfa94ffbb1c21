"""Benchmarks (`make bench`, i.e. `python -m bench`): measured, never asserted in tests."""
