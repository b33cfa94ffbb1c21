"""Failpoints: a worker that kills itself, for real, at a named point of a named step.

Off unless $COSFAIL_FAILPOINTS_FILE names a file when the worker starts. Writing
lines such as `rehost_objects:after` or `stop_cosprint@cl1:before` into that file
arms points; the
first worker to reach it renames the file away (one shot) and SIGKILLs its own process:
the same fault as a crash at that instant, placed exactly, so the fault suite can prove
that every step resumes to the same end state.
"""

from __future__ import annotations

import os
import signal


def hit(step: str, node: str, point: str) -> None:
    """SIGKILL this process if `step:point` or `step@node:point` is armed."""
    path = os.environ.get("COSFAIL_FAILPOINTS_FILE")
    if not path:
        return
    try:
        with open(path) as f:
            armed = f.read().splitlines()
    except FileNotFoundError:
        return
    if f"{step}:{point}" not in armed and f"{step}@{node}:{point}" not in armed:
        return
    try:
        os.rename(path, path + ".fired")
    except FileNotFoundError:
        return  # another worker took it first
    os.kill(os.getpid(), signal.SIGKILL)
