"""Every workflow cosfail runs, by name: the one table of them."""

from __future__ import annotations

from workflows.backup import BACKUP
from workflows.failover import FAILOVER
from workflows.reclaim import RECLAIM
from workflows.restart_check import RESTART_CHECK
from workflows.switchover import FAILBACK, SWITCHOVER
from workflows.trigger import Workflow

WORKFLOWS: dict[str, Workflow] = {
    wf.name: wf for wf in (BACKUP, FAILOVER, SWITCHOVER, FAILBACK, RECLAIM, RESTART_CHECK)}
