"""The hosting history as `cosfail history` shows it, from hand-made ledger rows."""

from __future__ import annotations

from cosfail.workflows.history import moves


def hosting(epoch: int, moved_from: str, hosted_by: str, run_id: str) -> dict:  # type: ignore[type-arg]
    return {"epoch": epoch, "server": "srv1", "moved_from": moved_from,
            "hosted_by": hosted_by, "run_id": run_id, "since": 1000.0 + epoch}


def run(workflow: str, plan: dict) -> dict:  # type: ignore[type-arg]
    return {"workflow": workflow, "triggered_by": "cli:ops", "reason": "why",
            "params": {"request": {}, "plan": plan}}


def test_each_move_carries_its_run_and_the_changes_it_lost():
    rows = [hosting(2, "srv1", "bcs1", "r-fo"), hosting(3, "bcs1", "srv1", "r-fb")]
    runs = {"r-fo": run("failover", {"snapshot": "snap-7", "snapshot_age": 42.5}),
            "r-fb": run("failback", {"snapshot": None, "snapshot_age": None})}
    fo, fb = moves(rows, runs)
    assert (fo.epoch, fo.moved_from, fo.hosted_by, fo.workflow) == (2, "srv1", "bcs1", "failover")
    assert (fo.data_loss, fo.snapshot) == (42.5, "snap-7")
    assert (fb.workflow, fb.data_loss, fb.snapshot) == ("failback", 0.0, None)
    assert fb.as_json()["triggered_by"] == "cli:ops"


def test_a_move_whose_run_left_the_ledger_says_its_loss_is_unknown():
    [m] = moves([hosting(2, "srv1", "bcs1", "gone")], {})
    assert (m.workflow, m.data_loss, m.run_id) == (None, None, "gone")
