"""Every workflow cosfail runs, by name: the one table of them."""

from __future__ import annotations

from cosfail.workflows.backup import BACKUP
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.reclaim import RECLAIM
from cosfail.workflows.restart_check import RESTART_CHECK
from cosfail.workflows.switchover import FAILBACK, SWITCHOVER
from cosfail.workflows.trigger import Workflow

WORKFLOWS: dict[str, Workflow] = {
    wf.name: wf for wf in (BACKUP, FAILOVER, SWITCHOVER, FAILBACK, RECLAIM, RESTART_CHECK)}
