"""Benchmarks (`python bench/backup.py`): measured, never asserted in tests."""
