"""The COSprint domain: domain file, tables, designation, snapshots, drivers.

Knows nothing of Celery or HTTP APIs; everything above builds on it.
"""
