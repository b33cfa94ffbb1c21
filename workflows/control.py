"""Control steps: they touch no node, only the ledger and the authoritative state."""

from __future__ import annotations

import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cosfail.cosprint import authority, lease
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import CosfailError
from cosfail.workers import remote
from cosfail.workers.step import Here, Outcome, step
from cosfail.workers.steps import stop_cosprint, verify_snapshot
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import engine


@dataclass(frozen=True)
class LockInput:
    run_id: str
    lock: str


@step("control.take_lock", LockInput)
def take_lock(here: Here, arg: LockInput) -> str:
    """Hold (or renew) the lock the trigger took for this run."""
    eng = engine()
    eng.ledger.acquire(arg.lock, arg.run_id, f"run {arg.run_id}", here.domain.control.lock_lease)
    return f"run {arg.run_id} holds the {arg.lock} lock"


@dataclass(frozen=True)
class RecordBackup:
    run_id: str


@step("control.record_backup", RecordBackup)
def record_backup(here: Here, arg: RecordBackup) -> str:
    """Enter each BCS's verified snapshot in the catalog, and strike off those its verify
    step pruned, from that step's facts."""
    led = engine().ledger
    recorded = []
    for s in led.steps(arg.run_id):
        if s.task != verify_snapshot.name or s.state != L.SUCCEEDED or not s.facts:
            continue
        m = s.facts["manifest"]
        led.record_snapshot(
            bcs=s.node, file=s.input["file"], epoch=m["epoch"], created_at=m["created_at"],
            verified_at=s.facts["verified_at"], rows=sum(m["tables"].values()),
            sha256=m["sha256"], run_id=arg.run_id, pruned=False,
        )
        led.mark_pruned(s.node, s.facts.get("pruned", []))
        recorded.append(s.node)
    return f"catalogued the verified snapshot on {', '.join(sorted(recorded))}"


@dataclass(frozen=True)
class AdvanceEpoch:
    expected_master: str
    expected_epoch: int
    master: str
    epoch: int
    # The hosting change the new epoch is for: `server`'s objects move from
    # `moved_from` to `hosted_by`. Empty in a run planned before the ledger kept a
    # hosting history (schema 1): the upgrade filled it from succeeded runs.
    server: str = ""
    moved_from: str = ""
    hosted_by: str = ""


@step("failover.advance_epoch", AdvanceEpoch)
def advance_epoch(here: Here, arg: AdvanceEpoch) -> str:
    """The domain's new epoch: from here on, anything issued under the old one is stale.
    The hosting history records the change in the same transaction: whoever sees the
    new epoch sees who hosts what under it."""
    led = engine().ledger
    with led.tx() as conn:
        new = authority.advance(conn, here.domain.control.name,
                                Designation(arg.expected_master, arg.expected_epoch),
                                Designation(arg.master, arg.epoch))
        if arg.server:
            led.record_hosting(conn, arg.epoch, arg.server, arg.moved_from, arg.hosted_by,
                               here.run_id)
    return (f"domain epoch is now {new.epoch}, master {new.master}; {arg.server}'s "
            f"objects are hosted by {arg.hosted_by}")


@dataclass(frozen=True)
class FenceServer:
    server: str


FENCE_TIMEOUT = 30.0


@step("failover.fence_server", FenceServer)
def fence_server(here: Here, arg: FenceServer) -> Outcome:
    """Make sure the failed server's COSprint cannot serve: a fence command, else a stop
    over SSH when its node has `[node.ssh]`, else a stop of a COSprint this host can
    reach. Failure to reach it is reported, not fatal; the fact `fenced` says whether
    it is positively down (then no lease need run out before its BCS serves)."""
    fenced, text = _fence(here, arg.server)
    return Outcome(text, {"fenced": fenced})


