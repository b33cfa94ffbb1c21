"""A node's job spool: one JSON file per accepted job, written atomically, printed into
per-printer sink files; what cannot be printed is set aside, never deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cosfail.cosprint.fsutil import atomic_write_bytes

# Paths inside a node's home.
SINK_DIR = Path("var/sink")
REJECTED_DIR = Path("var/spool-rejected")
JOB_SUFFIX = ".job"


def spool_job(spool: Path, job: dict[str, Any]) -> Path:
    """Write one job into `spool` atomically (temp name, fsync, rename)."""
    path = spool / f"{job['job_id']}{JOB_SUFFIX}"
    atomic_write_bytes(path, json.dumps(job).encode())
    return path


def list_spool(spool: Path) -> list[Path]:
    """Complete job files, oldest first (a `.part` file is a write still in progress)."""
    try:
        entries = [p for p in spool.iterdir() if p.name.endswith(JOB_SUFFIX)]
    except FileNotFoundError:
        return []
    return sorted(entries, key=_mtime_or_zero)


def _mtime_or_zero(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # printed by another node sharing the spool meanwhile
        return 0.0
