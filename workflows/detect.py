"""Failure detection, the failover recommendation, and the guarded automatic failover.

The detector watches every node from the control plane about once a second: its worker
(a Celery ping through the broker) and its COSprint (the driver's `status()`). Each
node goes up → suspect → down → up, and every transition is a row in the ledger's
`liveness` table, with `[detect].notify_command` run once for it.

A node is *down* only when both its worker and its COSprint have been unreachable from
the control plane for `[detect].down_after` seconds AND another node agrees: the
detector sends `cosfail.node.check_peer` to the queues of up to two live peers, which
try the node's COSprint status URL from their own host and ping its worker over their
own broker connection. A peer that still reaches either one vetoes "down": a partition
around the control plane alone never counts. (The worker side of the peer's opinion
travels through the same broker as ours, so it is a second observer, not a second path;
the COSprint check from the peer's host is the independent one.)

Where `[detect].auto_failover` is on, a confirmed-down server is failed over to the BCS
`--best` would choose, by the same trigger as the operator's, as `auto`, unless a
guard stops it: a hosting change runs, `max_auto_per_hour` is reached, the newest
verified snapshot is older than `max_data_loss`, no second node confirmed, no control
worker answers (or the pre-failover hook vetoes, which the trigger records). Each
refusal is a `refused` failover run in the ledger, with the reasons, recorded once per
outage and set of guards; `cosfail status` shows it. A server that answers again before
the failover starts cancels it; one that returns after is reclaim's (its objects are
hosted elsewhere by then), never a second failover's.

The decisions are pure functions in `workflows.detection`; `Detector` does the I/O.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

from cosfail.cosprint import logs
from cosfail.cosprint.domain import Detect, Domain
from cosfail.workflows import ledger as L
from cosfail.workflows.detection import (
    DOWN,
    HOUR,
    SUSPECT,
    UP,
    Confirmation,
    Liveness,
    Seen,
    already_handled,
    auto_failover_guards,
    data_loss_guard,
    failover_candidate,
    failover_command,
    judge_confirmation,
    lease_for,
    notify_argv,
    resume,
    transition,
    wants_confirmation,
    worth_notifying,
    worth_recording,
)
from cosfail.workflows.maintenance import paused_reason

log = logging.getLogger("cosfail.detect")

PEERS = 2  # how many live peers are asked for a second opinion
PING_TIMEOUT = 0.5
CONFIRM_TIMEOUT = 2.0
NOTIFY_TIMEOUT = 30.0
RETRY_AFTER = 30.0  # seconds before a vetoed or unplannable automatic failover is retried


# ----- what the ledger says (status, metrics, and the detector's inputs) ---------------------
def auto_failover_times(eng: Any, now: float) -> list[float]:
    """When each automatic failover of the last hour that was not refused started."""
    return [r["created_at"] for r in eng.ledger.runs_since(now - HOUR, "failover")
            if r["triggered_by"] == "auto" and r["state"] != L.REFUSED]


def newest_snapshot_age(eng: Any, server: str, now: float) -> float | None:
    """Age of the newest verified snapshot on a BCS covering `server` (what --best
    restores, unless it no longer verifies)."""
    times = [s["created_at"] for b in eng.domain.covering_bcs(server)
             for s in eng.ledger.catalog(b)[:1]]
    return now - max(times) if times else None


def auto_runs_since(eng: Any, server: str, since: float) -> list[dict[str, Any]]:
    return [r for r in eng.ledger.runs_since(since, "failover", subject=server)
            if r["triggered_by"] == "auto"]


def report(eng: Any, seen: dict[str, Any], now: float) -> dict[str, Any]:
    """The detector's part of `cosfail status`: each node's liveness, the detector
    itself, and for each down server, the recommendation (the BCS `--best` chooses, the
    snapshot's age, the exact command) and what the automatic failover did."""
    from cosfail.workflows.plan import FailoverRequest, plan_failover
    from cosfail.workflows.refusal import Refusal
    from cosfail.workflows.state import current_state

    cfg = eng.domain.spec.detect
    rows = eng.ledger.liveness_now()
    lock = eng.ledger.lock_row(L.DETECT_LOCK)
    watcher = None
    if lock:
        watcher = {"id": lock["run_id"], "owner": lock["owner"],
                   "active": lock["lease_until"] >= now,
                   "last_tick_age": round(now - (lock["lease_until"] - lease_for(cfg)), 1)}
    liveness = {}
    for node, r in rows.items():
        gone = r["unreachable_since"] if r["state"] != UP else None
        liveness[node] = {"state": r["state"], "since": r["at"],
                          "unreachable_since": gone,
                          "unreachable_for": round(now - gone, 1) if gone else None,
                          "confirmed_by": r["confirmed_by"], "note": r["note"]}
    down = []
    state = current_state(eng)
    moves = None
    for node, r in rows.items():
        if r["state"] != DOWN or eng.domain.nodes.get(node) is None \
                or eng.domain.node(node).role != "server":
            continue
        moves = moves if moves is not None else eng.ledger.hosting_moves()
        start = r["unreachable_since"] or r["at"]
        rec: dict[str, Any] = {
            "server": node, "down_since": r["at"], "unreachable_since": start,
            "down_for": round(now - start, 1), "confirmed_by": r["confirmed_by"],
            "best_bcs": None, "snapshot": None, "snapshot_age": None, "data_loss": None,
            "command": None, "refused": None,
        }
        handled = already_handled(node, Liveness(node, DOWN, r["at"], start),
                                  eng.ledger.runs_since(start, "failover", subject=node),
                                  moves)
        plan = None if handled else plan_failover(
            eng.domain, state, seen, FailoverRequest(server=node, best=True), now, moves)
        if handled or plan is None:
            rec["refused"] = handled
        elif isinstance(plan, Refusal):
            rec["refused"] = plan.reason
        else:
            loss = (f"changes of the last {plan.snapshot_age:.0f} s (snapshot {plan.snapshot})"
                    if plan.snapshot else f"none: master {plan.master_after} is alive")
            rec.update(best_bcs=plan.bcs, snapshot=plan.snapshot,
                       snapshot_age=None if plan.snapshot_age is None
                       else round(plan.snapshot_age, 1),
                       data_loss=loss, command=failover_command(eng.domain, node, plan.bcs))
        auto = auto_runs_since(eng, node, start)
        rec["auto_failover"] = {
            "enabled": cfg.auto_failover,
            "run_id": auto[0]["id"] if auto else None,
            "state": auto[0]["state"] if auto else None,
            "reason": auto[0]["reason"] if auto else None,
        }
        down.append(rec)
    # Unconfirmed suspects past down_after: the guard that stops the auto failover.
    refusals = {}
    for node, r in rows.items():
        if r["state"] == SUSPECT and cfg.auto_failover:
            auto = auto_runs_since(eng, node, r["at"])
            if auto:
                refusals[node] = {"run_id": auto[0]["id"], "state": auto[0]["state"],
                                  "reason": auto[0]["reason"]}
    return {
        "detect": {"watcher": watcher, "auto_failover": cfg.auto_failover,
                   "down_after": cfg.down_after, "max_auto_per_hour": cfg.max_auto_per_hour,
                   "max_data_loss": cfg.max_data_loss, "suspect_refusals": refusals},
        "liveness": liveness,
        "down": down,
    }


# ----- the loop (all the I/O) ---------------------------------------------------------------
class Detector:
    """Observes, records, notifies and (where enabled) fails over; one tick at a time."""

    def __init__(self, eng: Any) -> None:
        from cosfail.cosprint.drivers import driver_for

        self.eng = eng
        self.domain: Domain = eng.domain
        self.cfg: Detect = self.domain.spec.detect
        self.nodes = self.domain.names()
        self.drivers = {n: driver_for(self.domain, n) for n in self.nodes}
        self.states: dict[str, Liveness] = {}
        self.workers: dict[str, str] = {}  # node → worker hostname, from its last answer
        self.last_seen: dict[str, Seen] = {}
        self.control_worker = True
        self.answering: set[str] = set()
        # This outage's automatic-failover bookkeeping, per server, cleared when it is up:
        self.refused: dict[str, tuple[str, ...]] = {}  # the guard kinds last recorded
        self.handled: set[str] = set()  # a failover acts on it, or it hosts nothing
        self.retry_at: dict[str, float] = {}  # after a veto or a refused plan
        self.pool = ThreadPoolExecutor(max_workers=2 * len(self.nodes) + 4,
                                       thread_name_prefix="detect")
        self.id = f"w-{uuid.uuid4().hex[:10]}"

    # ----- observing ----------------------------------------------------------------------
    def _ping(self) -> dict[str, str]:
        from cosfail.workers.app import connected_workers
        from cosfail.workflows.liveness import ping

        try:
            # Only workers that hold a broker connection can answer: once they all have,
            # the round goes on (a killed worker's silence costs no timeout).
            connected = connected_workers(self.domain)
            return ping(timeout=PING_TIMEOUT, expect=len(connected) if connected else None)
        except Exception as exc:  # the broker unreachable from here: nobody answers
            log.warning("ping failed: %s", exc)
            return {}

    def observe(self) -> dict[str, Seen]:
        pinged = self.pool.submit(self._ping)
        cos = {n: self.pool.submit(lambda n=n: self.drivers[n].status() is not None)
               for n in self.nodes}
        answered = pinged.result()
        self.workers.update({n: w for n, w in answered.items() if n in self.drivers})
        self.control_worker = "control" in answered
        if set(answered) != self.answering:
            self.answering = set(answered)
            log.info("workers answering a ping: %s", ", ".join(sorted(answered)) or "none")
        return {n: Seen(worker=n in answered, cosprint=cos[n].result()) for n in self.nodes}

    def last_look(self, node: str) -> Seen:
        """`node` once more, just before its automatic failover: its COSprint, and its
        worker unless the broker says that worker holds no connection (one that cannot
        answer would make a ping wait out its whole timeout)."""
        from cosfail.workers.app import may_answer

        cosprint = self.drivers[node].status() is not None
        return Seen(worker=may_answer(self.domain, node) and node in self._ping(),
                    cosprint=cosprint)

    def peers_for(self, node: str) -> list[str]:
        """Live peers to ask, those on another host first."""
        host = self.domain.node(node).host
        live = [n for n in self.nodes if n != node and self.last_seen.get(n, Seen(False, False))
                .worker]
        live.sort(key=lambda n: self.domain.node(n).host == host)
        return live[:PEERS]

    def confirm(self, node: str) -> Confirmation:
        from cosfail.workers.app import node_queue
        from cosfail.workers.steps import check_peer

        peers = self.peers_for(node)
        sent = {p: check_peer.apply_async(kwargs={"node": node,
                                                  "worker": self.workers.get(node)},
                                          queue=node_queue(p), expires=CONFIRM_TIMEOUT)
                for p in peers}
        deadline = time.time() + CONFIRM_TIMEOUT
        answers: dict[str, dict[str, Any] | None] = {}
        for peer, result in sent.items():
            try:
                answers[peer] = result.get(timeout=max(0.05, deadline - time.time()),
                                           disable_sync_subtasks=False)
            except Exception:  # timed out, expired: no opinion from that peer
                result.forget()
                answers[peer] = None
        verdict = judge_confirmation(node, peers, answers)
        log.info("second opinion on %s: %s", node, verdict)
        return verdict

    # ----- recording ----------------------------------------------------------------------
    def load(self, now: float) -> None:
        rows = self.eng.ledger.liveness_now()
        self.states = {n: s for n in self.nodes if (s := resume(rows.get(n), now))}

    def apply(self, prev: Liveness | None, new: Liveness, now: float) -> None:
        if worth_recording(prev, new):
            changed = prev is None or prev.state != new.state
            self.eng.ledger.record_liveness(
                new.node, new.state, new.since if changed else now,
                prev.state if prev else None, new.unreachable_since, new.confirmed_by,
                new.note)
            log.info("%s: %s → %s (%s)", new.node, prev.state if prev else "-", new.state,
                     new.note)
        if worth_notifying(prev, new):
            self.notify(new)
        self.states[new.node] = new

    def notify(self, liv: Liveness) -> None:
        if not self.cfg.notify_command:
            return
        argv = notify_argv(self.cfg.notify_command, liv.node, liv.state)

        def run() -> None:
            try:
                done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603
                                      timeout=NOTIFY_TIMEOUT, check=False)
                if done.returncode != 0:
                    log.warning("notify_command exited %s: %s", done.returncode,
                                (done.stderr or done.stdout).strip()[:300])
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("notify_command failed: %s", exc)

        threading.Thread(target=run, name=f"notify-{liv.node}", daemon=True).start()

    # ----- one round --------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        # The round's time is taken as it observes, not before the ledger wrote the
        # lease: a slow write must not make a node look unreachable for longer.
        now = time.time() if now is None else now
        down_after = self.cfg.down_after
        asking = {n: self.pool.submit(self.confirm, n) for n in self.nodes
                  if wants_confirmation(self.states.get(n), now, down_after)}
        seen = self.observe()
        self.last_seen = seen
        for node in self.nodes:
            prev = self.states.get(node)
            conf = asking[node].result() if node in asking else None
            # A node is down from the moment a peer's confirmation came in.
            new = transition(prev, node, seen[node], time.time() if conf is not None else now,
                             down_after, conf)
            if new.state == UP and prev is not None and prev.state != UP:
                if node in self.handled:
                    new = replace(new, note=new.note + "; already failed over: its return "
                                  "is reclaim's job")
                elif node in self.refused:  # guards held it back: it is pending no more
                    new = replace(new, note=new.note + "; the pending automatic failover "
                                  "is cancelled")
                self.forget_outage(node)
            self.apply(prev, new, now)
        if self.cfg.auto_failover:
            for node in self.nodes:
                liv = self.states[node]
                if self.domain.node(node).role == "server" and \
                        failover_candidate(liv, now, down_after):
                    self.consider_failover(node, liv, now)

    def forget_outage(self, node: str) -> None:
        self.refused.pop(node, None)
        self.handled.discard(node)
        self.retry_at.pop(node, None)

    def consider_failover(self, server: str, liv: Liveness, now: float) -> None:
        from cosfail.workflows import trigger
        from cosfail.workflows.failover import FAILOVER
        from cosfail.workflows.plan import FailoverRequest
        from cosfail.workflows.refusal import VETOED, Refused
        from cosfail.workflows.state import current_state

        eng = self.eng
        if server in self.handled or now < self.retry_at.get(server, 0.0):
            return
        failovers = eng.ledger.runs_since(liv.unreachable_since or liv.since, "failover",
                                          subject=server)
        handled = already_handled(server, liv, failovers, eng.ledger.hosting_moves())
        if handled:
            log.info("no automatic failover of %s: %s", server, handled)
            self.handled.add(server)
            return
        is_master = current_state(eng).master == server
        guards = auto_failover_guards(
            liv, now, self.cfg, eng.ledger.holder(L.HOSTING_LOCK),
            auto_failover_times(eng, now), is_master, newest_snapshot_age(eng, server, now),
            self.control_worker, paused_reason(eng.ledger.paused()))
        req = FailoverRequest(server=server, best=True, seen_down=True)
        if guards:
            self.refuse(server, req, guards)
            return
        # Last look before acting: a server that answers again cancels the failover.
        fresh = self.last_look(server)
        if fresh.reachable:
            back = time.time()
            self.apply(liv, replace(transition(liv, server, fresh, back, self.cfg.down_after),
                                    note="answers again before the automatic failover "
                                         "started: it is cancelled"), back)
            self.forget_outage(server)
            return
        why = f"{server} down: {liv.note}"
        try:
            planned = trigger.plan(eng, FAILOVER, req)
            stale = data_loss_guard(is_master, planned.plan.snapshot_age,
                                    self.cfg.max_data_loss)
            if stale:
                self.refuse(server, req, [("snapshot", stale)])
                return
            started = trigger.start(eng, planned, "auto", why)
        except L.LockHeld as exc:
            self.refuse(server, req, [("lock", f"a hosting change runs: {exc}")])
            return
        except Refused as exc:
            # Not tried again for a while: the hook or the plan would say the same.
            self.retry_at[server] = time.time() + RETRY_AFTER
            if exc.refusal.code == VETOED:
                self.refused[server] = ("veto",)  # the trigger recorded the run
                log.warning("automatic failover of %s: %s", server, exc)
            else:
                self.refuse(server, req, [("plan", str(exc))])
            return
        self.handled.add(server)
        log.warning("automatic failover of %s to %s: run %s", server, started.plan.bcs,
                    started.run_id)

    def refuse(self, server: str, req: Any, guards: list[tuple[str, str]]) -> None:
        """A refused run with every reason: once per outage and set of guards."""
        kinds = tuple(k for k, _ in guards)
        if self.refused.get(server) == kinds:
            return
        self.refused[server] = kinds
        text = "; ".join(r for _, r in guards)
        self.eng.ledger.create_run(
            "failover", {"request": asdict(req), "auto": True,
                         "guards": [{"kind": k, "reason": r} for k, r in guards]},
            "auto", f"automatic failover refused: {text}", [], state=L.REFUSED,
            subject=server)
        log.warning("automatic failover of %s refused: %s", server, text)

    # ----- the loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick every `[detect].interval` seconds while this detector holds the detect
        lock (a second one waits as a standby and takes over when the lease lapses)."""
        cfg = self.cfg
        owner = f"watch {self.id}"
        active: bool | None = None  # None: neither active nor standby yet
        next_at = time.time()
        while not stop.is_set():
            try:
                self.eng.ledger.acquire(L.DETECT_LOCK, self.id, owner, lease_for(cfg))
                if not active:
                    log.info("detector %s active: down_after %g s, auto_failover %s",
                             self.id, cfg.down_after, cfg.auto_failover)
                    self.load(time.time())
                    active = True
                self.tick()
            except L.LockHeld as held:
                if active is not False:
                    log.info("standby: detector %s is active", held.holder)
                active = False
            except Exception:  # the ledger or broker briefly away: keep watching
                log.exception("detector tick failed")
            next_at = max(next_at + cfg.interval, time.time())
            stop.wait(max(0.0, next_at - time.time()))
        if active:
            try:
                self.eng.ledger.release(L.DETECT_LOCK, self.id)
            except Exception:
                log.exception("could not release the detect lock")
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("detector %s stopped", self.id)


def watch(eng: Any) -> None:
    """`cosfail watch`: run the detector until SIGTERM or SIGINT."""
    logs.setup("control")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Detector(eng).run(stop)


def detector_alive(domain: Domain) -> tuple[bool, str]:
    """Whether a detector holds its lock with a lease still running (its health)."""
    from cosfail.workflows.engine import Engine

    row = Engine(domain).ledger.lock_row(L.DETECT_LOCK)
    if row and row["lease_until"] > time.time():
        return True, f"detector {row['owner']} holds the detect lock"
    return False, "no detector holds the detect lock"
