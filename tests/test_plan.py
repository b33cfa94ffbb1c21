"""Planners and stage lists alone: pure functions over hand-built probe results, no I/O.

The domain: srv1 (master) and srv2; bcs1 covers both, bcs2 covers srv1, bcs3 covers
srv2; two clients. Every node answers unless a test says otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Domain, parse_domain
from cosfail.workflows.backup import BackupPlan, backup_stages
from cosfail.workflows.engine import Do, short_name
from cosfail.workflows.failover import FAILOVER, failover_stages
from cosfail.workflows.plan import (
    FailoverPlan,
    FailoverRequest,
    NodeSeen,
    ReclaimPlan,
    SnapshotSeen,
    choose_bcs,
    plan_failback,
    plan_failover,
    plan_reclaim,
    plan_switchover,
)
from cosfail.workflows.reclaim import RECLAIM, reclaim_stages
from cosfail.workflows.refusal import INVALID, REFUSED, Refusal
from cosfail.workflows.restart_check import RestartPlan, reclaim_first, restart_check_stages
from cosfail.workflows.switchover import FAILBACK, SWITCHOVER, failback_stages, switchover_stages

NOW = 10_000.0
STATE = Designation("srv1", 4)
HOSTED = {"srv1": 600, "srv2": 400}  # every node's copy of the master's tables


def _domain() -> Domain:
    roles = {"srv1": "server", "srv2": "server", "bcs1": "bcs", "bcs2": "bcs", "bcs3": "bcs",
             "cl1": "client", "cl2": "client"}
    raw = {
        "control": {"name": "unit"},
        "node": [{"name": n, "role": r, "home": f"nodes/{n}", "port": 7000 + i,
                  **({"master": True} if n == "srv1" else {})}
                 for i, (n, r) in enumerate(roles.items())],
        "coverage": [{"bcs": "bcs1", "servers": ["srv1", "srv2"]},
                     {"bcs": "bcs2", "servers": ["srv1"]},
                     {"bcs": "bcs3", "servers": ["srv2"]}],
    }
    return parse_domain(raw, Path("/nowhere/domain.toml"))


DOMAIN = _domain()


def snap(name: str, age: float, ok: bool = True, reason: str = "", epoch: int = 4) -> SnapshotSeen:
    """A snapshot `age` seconds old at NOW, as a BCS's probe reports it."""
    if not ok:
        return SnapshotSeen(file=name, ok=False, reason=reason or f"{name}: checksum mismatch")
    return SnapshotSeen(file=name, ok=True, epoch=epoch, created_at=NOW - age, rows=1000)


def seen(dead: tuple[str, ...] = ("srv1",), snapshots: dict[str, list[SnapshotSeen]] | None = None,
         hosted: dict[str, dict[str, int]] | None = None,
         cosprint_only: tuple[str, ...] = ()) -> dict[str, NodeSeen]:
    """What a probe of DOMAIN saw: `dead` nodes answer nothing; `cosprint_only` nodes
    have no worker but their COSprint answers; BCSs report `snapshots` (newest first)."""
    snapshots = {"bcs1": [snap("b1.snap", 60)], "bcs2": [snap("b2.snap", 60)],
                 "bcs3": [snap("b3.snap", 60)]} if snapshots is None else snapshots
    out = {}
    for node in DOMAIN.names():
        if node in dead:
            out[node] = NodeSeen(node, worker=False)
        elif node in cosprint_only:
            out[node] = NodeSeen(node, worker=False,
                                 cosprint={"role": "master", "master": "srv1", "epoch": 4})
        else:
            out[node] = NodeSeen(
                node, worker=True, cosprint={"role": "slave"},
                snapshots=snapshots.get(node, []), hosted=(hosted or {}).get(node, HOSTED),
                sample_queues={"srv1": "q-srv1-1", "srv2": "q-srv2-1"})
    return out


def plan(req: FailoverRequest, s: dict[str, NodeSeen] | None = None,
         state: Designation = STATE) -> FailoverPlan | Refusal:
    return plan_failover(DOMAIN, state, seen() if s is None else s, req, NOW)


def ok(req: FailoverRequest, s: dict[str, NodeSeen] | None = None,
       state: Designation = STATE) -> FailoverPlan:
    p = plan(req, s, state)
    assert isinstance(p, FailoverPlan), p
    return p


