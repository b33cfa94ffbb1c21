"""The one-command demonstration: a domain on this machine, saved from losing its master.

init a domain (2 servers, 1 BCS, 3 clients) → start it → back up → a steady stream of
print jobs through the clients → kill the master server → fail it over → printing
continues on the BCS → the server returns and is reclaimed as a slave → fail back →
count every job: submitted, printed, lost.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosfail.cosprint import tables
from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import DriverError
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.hosts import require_root
from cosfail.launcher.local import LocalDomain
from cosfail.workers.app import configure
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.engine import Engine
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.state import current_state
from cosfail.workflows.switchover import FAILBACK
from sqlalchemy import select

Say = Callable[[str], None]
RunShown = Callable[[Engine, str], dict[str, Any]]


NO_ANSWER = ("Connection refused", "Connection reset")  # how a client sees a node go


@dataclass
class JobStream:
    """A print client: jobs at a steady rate through the clients, retried while the
    service is out (a 503 or no answer), as a real client queue would: oldest first,
    and a queue whose job was just refused holds the rest of its jobs till the next
    round. Any other answer settles the job as rejected, never retried."""

    domain: Domain
    clients: list[str]
    queues: list[str]
    rate: float = 20.0
    submitted: dict[str, str] = field(default_factory=dict)  # job id → queue
    accepted: dict[str, float] = field(default_factory=dict)  # job id → when
    # job id → (when, why) of each try that was refused and will be retried
    refused: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # job id → the final answer
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def refusals(self) -> int:
        """Tries refused (and retried) so far."""
        return sum(len(tries) for tries in list(self.refused.values()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="jobs")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        n = 0
        backlog: list[str] = []
        began = time.monotonic()
        while not self._stop.is_set():
            # Users print at the rate, however long the sends take: jobs wait in the
            # client's queue meanwhile.
            while n <= (time.monotonic() - began) * self.rate:
                job_id = f"job-{n:05d}-{uuid.uuid4().hex[:6]}"
                self.submitted[job_id] = self.queues[n % len(self.queues)]
                backlog.append(job_id)
                n += 1
            backlog = self._send(backlog)
            self._stop.wait(max(0.0, began + n / self.rate - time.monotonic()))
        deadline = time.time() + 60  # the stream ends: its backlog is still delivered
        while backlog and time.time() < deadline:
            backlog = self._send(backlog)
            time.sleep(0.1)

    def _send(self, backlog: list[str]) -> list[str]:
        """One round over the waiting jobs; returns those still waiting, in order."""
        held: set[str] = set()
        waiting = []
        for job_id in backlog:
            queue = self.submitted[job_id]
            if queue in held or not self._try(job_id):
                held.add(queue)
                waiting.append(job_id)
        return waiting

    def _try(self, job_id: str) -> bool:
        """Send one job; True once it is settled (accepted, or rejected for good)."""
        client = self.clients[hash(job_id) % len(self.clients)]
        try:
            code, answer = driver_for(self.domain, client).submit(
                self.submitted[job_id], f"page of {job_id}", job_id=job_id, timeout=2.0)
        except DriverError as exc:  # no answer: the service is out, or on its way out
            why = next((k.lower() for k in NO_ANSWER if k in str(exc)), f"no answer: {exc}")
        else:
            if code == 202:
                self.accepted[job_id] = time.time()
                return True
            if code != 503:
                self.rejected[job_id] = f"{code} {answer.get('error', '')}"
                return True
            why = "503"
        self.refused.setdefault(job_id, []).append((time.time(), why))
        return False

    def printed(self) -> set[str]:
        return set(self.printed_counts())

    def printed_counts(self) -> Counter[str]:
        """How many times each job was printed, from every node's sink files."""
        done: Counter[str] = Counter()
        for node in self.domain.names():
            for sink in (self.domain.home(node) / "var" / "sink").glob("*.log"):
                for line in sink.read_text().splitlines():
                    try:
                        done[json.loads(line)["job_id"]] += 1
                    except (ValueError, KeyError):
                        continue
        return done


def queues_of(domain: Domain, node: str, host: str, limit: int = 5) -> list[str]:
    with tables.connect(domain.tables_url(node)) as conn:
        q = tables.queues
        rows = conn.execute(select(q.c.name).where(q.c.host == host).order_by(q.c.id)
                            .limit(limit))
        return [r.name for r in rows]