def _fence(here: Here, server: str) -> tuple[bool, str]:
    node = here.domain.node(server)
    if node.fence_command:
        argv = [a.replace("{node}", server) for a in node.fence_command]
        done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603
                              timeout=FENCE_TIMEOUT, check=False)
        if done.returncode != 0:
            return False, (f"fence command for {server} exited {done.returncode}: "
                           f"{done.stderr.strip()[:200]}")
        return True, f"fenced {server} with its fence command"
    if node.ssh is not None:  # stop its COSprint on its host, over SSH
        text = remote.fence_cosprint(here.domain, server)
        return text.startswith("fenced"), text
    driver = driver_for(here.domain, server)
    if node.host == "localhost":
        return True, (f"fenced {server}: stopped its COSprint" if driver.stop()
                      else f"{server}'s COSprint was not running: nothing to fence")
    return False, (f"{server} not fenced: no fence command and its host is not reachable "
                   "from here")


@dataclass(frozen=True)
class WaitOutLease:
    server: str  # the node whose objects move, and whose lease must end first
    bcs: str  # the node that serves them next


class LeaseWaitError(CosfailError):
    """A failover cannot make sure the old server has stopped serving."""


def positively_down(steps: list[L.StepRow], server: str) -> str | None:
    """How this run made sure `server` serves no more, or None: a fence that confirmed
    it, or a stop by its own node's worker."""
    fence = next((s for s in steps if s.task == fence_server.name and s.state == L.SUCCEEDED
                  and s.facts and s.facts.get("fenced")), None)
    if fence is not None:
        return f"fenced ({fence.outcome})"
    stop = stopped_by_run(steps, server)
    return None if stop is None else f"its worker stopped it ({stop.outcome})"


def stops_by_run(steps: list[L.StepRow]) -> list[L.StepRow]:
    """The steps of this run that stopped a node's COSprint."""
    return [s for s in steps if s.task == stop_cosprint.name and s.node
            and s.state == L.SUCCEEDED]


def stopped_by_run(steps: list[L.StepRow], node: str) -> L.StepRow | None:
    """The step of this run that stopped `node`'s COSprint, if one did."""
    return next((s for s in stops_by_run(steps) if s.node == node), None)


def lease_wait(remaining: float | None, ttl: float, failsafe_left: float,
               server_clock: bool = True) -> float:
    """Seconds to wait, once every COSprint the run could stop is stopped, before the
    BCS may serve: the server's recorded lease plus a margin, or the failsafe rounds it
    may have won (`cosprint.lease.failsafe_wait`), whichever ends later.

    A renewal at the old epoch cannot land after `advance_epoch`, so no lease runs
    longer than ttl from now. The recorded time left is trusted only when it was
    written and read by one clock, the ledger server's (`server_clock`); on SQLite each
    renewing host wrote its own clock's time, so a held lease counts as a whole ttl."""
    if remaining is None:
        lease_end = 0.0
    else:
        left = min(remaining, ttl) if server_clock else ttl
        lease_end = max(0.0, left) + lease.margin(ttl)
    return max(lease_end, failsafe_left)


def lease_note(server: str, stops_server: bool, remaining: float | None, ttl: float,
               failsafe: bool, server_clock: bool = True) -> str:
    """What the plan says of the lease wait: none when the run's own stop reaches the
    server, else how long at most, unless a fence confirms the server down."""
    if stops_server:
        return f"no lease wait: {server}'s worker answers and stops its COSprint"
    held = "holds no lease" if remaining is None else (
        f"has {remaining:.1f} s of lease left" if remaining > 0 else "has no lease left")
    most = lease_wait(remaining, ttl, lease.failover_wait(ttl) if failsafe else 0.0,
                      server_clock)
    return (f"unless {server} is fenced, the failover waits up to {most:.1f} s for it to "
            f"stop serving before its BCS starts ({server} {held}"
            + (", plus any failsafe round it won)" if failsafe else ")"))


def confirmations(steps: list[L.StepRow], server: str) -> dict[str, float | str]:
    """What each peer of `server` this run stopped said of its last failsafe
    confirmation (the fact of its `stop_cosprint`), by peer."""
    return {s.node: s.facts["failsafe_confirmed"] for s in stops_by_run(steps)
            if s.node != server and s.facts and "failsafe_confirmed" in s.facts}


