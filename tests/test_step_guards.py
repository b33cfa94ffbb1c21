"""The guards every step passes before it acts, on real workers and real Redis: a message
issued under an older epoch, one of a launch a resume has superseded, and one that
reached another node's worker never act (docs/architecture.md, invariant 2). Each message here would
write cl1's designation file if it acted."""

from __future__ import annotations

import time

import pytest
from cosfail.cosprint import authority
from cosfail.cosprint.designation import Designation
from cosfail.workers.app import app
from cosfail.workers.steps import RestartCheck, restart_check
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Do, absences, next_look, overdue, stage_verdict

TARGET = Designation("bcs1", 9)  # what cl1's designation would become if a step acted


def one_step_run(c, epoch: int) -> str:  # type: ignore[no-untyped-def]
    c.settle()  # the workers' start-up checks are over: nothing else writes cl1's files
    return c.engine.create("guard-test", {}, "test", "guards", epoch, [
        Do(restart_check, RestartCheck(TARGET.master, TARGET.epoch, "none.snap"), node="cl1")])


def send_by_hand(c, run_id: str, launch: int, queue: str) -> None:  # type: ignore[no-untyped-def]
    """The run's step as a stray message would carry it: its recorded JSON, by name."""
    [row] = c.ledger.steps(run_id)
    app.send_task(row.task, kwargs={"run": {**row.envelope, "launch": launch},
                                    "step": row.input}, queue=queue)


def worker_log(c, node: str) -> str:  # type: ignore[no-untyped-def]
    return (c.local.rundir / f"worker-{node}.log").read_text()


def test_a_step_issued_under_an_older_epoch_is_refused_and_does_not_act(make_cluster):
    c = make_cluster(clients=1)
    before = c.driver("cl1").read_designation()
    with c.ledger.tx() as conn:
        authority.advance(conn, c.domain.control.name, Designation("srv1", 1),
                          Designation("srv1", 2))
    run_id = one_step_run(c, epoch=1)
    c.engine.launch(run_id)
    run = c.wait(run_id)
    assert run["state"] == L.FAILED, run
    assert "issued under epoch 1; the domain is at epoch 2" in run["error"], run
    assert c.driver("cl1").read_designation() == before


def test_a_message_of_a_superseded_launch_is_dropped_and_leaves_no_trace(make_cluster):
    c = make_cluster(clients=1)
    before = c.driver("cl1").read_designation()
    run_id = one_step_run(c, epoch=1)
    c.ledger.next_launch(run_id)  # a resume's launch 2 now owns the run
    send_by_hand(c, run_id, launch=1, queue="node.cl1")
    # The worker's log is the only sign that it took the message: the ledger must show none.
    deadline = time.time() + 60
    while f"dropped refresh_tables of run {run_id}" not in worker_log(c, "cl1"):
        assert time.time() < deadline, worker_log(c, "cl1")[-2000:]
        time.sleep(0.1)
    [after] = c.ledger.steps(run_id)
    assert (after.state, after.attempt, after.task_id) == (L.PLANNED, 0, None), after
    assert c.driver("cl1").read_designation() == before


def test_a_step_that_reached_another_nodes_worker_is_refused_and_does_not_act(make_cluster):
    c = make_cluster(clients=1)
    before = c.driver("cl1").read_designation()
    run_id = one_step_run(c, epoch=1)
    c.ledger.set_run_state(run_id, L.RUNNING)
    send_by_hand(c, run_id, launch=1, queue="node.srv1")
    run = c.wait(run_id)
    assert run["state"] == L.FAILED, run
    assert "for node 'cl1' reached the worker of 'srv1'" in run["error"], run
    assert c.driver("cl1").read_designation() == before


