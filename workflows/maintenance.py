"""A paused domain (`cosfail pause`, like `patronictl pause`): for planned work, the
automatic actions stop, automatic failover and the scheduled backups, while every
operator command still works and says the domain is paused. The pause is a row in the
ledger (`Ledger.pause`), so every control process sees the same one.
"""

from __future__ import annotations

import time
from typing import Any

AUTOMATIC = "automatic failover and scheduled backups are off"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def paused_reason(pause: dict[str, Any] | None) -> str | None:
    """Why automatic work does not start now, naming the pause; None: not paused."""
    if pause is None:
        return None
    why = f": {pause['reason']}" if pause["reason"] else ""
    return (f"the domain is paused (by {pause['paused_by']} since {when(pause['paused_at'])}"
            f"{why}); `cosfail unpause` ends it")
