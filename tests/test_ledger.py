"""The ledger's facts (hosting history, run subjects) and its schema: made by Alembic's
migrations on a new ledger, upgraded on the operator's word (`cosfail db upgrade`) on
one an older release made: schema 1, and the release before Alembic (schema 2)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import run_cli
from cosfail.cosprint import authority
from cosfail.cosprint.domain import load_domain
from cosfail.launcher.demo_domain import init_demo
from cosfail.workflows import ledger as L
from cosfail.workflows import migrate
from cosfail.workflows.schema import metadata
from sqlalchemy import MetaData

DATA = Path(__file__).parent / "data"
SCHEMA_1 = DATA / "ledger-schema1.sqlite"
SCHEMA_2 = DATA / "ledger-schema2.sqlite"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_schema_1_ledger_is_refused_then_upgraded_with_its_hosting_history_and_subjects(
        tmp_path):
    """The file holds, from the release before: srv1 failed over to bcs1 (epoch 2), its
    restart-check left it for reclaim, three backups, the reclaim, a failback (epoch 3),
    srv2 switched over to bcs1 (epoch 4), and a failover of srv2 that failed."""
    path = tmp_path / "ledger.sqlite"
    shutil.copy(SCHEMA_1, path)
    before = sha(path)
    with pytest.raises(migrate.SchemaError, match="ledger schema is at revision 0001, this "
                                                  "cosfail needs 0008: run `cosfail db upgrade`"):
        L.Ledger(f"sqlite:///{path}", "demo")
    assert sha(path) == before

    assert migrate.upgrade(L.engine_for(f"sqlite:///{path}")) == ("0001", migrate.HEAD)
    led = L.Ledger(f"sqlite:///{path}", "demo")
    assert [(h["epoch"], h["server"], h["moved_from"], h["hosted_by"])
            for h in led.hosting_history()] == [
        (2, "srv1", "srv1", "bcs1"), (3, "srv1", "bcs1", "srv1"), (4, "srv2", "srv2", "bcs1")]
    assert (led.hosted_by("srv1"), led.hosted_by("srv2")) == (None, "bcs1")
    newest = led.newest_by_subject(("restart-check", "reclaim"))
    assert {s: r["workflow"] for s, r in newest.items()} == {"srv1": "reclaim"}
    assert [r["subject"] for r in led.runs(limit=100, workflow="backup")] == [None] * 3
    # Each run's failures, as its launches and state imply: srv2's failed failover's one.
    assert {(r["workflow"], r["subject"], r["state"]): r["failures"]
            for r in led.runs(limit=100) if r["failures"]} == {
        ("failover", "srv2", "failed"): 1}
    # Upgraded again (a second operator): nothing to do, nothing doubled.
    assert migrate.upgrade(led.engine) == (migrate.HEAD, migrate.HEAD)
    assert len(led.hosting_history()) == 3


def test_the_release_before_alembics_ledger_is_upgraded_by_cosfail_db_upgrade(tmp_path):
    """SCHEMA_2 is the ledger of a demo domain run by the release before Alembic: five
    restart-checks, a backup, srv1 failed over to bcs1 (epoch 2)."""
    domain = load_domain(init_demo(tmp_path / "dom", clients=3))
    path = domain.base / "ledger.db"
    shutil.copy(SCHEMA_2, path)
    before = sha(path)
    refused = run_cli("runs", "-d", str(domain.path))
    assert refused.returncode == 2
    assert refused.stderr == (f"cosfail: {domain.ledger_url}: ledger schema is at revision "
                              "0002, this cosfail needs 0008: run `cosfail db upgrade`\n")
    assert sha(path) == before

    done = run_cli("db", "upgrade", "-d", str(domain.path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ledger upgraded from revision 0002 to {migrate.HEAD}\n"
    again = run_cli("db", "upgrade", "-d", str(domain.path))
    assert again.stdout == f"ledger already at revision {migrate.HEAD}\n"
    led = L.Ledger(domain.ledger_url, "demo")
    runs = led.runs(limit=100)
    assert len(runs) == 7
    assert [(r["workflow"], r["state"]) for r in runs[:2]] == [
        ("failover", "succeeded"), ("backup", "succeeded")]
    assert len(led.steps(runs[0]["id"])) > 0
    assert led.hosting_moves() == [(2, "srv1", "bcs1")]
    assert authority.read(led.engine, "demo") == authority.Designation("bcs1", 2)


def test_the_migrations_make_exactly_the_schema_the_code_declares(make_cluster):
    """On each ledger backend: a new ledger's tables, columns and indexes, as Alembic
    compares them, are the ones the code declares (workflows/schema.py, the authority's
    table), at the newest script."""
    declared = MetaData()
    for t in (*metadata.tables.values(), *authority.metadata.tables.values()):
        t.to_metadata(declared)
    cluster = make_cluster(up=False)
    with cluster.ledger.engine.connect() as conn:
        assert migrate.revision(conn) == migrate.HEAD
        assert compare_metadata(MigrationContext.configure(conn), declared) == []
    assert ScriptDirectory(str(migrate.MIGRATIONS)).get_current_head() == migrate.HEAD


def test_a_hosting_change_is_recorded_once_per_epoch(tmp_path):
    led = L.Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", "demo")
    for _ in range(2):  # a retried advance_epoch step
        with led.tx() as conn:
            led.record_hosting(conn, 2, "srv1", "srv1", "bcs1", "run1")
    assert led.hosting_moves() == [(2, "srv1", "bcs1")]
    with pytest.raises(L.LedgerError, match="epoch 2 already records a hosting change, "
                                            "by run run1"), led.tx() as conn:
        led.record_hosting(conn, 2, "srv1", "srv1", "bcs2", "run2")
    assert led.hosted_by("srv1") == "bcs1"
