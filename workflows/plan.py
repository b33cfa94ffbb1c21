"""Failover plans: pure functions over what the control plane saw. No I/O here.

Given the domain, the authoritative state and what each node's probe reported, decide
which BCS takes over, which snapshot it restores (and how old it is: the data that
will be lost), what moves, which nodes stop and start, or the reason to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cosprint.designation import Designation
from cosprint.domain import Domain


@dataclass(frozen=True)
class SnapshotSeen:
    file: str
    ok: bool
    reason: str = ""
    epoch: int = 0
    created_at: float = 0.0
    rows: int = 0


@dataclass(frozen=True)
class NodeSeen:
    """One node as the control plane saw it just now."""

    node: str
    worker: bool  # its worker answered the probe
    cosprint: dict[str, Any] | None = None  # its COSprint's status, None: no answer
    snapshots: list[SnapshotSeen] = field(default_factory=list)  # newest first
    hosted: dict[str, int] = field(default_factory=dict)  # host → objects, its tables
    sample_queues: dict[str, str] = field(default_factory=dict)  # host → a queue it hosts

    @property
    def alive(self) -> bool:
        return self.worker or self.cosprint is not None

    @classmethod
    def from_probe(cls, node: str, report: dict[str, Any] | None,
                   cosprint: dict[str, Any] | None = None) -> NodeSeen:
        if report is None:
            return cls(node=node, worker=False, cosprint=cosprint)
        return cls(
            node=node, worker=True, cosprint=report.get("cosprint"),
            snapshots=[SnapshotSeen(**s) for s in report.get("snapshots", [])],
            hosted=report.get("hosted", {}),
            sample_queues=report.get("sample_queues", {}),
        )


@dataclass(frozen=True)
class FailoverRequest:
    server: str
    to: str | None = None  # a BCS, or None with best=True
    best: bool = False
    force: bool = False


@dataclass(frozen=True)
class FailoverPlan:
    server: str
    bcs: str
    master_before: str
    master_after: str
    epoch_before: int
    epoch_after: int
    restore: list[str]  # verified snapshots to try on the BCS, newest first
    snapshot: str | None
    snapshot_age: float | None  # seconds of changes a restore loses
    refused_snapshots: list[str]
    moving: int  # objects the failed server hosts
    stop: list[str]  # nodes whose COSprint stops (workers alive)
    start: list[str]  # nodes re-pointed and started after
    unreachable: list[str]  # left out: they re-point themselves when they return
    fence: bool  # the failed server still answers and must be fenced
    probe_queue: str  # a queue that moves: the verification job goes there
    notes: list[str]

    def summary(self) -> str:
        loss = (f"snapshot {self.snapshot}, {self.snapshot_age:.0f} s old"
                if self.snapshot else f"no data lost: master {self.master_after} is alive")
        return (f"fail {self.server} over to {self.bcs}: {self.moving} objects move; "
                f"master {self.master_before}@{self.epoch_before} → "
                f"{self.master_after}@{self.epoch_after}; {loss}")


def good_snapshots(seen: NodeSeen) -> list[SnapshotSeen]:
    return [s for s in seen.snapshots if s.ok]


def choose_bcs(domain: Domain, req: FailoverRequest, seen: dict[str, NodeSeen],
               needs_snapshot: bool) -> tuple[str | None, str | None]:
    """(the BCS to fail over to, None) or (None, why none fits)."""
    covering = domain.covering_bcs(req.server)
    if req.to is not None:
        if req.to not in domain.nodes:
            return None, f"unknown node {req.to!r}"
        role = domain.node(req.to).role
        if role != "bcs":
            return None, f"{req.to} is a {role}, not a bcs"
        if req.to not in covering:
            return None, f"{req.to} does not cover {req.server} (covered by: "\
                f"{', '.join(covering)})"
        candidates = [req.to]
    else:
        candidates = covering
    reasons = []
    fit = []
    for b in candidates:
        s = seen.get(b)
        if s is None or not s.worker:
            reasons.append(f"{b}: worker not answering")
        elif needs_snapshot and not good_snapshots(s):
            bad = "; ".join(x.reason for x in s.snapshots if not x.ok)
            reasons.append(f"{b}: no verified snapshot" + (f" that still verifies ({bad})"
                                                           if bad else ""))
        else:
            fit.append(s)
    if not fit:
        return None, f"no bcs can take over {req.server}: {'; '.join(reasons)}"

    def rank(s: NodeSeen) -> tuple[float, int]:
        newest = good_snapshots(s)[0].created_at if good_snapshots(s) else 0.0
        return (-newest, sum(v for h, v in s.hosted.items() if h == s.node))

    return min(fit, key=rank).node, None


def plan_failover(domain: Domain, state: Designation, seen: dict[str, NodeSeen],
                  req: FailoverRequest, now: float) -> FailoverPlan | str:
    """The plan, or the reason to refuse (nothing has changed either way)."""
    if req.server not in domain.nodes:
        return f"unknown node {req.server!r} (known: {', '.join(domain.nodes)})"
    role = domain.node(req.server).role
    if role != "server":
        return f"{req.server} is a {role}, not a server"
    if (req.to is None) == (not req.best):
        return "give exactly one of --to BCS or --best"
    failed = seen.get(req.server, NodeSeen(req.server, worker=False))
    if failed.alive and not req.force:
        parts = (["worker up"] if failed.worker else []) + (
            [f"COSprint up as {failed.cosprint.get('role')}"] if failed.cosprint else [])
        return (f"{req.server} is still alive ({', '.join(parts)}): "
                "use --force to fail over a live server")
    master_changes = state.master == req.server
    bcs, why = choose_bcs(domain, req, seen, needs_snapshot=master_changes)
    if bcs is None:
        return why or "no bcs"
    target = seen[bcs]
    moving = target.hosted.get(req.server, 0)
    if target.hosted and moving == 0:
        return f"{req.server} hosts no objects (already failed over?)"
    master_after = bcs if master_changes else state.master
    if not master_changes and not seen.get(state.master, NodeSeen("", False)).worker:
        return f"master {state.master} does not answer: fail it over first"
    restore, snapshot, age, refused = [], None, None, []
    if master_changes:
        good = good_snapshots(target)
        restore = [s.file for s in good]
        snapshot, age = good[0].file, max(0.0, now - good[0].created_at)
        newer = target.snapshots[: target.snapshots.index(good[0])]
        refused = [f"{s.file}: {s.reason}" for s in newer]
    others = [n for n in domain.names() if n != req.server]
    alive = [n for n in others if seen.get(n) and seen[n].worker]
    stop = alive + ([req.server] if failed.worker else [])
    notes = []
    if refused:
        notes.append(f"newer snapshot(s) refused, restoring the last good one: "
                      f"{'; '.join(refused)}")
    unreachable = [n for n in others if n not in alive]
    if unreachable:
        notes.append(f"unreachable, will re-point when they return: {', '.join(unreachable)}")
    return FailoverPlan(
        server=req.server, bcs=bcs, master_before=state.master, master_after=master_after,
        epoch_before=state.epoch, epoch_after=state.epoch + 1, restore=restore,
        snapshot=snapshot, snapshot_age=age, refused_snapshots=refused, moving=moving,
        stop=stop, start=alive, unreachable=unreachable, fence=failed.alive,
        probe_queue=target.sample_queues.get(req.server, ""), notes=notes,
    )
