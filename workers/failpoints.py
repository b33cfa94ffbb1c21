"""Failpoints: a worker that kills itself, or holds a step, at a named point of a step.

Off unless $COSFAIL_FAILPOINTS_FILE names a file when the worker starts. Writing
lines such as `rehost_objects:after` or `stop_cosprint@cl1:before` into that file
arms points; the first worker to reach one renames the file to `<file>.fired` (one
shot, and the sign for the fault suite that the point was reached) and then:
- SIGKILLs its own process: the same fault as a crash at that instant, placed exactly,
  so the fault suite can prove that every step resumes to the same end state;
- or, for a line ending in `:pause=SECONDS` (`restore_snapshot@bcs1:after:pause=30`),
  holds the step there until the `.fired` file is removed or SECONDS pass: a phase of a
  run held open while the suite does something real (restarts a node) in the middle.
"""

from __future__ import annotations

import os
import signal
import time

PAUSE = ":pause="
KILL = -1.0
POLL = 0.02  # seconds between looks at the `.fired` file while a step is held


def hit(step: str, node: str, point: str) -> None:
    """SIGKILL this process, or hold the step, if `step:point` or `step@node:point` is
    armed."""
    path = os.environ.get("COSFAIL_FAILPOINTS_FILE")
    if not path:
        return
    try:
        with open(path) as f:
            armed = f.read().splitlines()
    except FileNotFoundError:
        return
    pause = armed_pause(armed, step, node, point)
    if pause is None:
        return
    fired = path + ".fired"
    try:
        os.rename(path, fired)
    except FileNotFoundError:
        return  # another worker took it first
    if pause == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + pause
    while os.path.exists(fired) and time.monotonic() < deadline:
        time.sleep(POLL)


def armed_pause(lines: list[str], step: str, node: str, point: str) -> float | None:
    """None when no line arms this point; KILL; else the seconds to hold the step."""
    for line in lines:
        spec, _, seconds = line.strip().partition(PAUSE)
        if spec in (f"{step}:{point}", f"{step}@{node}:{point}"):
            return max(0.0, float(seconds)) if seconds else KILL
    return None
