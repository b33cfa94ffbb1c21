"""The ledger's facts: hosting history and run subjects, on a new ledger and on one
made by the release before them (schema 1), upgraded in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cosfail.workflows import ledger as L

SCHEMA_1 = Path(__file__).parent / "data" / "ledger-schema1.sqlite"


def test_a_schema_1_ledger_is_upgraded_with_its_hosting_history_and_subjects(tmp_path):
    """The file holds, from the release before: srv1 failed over to bcs1 (epoch 2), its
    restart-check left it for reclaim, three backups, the reclaim, a failback (epoch 3),
    srv2 switched over to bcs1 (epoch 4), and a failover of srv2 that failed."""
    path = tmp_path / "ledger.sqlite"
    shutil.copy(SCHEMA_1, path)
    led = L.Ledger(f"sqlite:///{path}", "demo")

    assert [(h["epoch"], h["server"], h["moved_from"], h["hosted_by"])
            for h in led.hosting_history()] == [
        (2, "srv1", "srv1", "bcs1"), (3, "srv1", "bcs1", "srv1"), (4, "srv2", "srv2", "bcs1")]
    assert (led.hosted_by("srv1"), led.hosted_by("srv2")) == (None, "bcs1")
    newest = led.newest_by_subject(("restart-check", "reclaim"))
    assert {s: r["workflow"] for s, r in newest.items()} == {"srv1": "reclaim"}
    assert [r["subject"] for r in led.runs(limit=100, workflow="backup")] == [None] * 3
    # Opened again (another process starting on it): upgraded once, nothing doubled.
    again = L.Ledger(f"sqlite:///{path}", "demo")
    assert len(again.hosting_history()) == 3


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