# ----- choosing the BCS ---------------------------------------------------------------------
def test_best_takes_the_covering_bcs_with_the_freshest_verified_snapshot():
    s = seen(snapshots={"bcs1": [snap("b1.snap", 300)], "bcs2": [snap("b2.snap", 30)],
                        "bcs3": [snap("b3.snap", 1)]})  # bcs3 is freshest but covers srv2
    p = ok(FailoverRequest("srv1", best=True), s)
    assert (p.bcs, p.snapshot, p.restore) == ("bcs2", "b2.snap", ["b2.snap"])
    assert p.snapshot_age == pytest.approx(30)
    assert choose_bcs(DOMAIN, FailoverRequest("srv1", best=True), s, True) == "bcs2"


def test_best_skips_a_bcs_whose_worker_is_down_even_with_the_freshest_snapshot():
    s = seen(dead=("srv1", "bcs2"),
             snapshots={"bcs1": [snap("b1.snap", 300)], "bcs2": [snap("b2.snap", 1)]})
    p = ok(FailoverRequest("srv1", best=True), s)
    assert p.bcs == "bcs1" and "bcs2" in p.unreachable


def test_best_ranks_by_the_newest_snapshot_that_still_verifies():
    # bcs1's newest is corrupt: its last good one is older than bcs2's.
    s = seen(snapshots={"bcs1": [snap("b1-new.snap", 5, ok=False), snap("b1-old.snap", 500)],
                        "bcs2": [snap("b2.snap", 100)]})
    assert ok(FailoverRequest("srv1", best=True), s).bcs == "bcs2"


def test_best_breaks_a_tie_on_snapshot_age_by_fewest_hosted_objects():
    same = {"bcs1": [snap("b1.snap", 60)], "bcs2": [snap("b2.snap", 60)]}
    busy = {**HOSTED, "bcs1": 50}  # bcs1 already hosts 50 objects (an earlier failover)
    s = seen(snapshots=same, hosted={"bcs1": busy, "bcs2": HOSTED})
    assert ok(FailoverRequest("srv1", best=True), s).bcs == "bcs2"
    s = seen(snapshots=same, hosted={"bcs1": HOSTED, "bcs2": {**HOSTED, "bcs2": 7}})
    assert ok(FailoverRequest("srv1", best=True), s).bcs == "bcs1"


# ----- the plan -------------------------------------------------------------------------------
def test_master_failover_plan_restores_the_newest_snapshot_and_moves_the_servers_objects():
    p = ok(FailoverRequest("srv1", to="bcs1"))
    assert (p.server, p.bcs, p.master_before, p.master_after) == ("srv1", "bcs1", "srv1", "bcs1")
    assert (p.epoch_before, p.epoch_after) == (4, 5)
    assert p.moving == HOSTED["srv1"]
    assert p.snapshot == "b1.snap" and p.snapshot_age == pytest.approx(60)
    assert p.refused_snapshots == [] and p.notes == []
    assert "srv1" not in p.stop and "srv1" not in p.start
    assert sorted(p.start) == sorted(n for n in DOMAIN.names() if n != "srv1")
    assert p.probe_queue == "q-srv1-1"


def test_a_corrupt_newest_snapshot_is_refused_and_the_last_good_one_restored():
    s = seen(snapshots={"bcs1": [snap("new.snap", 10, ok=False, reason="new.snap: checksum "
                                      "mismatch (corrupt, or not this manifest's)"),
                                 snap("good.snap", 400), snap("older.snap", 700)]})
    p = ok(FailoverRequest("srv1", to="bcs1"), s)
    assert p.snapshot == "good.snap" and p.snapshot_age == pytest.approx(400)
    assert p.restore == ["good.snap", "older.snap"]
    assert p.refused_snapshots == ["new.snap: new.snap: checksum mismatch (corrupt, or not "
                                   "this manifest's)"]
    assert len(p.notes) == 1
    assert p.notes[0].startswith("newer snapshot(s) refused, restoring the last good one")
    assert "new.snap" in p.notes[0] and "checksum mismatch" in p.notes[0]


