"""Which workers answer, as seen from the control plane."""

from __future__ import annotations

from workers.app import app


def ping(timeout: float = 1.0) -> dict[str, str]:
    """Node (or 'control') → worker hostname, for every worker that answers."""
    replies = app.control.ping(timeout=timeout) or []
    return {name.split("@")[0]: name for r in replies for name in r}


def alive_workers(timeout: float = 1.0) -> set[str]:
    """Worker ids (host:pid) of the workers that answer, from their stats."""
    stats = app.control.inspect(timeout=timeout).stats() or {}
    return {f"{name.split('@', 1)[1]}:{s.get('pid')}" for name, s in stats.items()}