@pytest.mark.parametrize("new_ledger", ["sqlite"], indirect=True)  # no ledger write to see
def test_a_step_of_another_domain_is_dropped_without_acting_or_writing_the_ledger(
        make_cluster):
    c = make_cluster(clients=1)
    before = c.driver("cl1").read_designation()
    run_id = one_step_run(c, epoch=1)
    [row] = c.ledger.steps(run_id)
    assert row.envelope["domain"] == c.domain.control.name  # every step says whose it is
    c.ledger.set_run_state(run_id, L.RUNNING)
    app.send_task(row.task, kwargs={"run": {**row.envelope, "domain": "elsewhere"},
                                    "step": row.input}, queue="node.cl1")
    deadline = time.time() + 60
    while "a step of domain 'elsewhere' reached a worker of domain" not in worker_log(c, "cl1"):
        assert time.time() < deadline, worker_log(c, "cl1")[-2000:]
        time.sleep(0.1)
    [after] = c.ledger.steps(run_id)
    assert (after.state, after.attempt, after.task_id) == (L.PLANNED, 0, None), after
    assert c.driver("cl1").read_designation() == before


def test_a_fan_out_stops_waiting_for_a_member_queued_or_orphaned_past_expiry_or_hung_past_lease():
    """The fan-out's decision, over data: who is overdue, and why, at a given instant."""
    waiting = {"cl1": L.QUEUED, "cl2": L.RUNNING, "cl3": L.RUNNING, "cl4": L.RUNNING}
    # cl2's worker has no broker connection; cl3's and cl4's have.
    absent = absences(waiting, {"cl3", "cl4", "control"}, {}, now=100.0)
    assert absent == {"cl2": 100.0}
    assert absences(waiting, {"cl3", "cl4"}, absent, now=101.0) == absent  # since then
    assert absences(waiting, None, absent, now=101.0) == {}  # the broker cannot say
    assert overdue(waiting, absent, start=99.0, now=101.0, expires=5, lease=600) == {}
    assert overdue(waiting, absent, start=99.0, now=105.5, expires=5, lease=600) == {
        "cl1": "no worker of cl1 took the step within 5 s",
        "cl2": "the worker of cl2 left while running the step and was not back within 5 s"}
    late = overdue(waiting, absent, start=99.0, now=700.0, expires=5, lease=600)
    assert set(late) == set(waiting)
    assert late["cl4"] == "the step ran on cl4 past the lock lease (600 s)"


def test_a_fan_out_looks_again_when_its_next_member_falls_due_and_no_sooner():
    """The deadline's timer, over data: it wakes when overdue() could first name someone,
    not on a polling beat."""
    # a queued member falls due at its expiry
    assert next_look({"cl1": L.QUEUED}, {}, start=100.0, now=101.0, expires=5,
                     lease=600) == pytest.approx(4.05)
    # a running member's worker is looked for every half expiry...
    assert next_look({"cl1": L.RUNNING}, {}, start=100.0, now=106.0, expires=5,
                     lease=600) == pytest.approx(2.55)
    # ...and once seen gone, it falls due `expires` after that
    assert next_look({"cl1": L.RUNNING}, {"cl1": 104.0}, start=100.0, now=106.0, expires=5,
                     lease=600) == pytest.approx(3.05)
    # the lock lease bounds a member whose worker stays connected but hangs
    assert next_look({"cl1": L.RUNNING}, {}, start=100.0, now=699.0, expires=5,
                     lease=600) == pytest.approx(1.05)
    # the soonest of several; never a negative delay
    assert next_look({"cl1": L.QUEUED, "cl2": L.RUNNING}, {}, start=100.0, now=200.0,
                     expires=5, lease=600) == pytest.approx(0.05)


def test_a_fan_out_stage_ends_only_when_no_member_is_left_and_says_how_it_went():
    step = "repoint_and_start"
    assert stage_verdict({"cl1": (L.SUCCEEDED, step, None), "cl2": (L.RUNNING, step, None)}) \
        is None
    assert stage_verdict({"cl1": (L.SUCCEEDED, step, None), "cl2": (L.RETRYING, step, "x")}) \
        is None
    assert stage_verdict({"cl2": (L.SUCCEEDED, step, None), "cl1": (L.SUCCEEDED, step, None),
                          "cl3": (L.SKIPPED, step, "gone")}) == (
        True, "repoint_and_start done on 2 node(s) (cl1, cl2); unreachable, skipped: cl3")
    assert stage_verdict({"cl1": (L.FAILED, step, "disk full"), "cl2": (L.SUCCEEDED, step, None),
                          "cl3": (L.FAILED, step, "lost")}) == (
        False, "repoint_and_start failed on 2 node(s): cl1: disk full; cl3: lost")