def test_a_restore_replays_the_hosting_moves_its_snapshot_predates():
    # srv2 went to bcs3 at epoch 2, back at 3 and to bcs3 again at 4 (the domain's epoch);
    # the newest snapshot was taken at epoch 3: only the move of epoch 4 is missing in it.
    moves = [(4, "srv2", "bcs3"), (2, "srv2", "bcs3"), (3, "bcs3", "srv2")]
    s = seen(snapshots={"bcs1": [snap("e3.snap", 60, epoch=3), snap("e3-old.snap", 400, epoch=3),
                                 snap("e2.snap", 900, epoch=2)]})
    p = plan_failover(DOMAIN, STATE, s, FailoverRequest("srv1", to="bcs1"), NOW, moves)
    assert isinstance(p, FailoverPlan), p
    assert p.snapshot == "e3.snap" and p.replay == [("srv2", "bcs3")]
    # an older-epoch fallback would need another replay: it is not a candidate
    assert p.restore == ["e3.snap", "e3-old.snap"]
    assert any("e3.snap predates later hosting changes" in n and "srv2 → bcs3" in n
               for n in p.notes)
    current = seen(snapshots={"bcs1": [snap("e4.snap", 60, epoch=4)]})
    p = plan_failover(DOMAIN, STATE, current, FailoverRequest("srv1", to="bcs1"), NOW, moves)
    assert isinstance(p, FailoverPlan) and p.replay == [] and p.notes == []
    # a non-master failover restores nothing, so replays nothing
    p = plan_failover(DOMAIN, STATE, seen(dead=("srv2",)), FailoverRequest("srv2", to="bcs3"),
                      NOW, moves)
    assert isinstance(p, FailoverPlan) and p.replay == []


def test_a_non_master_servers_failover_needs_no_snapshot_and_keeps_the_master():
    s = seen(dead=("srv2",), snapshots={})  # no BCS holds any snapshot
    p = ok(FailoverRequest("srv2", to="bcs3"), s)
    assert (p.master_before, p.master_after) == ("srv1", "srv1")
    assert (p.epoch_before, p.epoch_after) == (4, 5)
    assert p.restore == [] and p.snapshot is None and p.snapshot_age is None
    assert p.moving == HOSTED["srv2"] and p.probe_queue == "q-srv2-1"
    assert "srv1" in p.start and "srv2" not in p.start
    assert "no data lost" in p.summary()
    assert ok(FailoverRequest("srv2", best=True), s).bcs in ("bcs1", "bcs3")


def test_unreachable_nodes_are_listed_and_left_out_of_stop_and_start():
    s = seen(dead=("srv1", "cl2", "bcs2"))
    p = ok(FailoverRequest("srv1", to="bcs1"), s)
    assert p.unreachable == ["bcs2", "cl2"]
    for node in ("srv1", "bcs2", "cl2"):
        assert node not in p.stop and node not in p.start, node
    assert p.stop == p.start == ["srv2", "bcs1", "bcs3", "cl1"]
    assert any("bcs2, cl2" in n and "re-point when they return" in n for n in p.notes)


def test_a_forced_failover_of_a_live_server_stops_it_but_never_restarts_it():
    p = ok(FailoverRequest("srv1", to="bcs1", force=True), seen(dead=()))
    assert "srv1" in p.stop and "srv1" not in p.start and p.unreachable == []


def test_from_probe_reads_a_worker_report_and_a_silent_worker():
    report = {"cosprint": None, "hosted": {"srv1": 3}, "sample_queues": {"srv1": "q"},
              "snapshots": [{"file": "a.snap", "ok": True, "reason": "", "epoch": 2,
                             "created_at": 5.0, "rows": 3}]}
    n = NodeSeen.from_probe("bcs1", report)
    assert n.worker and n.alive and n.snapshots[0] == SnapshotSeen("a.snap", True, "", 2, 5.0, 3)
    assert not NodeSeen.from_probe("srv1", None).alive
    assert NodeSeen.from_probe("srv1", None, {"role": "master"}).alive