def run_demo(say: Say, show_run: RunShown, directory: Path | None = None,
             objects: int = 10_000, hosts: bool = False) -> dict[str, Any]:
    """The scenario; `say` narrates, `show_run` follows a run to its end. With `hosts`,
    every node and the control plane is its own host (a network namespace) and the
    ledger is a PostgreSQL server on the control host."""
    if hosts:
        require_root("cosfail demo --hosts")
    base = directory or Path(tempfile.mkdtemp(prefix="cosfail-demo-"))
    where = "each its own host" if hosts else "on this host's loopback"
    say(f"creating a demo domain in {base}: 2 servers, 1 BCS, 3 clients, {objects} objects, "
        f"{where}")
    path = init_demo(base / "domain", servers=2, bcs=1, clients=3, objects=objects,
                     hosts=hosts)
    domain = load_domain(path)
    configure(domain)
    local = LocalDomain(domain)
    summary: dict[str, Any] = {"domain": str(path), "hosts": hosts, "runs": []}
    stream: JobStream | None = None
    try:
        if hosts:
            say("making the hosts: a network namespace, sshd and address per node, and the "
                "control host's PostgreSQL ledger")
            local.start_hosts()  # before the engine: its ledger is on the control host
        say("starting a broker of its own, a worker and a COSprint per node, and the API")
        local.up(with_services=False)
        local.start_api()
        eng = Engine(domain)
        current_state(eng)

        def step(run_id: str) -> dict[str, Any]:
            run = show_run(eng, run_id)
            summary["runs"].append({
                "id": run_id, "workflow": run["workflow"], "state": run["state"],
                "seconds": round((run["finished_at"] or time.time()) - run["created_at"], 3),
                "steps": [s.as_json() for s in eng.ledger.steps(run_id)]})
            if run["state"] != L.SUCCEEDED:
                raise RuntimeError(f"{run['workflow']} run {run_id} {run['state']}: "
                                   f"{run['error']}")
            return run

        say("backing up the master's tables to the BCS")
        step(trigger.run(eng, BACKUP, BackupRequest(), "demo", "before trouble").run_id)

        srv1_queues = queues_of(domain, "cl1", "srv1")
        stream = JobStream(domain, domain.names("client"),
                           srv1_queues + queues_of(domain, "cl1", "srv2"))
        say(f"printing: a stream of jobs through {', '.join(stream.clients)} "
            f"to queues on srv1 and srv2")
        stream.start()
        time.sleep(2)

        say("killing srv1 (the master): its worker and its COSprint, SIGKILL")
        killed = time.time()
        local.kill("srv1")
        time.sleep(1)

        say("failing srv1 over to the best BCS")
        started = trigger.run(eng, FAILOVER, FailoverRequest(server="srv1", best=True), "demo",
                              "srv1 died")
        say(started.plan.summary())
        step(started.run_id or "")
        back = _first_accepted_after(stream, srv1_queues, killed)
        summary["outage_seconds"] = round(back - killed, 3) if back else None
        say(f"printing continues on {started.plan.bcs}: srv1's queues were out for "
            f"{summary['outage_seconds']} s")
        time.sleep(2)

        say("srv1 returns: its worker restarts, finds itself stale, and is reclaimed")
        local.revive("srv1")
        reclaim = _wait_new_run(eng, "reclaim", 60)
        step(reclaim)

        say("failing back: srv1 hosts its objects again")
        run_id = trigger.run(eng, FAILBACK, MoveRequest("srv1"), "demo",
                             "srv1 is healthy again").run_id
        step(run_id or "")
        time.sleep(2)
        summary["master"] = current_state(eng).master  # while the ledger's host is up
    finally:
        if stream:
            stream.stop()
            time.sleep(1)
        say("stopping everything the demo started")
        local.down()
    printed = stream.printed() if stream else set()
    accepted = set(stream.accepted) if stream else set()
    summary.update(
        jobs_submitted=len(stream.submitted) if stream else 0,
        jobs_accepted=len(accepted), jobs_printed=len(accepted & printed),
        jobs_lost=len(accepted - printed), client_retries=stream.refusals if stream else 0,
        failover_completed=any(r["workflow"] == "failover" and r["state"] == L.SUCCEEDED
                               for r in summary["runs"]),
    )
    return summary


def _first_accepted_after(stream: JobStream, queues: list[str], t: float) -> float | None:
    deadline = time.time() + 30
    while time.time() < deadline:
        times = [at for j, at in list(stream.accepted.items())
                 if at > t and stream.submitted[j] in queues]
        if times:
            return min(times)
        time.sleep(0.05)
    return None


def _wait_new_run(eng: Engine, workflow: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = eng.ledger.runs(limit=5, workflow=workflow)
        if runs:
            return runs[0]["id"]
        time.sleep(0.1)
    raise RuntimeError(f"no {workflow} run started within {timeout:g} s")