@step("failover.wait_out_lease", WaitOutLease)
def wait_out_lease(here: Here, arg: WaitOutLease) -> str:
    """Let the server's lease, and any failsafe it holds, run out before the BCS serves,
    unless the server is positively down (docs/architecture.md, invariant 14)."""
    led = engine().ledger
    steps = led.steps(here.run_id)
    how = positively_down(steps, arg.server)
    if how:
        return f"no lease to wait out: {arg.server} is down, {how}"
    spec = here.domain.spec.lease
    if spec.failsafe and stopped_by_run(steps, arg.bcs) is None:
        raise LeaseWaitError(
            f"{arg.bcs}'s COSprint was not stopped by this run, so {arg.server} could "
            "still win failsafe rounds: cannot tell when it stops serving")
    remaining = led.lease_remaining(arg.server)
    failsafe_left, failsafe_why = lease.failsafe_wait(spec.ttl, confirmations(
        steps, arg.server)) if spec.failsafe else (0.0, "")
    wait = lease_wait(remaining, spec.ttl, failsafe_left, led.server_clock)
    time.sleep(wait)
    held = "held no lease" if remaining is None else \
        f"had {max(0.0, remaining):.1f} s of lease left"
    return (f"waited {wait:.1f} s for {arg.server} to stop serving: it {held}"
            + (f"; {failsafe_why}" if failsafe_why else ""))


@dataclass(frozen=True)
class VerifyFailover:
    master: str
    epoch: int
    nodes: list[str]
    probe_queue: str = ""


STATUS_THREADS = 16


@step("failover.verify", VerifyFailover)
def verify_failover(here: Here, arg: VerifyFailover) -> str:
    """The new master serves as master at the new epoch, every node points at it, and a
    test job for a moved queue is accepted for printing by the master. A node this run
    skipped (its worker went away mid-run) is left out and named: its restart-check
    re-points it when its worker next starts. The new master is never left out."""
    left_out = sorted(engine().ledger.skipped_members(here.run_id).keys() - {arg.master})
    nodes = [n for n in arg.nodes if n not in left_out]
    problems = []
    # One status request per node, at once: at 50 nodes, one after another adds up.
    with ThreadPoolExecutor(max_workers=min(STATUS_THREADS, len(nodes) or 1)) as pool:
        statuses = list(pool.map(lambda n: driver_for(here.domain, n).status(), nodes))
    for node, st in zip(nodes, statuses, strict=True):
        if st is None:
            problems.append(f"{node}: COSprint not answering")
        elif (st.master, st.epoch) != (arg.master, arg.epoch):
            problems.append(f"{node}: points at {st.master}@{st.epoch}")
        elif node == arg.master and st.role != "master":
            problems.append(f"{node}: serves as {st.role}, not master")
    if problems:
        raise VerifyError(f"after failover: {'; '.join(problems)}")
    text = f"{arg.master} is master at epoch {arg.epoch}; {len(nodes)} node(s) point at it"
    if left_out:
        text += (f"; left out, skipped earlier in this run: {', '.join(left_out)} (its "
                 "restart-check re-points each when its worker next starts)")
    via = next((n for n in nodes if n != arg.master), arg.master)
    if arg.probe_queue:
        code, answer = driver_for(here.domain, via).submit(
            arg.probe_queue, "cosfail failover verification page",
            job_id=f"verify-{uuid.uuid4().hex[:8]}")
        if code != 202:
            raise VerifyError(f"test job on {arg.probe_queue} via {via}: {code} {answer}")
        text += f"; test job on {arg.probe_queue} via {via} accepted by " \
            f"{answer.get('printed_by', arg.master)}"
    return text


class VerifyError(CosfailError):
    """The domain is not in the state a finished workflow promises."""


@dataclass(frozen=True)
class RunHook:
    name: str
    argv: list[str]


@step("control.run_hook", RunHook)
def run_hook(here: Here, arg: RunHook) -> str:
    done = subprocess.run(arg.argv, capture_output=True, text=True,  # noqa: S603
                          timeout=FENCE_TIMEOUT, check=False)
    if done.returncode != 0:
        raise HookFailed(f"{arg.name} hook exited {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()[:300]}")
    return f"{arg.name} hook ran: {(done.stdout.strip() or 'ok')[:200]}"


class HookFailed(CosfailError):
    """An operator's hook exited non-zero."""