# ----- refusals: a reason naming the problem, never an exception --------------------------------
REFUSALS = [
    ("unknown server", FailoverRequest("srv9", to="bcs1"), seen(), "unknown node 'srv9'"),
    ("a client", FailoverRequest("cl1", to="bcs1"), seen(), "cl1 is a client, not a server"),
    ("a bcs", FailoverRequest("bcs1", to="bcs2"), seen(), "bcs1 is a bcs, not a server"),
    ("unknown target", FailoverRequest("srv1", to="bcs9"), seen(), "unknown node 'bcs9'"),
    ("target a client", FailoverRequest("srv1", to="cl1"), seen(), "cl1 is a client, not a bcs"),
    ("target a server", FailoverRequest("srv1", to="srv2"), seen(),
     "srv2 is a server, not a bcs"),
    ("target not covering", FailoverRequest("srv1", to="bcs3"), seen(),
     "bcs3 does not cover srv1 (covered by: bcs1, bcs2)"),
    ("server alive", FailoverRequest("srv1", to="bcs1"), seen(dead=()),
     "srv1 is still alive (worker up"),
    ("server's COSprint alive", FailoverRequest("srv1", to="bcs1"),
     seen(dead=(), cosprint_only=("srv1",)), "srv1 is still alive (COSprint up as master)"),
    ("no snapshot", FailoverRequest("srv1", to="bcs1"), seen(snapshots={}),
     "bcs1: no verified snapshot"),
    ("no snapshot anywhere", FailoverRequest("srv1", best=True), seen(snapshots={}),
     "no bcs can take over srv1: bcs1: no verified snapshot; bcs2: no verified snapshot"),
    ("only corrupt snapshots", FailoverRequest("srv1", to="bcs1"),
     seen(snapshots={"bcs1": [snap("x.snap", 5, ok=False, reason="x.snap: truncated")]}),
     "bcs1: no verified snapshot that still verifies (x.snap: truncated)"),
    ("target down", FailoverRequest("srv1", to="bcs1"), seen(dead=("srv1", "bcs1")),
     "bcs1: worker not answering"),
    ("neither --to nor --best", FailoverRequest("srv1"), seen(),
     "give exactly one of --to BCS or --best"),
    ("both --to and --best", FailoverRequest("srv1", to="bcs1", best=True), seen(),
     "give exactly one of --to BCS or --best"),
    ("master down too", FailoverRequest("srv2", to="bcs3"), seen(dead=("srv1", "srv2")),
     "master srv1 does not answer: fail it over first"),
    ("nothing to move", FailoverRequest("srv2", to="bcs3"),
     seen(dead=("srv2",), hosted={"bcs3": {"srv1": 600, "bcs3": 400}}),
     "srv2 hosts no objects (already failed over?)"),
]


