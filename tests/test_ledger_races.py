"""Races on one ledger, on each backend: processes that start at once on a new ledger,
runs that want the same lock, writers of the same catalog row. PostgreSQL reports them
with its own errors (unique violations, a schema another session is creating), which
must end as they do on SQLite: one winner, the rest told so, nothing doubled."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cosfail.workflows import ledger as L
from cosfail.workflows import migrate
from sqlalchemy import func, select, text

RACERS = 8


@pytest.fixture
def ledger_url(new_ledger, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A new, empty ledger database on this run's backend."""
    return new_ledger() or f"sqlite:///{tmp_path / 'ledger.db'}"


def test_processes_starting_at_once_on_a_new_ledger_create_its_schema_once(ledger_url, tmp_path):
    gate = tmp_path / "go"
    opener = ("import os, sys, time\n"
              "from cosfail.workflows.ledger import Ledger\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.001)\n"
              "Ledger(sys.argv[1], 'demo')\n")
    procs = [subprocess.Popen([sys.executable, "-c", opener, ledger_url],  # noqa: S603
                              stderr=subprocess.PIPE, text=True) for _ in range(RACERS)]
    time.sleep(1.0)  # every one is waiting at the gate (imports done)
    gate.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * RACERS, errors
    engine = L.engine_for(ledger_url)
    with engine.connect() as conn:
        assert migrate.revision(conn) == migrate.HEAD
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_runs_racing_for_one_lock_have_one_winner_and_the_rest_name_it(ledger_url):
    led = L.Ledger(ledger_url, "demo")

    def take(i: int) -> str:
        try:
            led.acquire(L.HOSTING_LOCK, f"run{i}", "test", lease=60)
            return f"run{i}"
        except L.LockHeld as exc:
            return f"held by {exc.holder}"

    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(take, range(RACERS)))
    [winner] = [r for r in results if not r.startswith("held")]
    assert results.count(f"held by {winner}") == RACERS - 1
    assert led.lock_row(L.HOSTING_LOCK)["run_id"] == winner


def test_writers_of_one_snapshot_row_leave_one_row(ledger_url):
    led = L.Ledger(ledger_url, "demo")

    def record(i: int) -> None:
        led.record_snapshot(bcs="bcs1", file="s1.snap", epoch=1, created_at=1.0,
                            verified_at=float(i), rows=10, sha256="0" * 64, run_id="r1",
                            pruned=False)

    with ThreadPoolExecutor(RACERS) as pool:
        list(pool.map(record, range(RACERS)))
    with led.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(L.snapshots)).scalar() == 1
    assert led.catalog("bcs1")[0]["verified_at"] in {float(i) for i in range(RACERS)}
