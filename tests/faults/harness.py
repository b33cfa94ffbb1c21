"""The fault harness: run a workflow with a real SIGKILL at a chosen step, restart the
dead worker, resume the run, and compare the end state with an undisturbed run.

One domain serves a whole matrix: `reset()` puts every node home and the ledger back
to the state captured at the start, without restarting the workers.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosfail.cosprint import authority, designation, tables
from cosfail.cosprint.snapshot import list_snapshots
from cosfail.launcher.local import pid_alive
from cosfail.workers.steps import is_verified
from cosfail.workflows import ledger as L
from cosfail.workflows.liveness import alive_workers
from sqlalchemy import delete, insert, select, update

# What a reset puts back as it was: every record of runs and what they did.
LEDGER_TABLES = (L.steps, L.runs, L.locks, L.snapshots, L.hosting)


@dataclass(frozen=True)
class KillPoint:
    step: str  # the step's name as the ledger shows it (`rehost_objects`)
    node: str  # whose worker runs it: a node name, or "" for the control worker
    point: str  # "before" or "after" its effect

    def __str__(self) -> str:
        return f"{self.step}@{self.node or 'control'}:{self.point}"


class FaultHarness:
    def __init__(self, cluster: Any, failpoints: Path) -> None:
        self.c = cluster
        self.failpoints = failpoints
        self.pristine = cluster.domain.base / "pristine"
        self._save()

    # ----- state ----------------------------------------------------------------------
    def _save(self) -> None:
        # COSprint stays down where it was down (a killed node, a fenced server).
        self.running = {n for n in self.c.domain.names() if self.c.driver(n).pid()}
        for node in self.c.domain.names():
            self.c.driver(node).stop()
            shutil.copytree(self.c.domain.home(node), self.pristine / node, symlinks=True,
                            ignore=shutil.ignore_patterns("log", "*.pid"))
        for node in self.running:
            self.c.driver(node).start()
        self.initial = authority.read(self.c.ledger.engine, self.c.domain.control.name)
        # The ledger's record as it stands: a failback's plan reads the hosting history
        # and the runs that made it.
        with self.c.ledger.engine.connect() as conn:
            self.records = {table: [dict(r) for r in conn.execute(select(table)).mappings()]
                            for table in LEDGER_TABLES}

    def reset(self) -> None:
        """Every node home and the ledger as they were when the harness was made."""
        for node in self.c.domain.names():
            self.c.driver(node).stop()
            home = self.c.domain.home(node)
            for child in home.iterdir():
                if child.name != "var":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            shutil.rmtree(home / "var", ignore_errors=True)
            shutil.copytree(self.pristine / node, home, dirs_exist_ok=True, symlinks=True)
        with self.c.ledger.tx() as conn:
            for table in LEDGER_TABLES:  # steps before the runs they belong to
                conn.execute(delete(table))
            for table in reversed(LEDGER_TABLES):
                if self.records[table]:
                    conn.execute(insert(table), self.records[table])
            conn.execute(update(authority.domain_state).values(
                master=self.initial.master, epoch=self.initial.epoch))
        for node in self.running:
            self.c.driver(node).start()

    def new_runs(self, workflow: str) -> list[dict[str, Any]]:
        """The runs of `workflow` since the last reset, newest first."""
        kept = {r["id"] for r in self.records[L.runs]}
        return [r for r in self.c.ledger.runs(limit=50, workflow=workflow) if r["id"] not in kept]

    def fingerprint(self) -> dict[str, Any]:
        """Everything a fault must not change: tables, designations, roles, catalog."""
        out: dict[str, Any] = {
            "authority": str(authority.read(self.c.ledger.engine, self.c.domain.control.name)),
            # Once per hosting change, whatever was killed and resumed on the way.
            "hosting": [(h["epoch"], h["server"], h["moved_from"], h["hosted_by"])
                        for h in self.c.ledger.hosting_history()]}
        for node in self.c.domain.names():
            home = self.c.domain.home(node)
            with tables.connect(self.c.domain.tables_url(node)) as conn:
                rows = tables.rows_digest(conn)
                pointer = tables.read_pointer(conn)
            st = self.c.driver(node).status()
            snaps = [p for p in list_snapshots(self.c.domain.backup_area(node))
                     if is_verified(p)]
            out[node] = {
                "rows": rows, "pointer": pointer,
                "designation": str(designation.read(home / designation.DESIGNATION)),
                "last_running": str(designation.read(home / designation.LAST_RUNNING)),
                "cosprint": (st.role, st.master, st.epoch) if st else None,
                "verified_snapshots": len(snaps),
                "reclaimed": sorted(p.name for p in (home / "var" / "reclaimed").glob("*")),
            }
        return out

    # ----- faults -----------------------------------------------------------------------
    def run_with_kill(self, trigger: Callable[[], str], kp: KillPoint,
                      timeout: float = 90.0) -> str:
        """Trigger a run whose worker dies at `kp`; restart it; resume; return the run."""
        pid = self.c.worker_pid(kp.node or None)
        self.failpoints.write_text(f"{kp.step}@{kp.node}:{kp.point}\n")
        fired = self.failpoints.with_name(self.failpoints.name + ".fired")
        fired.unlink(missing_ok=True)
        run_id = trigger()
        deadline = time.time() + timeout
        while pid_alive(pid):
            assert time.time() < deadline, f"{kp}: the worker never reached the failpoint"
            run = self.c.ledger.run(run_id)
            assert run["state"] != L.SUCCEEDED, f"{kp}: run ended without reaching it"
            time.sleep(0.02)
        assert fired.exists(), f"{kp}: the worker died, but not at the failpoint"
        _reap(pid)
        checks = self._start_up_checks(kp.node) if kp.node else 0
        self.c.restart_worker(kp.node or None)
        while self.c.ledger.run(run_id)["state"] == L.RUNNING:
            assert time.time() < deadline, f"{kp}: the lost step was never reaped"
            # as `cosfail run --wait` does: a message the dead worker's connection took
            # with it leaves its step queued past expiry
            self.c.engine.reap_lost_steps(run_id)
            time.sleep(0.05)
        # In-process, as `cosfail resume` does (its CLI is tested on its own). A run can
        # also end by itself: a fan-out whose control step was killed after sending its
        # members is settled by them.
        self.c.engine.reap_lost_steps(run_id, alive=alive_workers())
        if self.c.ledger.run(run_id)["state"] == L.FAILED:
            self.c.engine.resume(run_id)
        run = self.c.wait(run_id, timeout)
        assert run["state"] == L.SUCCEEDED, f"{kp}: resumed run {run['state']}: {run['error']}"
        if kp.node:
            self._wait_start_up_check(kp.node, checks, deadline)
        return run_id

    def revive_worker(self, node: str, timeout: float = 90.0) -> None:
        """Start `node`'s dead worker; return once its start-up check has ended."""
        before = self._start_up_checks(node)
        self.c.restart_worker(node)
        self._wait_start_up_check(node, before, time.time() + timeout)

    def _wait_start_up_check(self, node: str, before: int, deadline: float) -> None:
        """A restarted node worker checks itself once the domain is free: wait until it
        has (its log says so) and nothing runs, so that it cannot act on the next reset."""
        while self._start_up_checks(node) <= before or any(
                r["state"] in (L.RUNNING, L.PLANNED) for r in self.c.ledger.runs(limit=20)):
            assert time.time() < deadline, f"{node}: its start-up check never ended"
            time.sleep(0.05)

    def _start_up_checks(self, node: str) -> int:
        log = self.c.local.rundir / f"worker-{node}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.count(f"start-up check of {node}:") + \
            text.count(f"restart-check of {node} could not start")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