@pytest.mark.parametrize("req,s,reason", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_each_refusal_is_a_reason_naming_the_problem(req, s, reason):
    got = plan(req, s)
    assert isinstance(got, Refusal), got
    assert reason in got.reason


INVALID_INPUT = {"unknown server", "a client", "a bcs", "unknown target", "target a client",
                 "target a server", "target not covering", "neither --to nor --best",
                 "both --to and --best"}


@pytest.mark.parametrize("name,req,s", [r[:3] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_request_naming_what_cannot_be_is_invalid_and_the_rest_refused_by_the_domain(
        name, req, s):
    assert plan(req, s).code == (INVALID if name in INVALID_INPUT else REFUSED)


# ----- planned moves and reclaim ----------------------------------------------------------------
def test_a_switchover_of_the_live_master_loses_nothing_and_stops_every_node():
    p = plan_switchover(DOMAIN, STATE, seen(dead=()), "srv1", "bcs2")
    assert isinstance(p, FailoverPlan), p
    assert (p.server, p.bcs, p.master_after, p.epoch_after) == ("srv1", "bcs2", "bcs2", 5)
    assert p.snapshot is None and p.snapshot_age == 0.0 and p.restore == []
    assert p.stop == p.start == [n for n in DOMAIN.names() if n != "srv1"]


def failed_over_and_reclaimed() -> dict[str, NodeSeen]:
    """srv1's objects on bcs1 (master at epoch 4), srv1 reclaimed: a slave of it."""
    s = seen(dead=(), hosted={n: {"bcs1": 600, "srv2": 400} for n in DOMAIN.names()})
    s["srv1"] = replace(s["srv1"], designation={"master": "bcs1", "epoch": 4})
    return s


def test_a_failback_moves_hosting_from_the_bcs_that_took_over_once_reclaimed():
    s = failed_over_and_reclaimed()
    state = Designation("bcs1", 4)
    p = plan_failback(DOMAIN, state, s, "srv1", "bcs1", reclaim_needed=[])
    assert isinstance(p, FailoverPlan), p
    assert (p.server, p.bcs, p.master_after) == ("bcs1", "srv1", "srv1")
    assert plan_failback(DOMAIN, state, s, "srv1", None, []).reason == \
        "srv1 was never failed over: nothing to fail back"
    assert plan_failback(DOMAIN, state, s, "srv1", "bcs1", ["srv1"]).reason.startswith(
        "srv1 is not reclaimed yet")


def test_a_reclaim_sets_the_stale_epoch_aside_and_refuses_a_current_server():
    s = seen(dead=())
    s["srv1"] = replace(s["srv1"], designation={"master": "srv1", "epoch": 3})
    p = plan_reclaim(DOMAIN, Designation("bcs1", 4), s, "srv1", [])
    assert p == ReclaimPlan(server="srv1", master="bcs1", epoch=4, obsolete_epoch=3)
    s["srv1"] = replace(s["srv1"], designation={"master": "bcs1", "epoch": 4})
    assert plan_reclaim(DOMAIN, Designation("bcs1", 4), s, "srv1", []).reason.startswith(
        "srv1 is not stale")


# ----- stages: each workflow's whole chain, from its plan, with nothing started ---------------
RUN = "r1"
AT = 1_000_000_000.0  # 2001-09-09T01:46:40Z
OTHERS = ("bcs1", "bcs2", "bcs3", "cl1", "cl2", "srv2")


def chain(stages: list[Any], run_epoch: int) -> list[tuple[str, str | tuple[str, ...], int]]:
    """Each stage as (step, node or the fan-out's nodes, the epoch it is issued under)."""
    return [(short_name(st.task), st.node if isinstance(st, Do) else tuple(sorted(st.inputs)),
             run_epoch if st.epoch is None else st.epoch) for st in stages]


def test_the_failover_chain_fences_stops_restores_rehosts_and_restarts_under_the_new_epoch():
    p = ok(FailoverRequest("srv1", to="bcs1"))
    stages = failover_stages(DOMAIN, p, RUN, AT)
    assert chain(stages, FAILOVER.epoch(p)) == [
        ("take_lock", "", 4), ("advance_epoch", "", 5), ("fence_server", "", 5),
        ("stop_cosprint", OTHERS, 5), ("wait_out_lease", "", 5),
        ("restore_snapshot", "bcs1", 5), ("rehost_objects", "bcs1", 5),
        ("publish_tables", "bcs1", 5), ("repoint_and_start", OTHERS, 5), ("verify", "", 5)]
    advance = stages[1].input
    assert (advance.server, advance.moved_from, advance.hosted_by) == ("srv1", "srv1", "bcs1")
    assert (stages[4].input.server, stages[4].input.bcs) == ("srv1", "bcs1")
    assert stages[5].input.candidates == ["b1.snap"]
    assert {i.file for i in stages[8].inputs.values()} == {stages[7].input.file}


def test_a_failover_with_spool_and_replayed_moves_adds_those_steps_in_place():
    s = seen(snapshots={"bcs1": [snap("e3.snap", 60, epoch=3)]})
    p = plan_failover(DOMAIN, STATE, s, FailoverRequest("srv1", to="bcs1", with_spool=True),
                      NOW, moves=[(4, "srv2", "bcs3")])
    assert isinstance(p, FailoverPlan), p
    steps = [(name, node) for name, node, _ in chain(failover_stages(DOMAIN, p, RUN, AT), 4)]
    assert steps[3:9] == [("stop_cosprint", OTHERS), ("wait_out_lease", ""),
                          ("copy_spool", "bcs1"),
                          ("restore_snapshot", "bcs1"), ("rehost_objects", "bcs1"),
                          ("rehost_objects", "bcs1")]
    assert [(st.input.old_host, st.input.new_host)
            for st in failover_stages(DOMAIN, p, RUN, AT) if short_name(st.task) ==
            "rehost_objects"] == [("srv2", "bcs3"), ("srv1", "bcs1")]


def test_the_switchover_chain_ships_fresh_tables_then_reclaims_the_source():
    p = plan_switchover(DOMAIN, STATE, seen(dead=()), "srv1", "bcs2")
    stages = switchover_stages(DOMAIN, p, RUN, AT)
    others = tuple(sorted(n for n in DOMAIN.names() if n != "srv1"))
    assert chain(stages, SWITCHOVER.epoch(p)) == [
        ("take_lock", "", 4), ("stop_cosprint", "srv1", 4), ("export_tables", "srv1", 4),
        ("ship_snapshot", "bcs2", 4), ("verify_snapshot", "bcs2", 4),
        ("advance_epoch", "", 5), ("stop_cosprint", others, 5), ("wait_out_lease", "", 5),
        ("restore_snapshot", "bcs2", 5), ("rehost_objects", "bcs2", 5),
        ("publish_tables", "bcs2", 5), ("repoint_and_start", others, 5), ("verify", "", 5),
        ("stop_cosprint", "srv1", 5), ("set_aside_data", "srv1", 5),
        ("publish_tables", "bcs2", 5), ("refresh_tables", "srv1", 5),
        ("start_cosprint", "srv1", 5), ("resend_set_aside_jobs", "srv1", 5),
        ("verify", "", 5)]
    fresh = stages[2].input.file
    assert fresh == f"unit-e4-20010909T014640-{RUN}.snap"
    assert stages[8].input.candidates == [fresh]
    assert stages[14].input.epoch == 4  # srv1's obsolete data is set aside under epoch 4
    assert SWITCHOVER.subject(p) == "srv1"


def test_the_failback_chain_is_a_planned_move_whose_subject_is_the_server():
    s = failed_over_and_reclaimed()
    p = plan_failback(DOMAIN, Designation("bcs1", 4), s, "srv1", "bcs1", [])
    stages = failback_stages(DOMAIN, p, RUN, AT)
    assert [name for name, _, _ in chain(stages, 4)][:3] == \
        ["take_lock", "stop_cosprint", "export_tables"]
    advance = next(st.input for st in stages if short_name(st.task) == "advance_epoch")
    assert (advance.server, advance.moved_from, advance.hosted_by) == ("srv1", "bcs1", "srv1")
    assert FAILBACK.subject(p) == "srv1"


def test_the_reclaim_chain_resets_the_server_from_the_master_and_starts_it_as_a_slave():
    p = ReclaimPlan(server="srv1", master="bcs1", epoch=4, obsolete_epoch=3)
    assert chain(reclaim_stages(DOMAIN, p, RUN, AT), RECLAIM.epoch(p)) == [
        ("take_lock", "", 4), ("stop_cosprint", "srv1", 4), ("set_aside_data", "srv1", 4),
        ("publish_tables", "bcs1", 4), ("refresh_tables", "srv1", 4),
        ("start_cosprint", "srv1", 4), ("resend_set_aside_jobs", "srv1", 4),
        ("verify", "", 4)]


def test_the_backup_chain_exports_on_the_master_and_verifies_on_every_covering_bcs():
    stages = backup_stages(DOMAIN, BackupPlan(master="srv1", epoch=4), RUN, AT)
    assert chain(stages, 4) == [
        ("export_tables", "srv1", 4), ("ship_snapshot", ("bcs1", "bcs2", "bcs3"), 4),
        ("verify_snapshot", ("bcs1", "bcs2", "bcs3"), 4), ("record_backup", "", 4)]
    assert stages[0].input.file == f"unit-e4-20010909T014640-{RUN}.snap"


def test_the_restart_check_chain_only_starts_a_current_node_and_re_points_a_changed_one():
    current = RestartPlan("cl1", "srv1", 4, "srv1@4", "srv1@4", "current")
    assert chain(restart_check_stages(DOMAIN, current, RUN, AT), 4) == [
        ("start_cosprint", "cl1", 4)]
    changed = replace(current, master="bcs1", decision="refresh")
    assert chain(restart_check_stages(DOMAIN, changed, RUN, AT), 4) == [
        ("publish_tables", "bcs1", 4), ("refresh_tables", "cl1", 4),
        ("start_cosprint", "cl1", 4)]
    assert reclaim_first(DOMAIN, changed) is None
    assert reclaim_first(DOMAIN, replace(changed, decision="reclaim")).reason.startswith(
        "reclaim needed: cl1 was failed over")
