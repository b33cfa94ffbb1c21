"""Failover across hosts against on loopback (not a test): `python -m bench.hosts`, as root.

With `--outage`, the unplanned outage by phase instead (`bench/results/outage.json`):
the detector (`[detect] down_after = 2`, auto_failover) fails a SIGKILLed srv1 over by
itself; detection (kill to the first round that finds srv1 unreachable), confirmation
(to "down" in the ledger: `down_after`, then a peer's second opinion), trigger (to the
failover's run), lease wait, the rest of the chain, and the client's re-point (to the
first job it gets accepted by bcs1). docs/architecture.md §7.6 budgets each. A third
site, `cut`, is the hosts domain again with srv1's host cut off from every other host
instead of killed: nothing can stop or fence srv1, so the failover waits out its lease.

Two domains of the same shape (1 server, 1 BCS, 1 client, `--objects` objects) run side
by side on this machine: one on loopback with a SQLite ledger (the demo's), one with
every node on its own host (a network namespace: its own address, sshd, host key;
tables move over SFTP) and the ledger on the control host's PostgreSQL. Each repetition,
in turn on each domain: SIGKILL srv1's worker and COSprint, fail it over to bcs1 (RTO:
the run's accept to its `succeeded` in the ledger), bring srv1 back (its restart-check
and the automatic reclaim) and fail it back. Medians, the hosts/loopback ratio of each,
a table and `bench/results/hosts.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cosfail.cosprint.domain import load_domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import DriverError
from cosfail.launcher import hosts
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.hosts import require_root
from cosfail.launcher.local import LocalDomain, LoopbackRedis
from cosfail.workers.app import configure
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.engine import Engine
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.switchover import FAILBACK

from bench.common import BenchFailed, machine_line, median, ms, run_header, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "hosts.json"
OUTAGE_RESULTS = RESULTS.with_name("outage.json")
# `--outage`: the detector fails a killed srv1 over by itself (docs/architecture.md §2.7).
AUTO_DETECT = ("\n[detect]\ndown_after = 2\ninterval = 0.5\nauto_failover = true\n"
               "max_auto_per_hour = 1000\nmax_data_loss = 86400\n")
PHASES = ("detection", "confirmation", "trigger", "lease_wait", "chain", "first_job",
          "outage")
KINDS = ("loopback", "hosts")
OUTAGE_KINDS = (*KINDS, "cut")  # cut: a hosts domain whose srv1 is cut off, not killed


class Site:
    """One running domain of the comparison."""

    def __init__(self, base: Path, kind: str, objects: int, broker: str | None,
                 auto: bool = False) -> None:
        path = init_demo(base / kind, servers=1, bcs=1, clients=1, objects=objects,
                         broker=broker, hosts=kind != "loopback")
        if auto:
            path.write_text(path.read_text() + AUTO_DETECT)
        self.kind = kind
        self.domain = load_domain(path)
        self.local = LocalDomain(self.domain)
        configure(self.domain)  # first: `up` pings the workers through this broker
        self.local.up(with_services=False)  # a lab's hosts first: the ledger is on one
        self.engine = Engine(self.domain)

    def run(self, workflow: str, request: object, timeout: float = 300.0) -> dict[str, Any]:
        run_id = trigger.run(self.engine, workflow, request, "bench", "bench").run_id
        return self.finish(run_id or "", timeout)

    def finish(self, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.engine.ledger.run(run_id)
            if run["state"] not in (L.PLANNED, L.RUNNING):
                if run["state"] != L.SUCCEEDED:
                    raise BenchFailed(f"{self.kind}: run {run_id} {run['state']}: "
                                      f"{run['error']}")
                return run
            time.sleep(0.01)
        raise BenchFailed(f"{self.kind}: run {run_id} did not finish within {timeout:g} s")

    def newest(self, workflow: str, after: float, timeout: float = 60.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            runs = self.engine.ledger.runs(limit=5, workflow=workflow)
            if runs and runs[0]["created_at"] > after:
                return str(runs[0]["id"])
            time.sleep(0.05)
        raise BenchFailed(f"{self.kind}: no {workflow} run within {timeout:g} s")

    def round_trip(self) -> dict[str, float]:
        """Kill srv1, fail it over, revive it (reclaimed automatically), fail it back."""
        self.local.kill("srv1")
        failover = self.run(FAILOVER, FailoverRequest(server="srv1", to="bcs1"))
        revived = time.time()
        self.local.revive("srv1")
        reclaim = self.finish(self.newest("reclaim", revived))
        failback = self.run(FAILBACK, MoveRequest("srv1"))
        return {name: ms(run["finished_at"] - run["created_at"])
                for name, run in (("failover", failover), ("reclaim", reclaim),
                                  ("failback", failback))}

    def outage(self) -> dict[str, float]:
        """Kill srv1 (cut its host off, on the `cut` site) and time, by phase, until a
        client's job for one of srv1's queues is accepted by bcs1; then bring srv1 back
        and fail it back for the next round."""
        queue = f"q-srv1-{1:04d}"
        client = driver_for(self.domain, "cl1")
        lab = self.local.lab
        killed = time.time()
        if self.kind == "cut":
            assert lab is not None
            for other in lab.hosts:
                if other != "srv1":
                    hosts.cut(lab, "srv1", other, both=True)
        else:
            self.local.kill("srv1")
        deadline = killed + 120
        while True:
            try:
                code, answer = client.submit(queue, "page", timeout=2.0)
            except DriverError:  # cl1's COSprint is stopped while the failover runs
                code, answer = 0, {}
            if code == 202 and answer.get("printed_by") == "bcs1":
                first_job = time.time()
                break
            if time.time() > deadline:
                raise BenchFailed(f"{self.kind}: no job accepted by bcs1 within 120 s")
            time.sleep(0.02)
        run_id = self.newest("failover", killed)
        run = self.finish(run_id)
        seen = [r for r in self.engine.ledger.liveness_history("srv1", 20) if r["at"] > killed]
        down = next(r for r in seen if r["state"] == "down")
        suspect = next(r for r in reversed(seen) if r["state"] == "suspect")
        [wait] = [s for s in self.engine.ledger.steps(run_id) if s.name == "wait_out_lease"]
        lease_wait = (wait.finished_at or 0) - (wait.started_at or 0)
        if self.kind == "cut":  # the host returns, and its operator restarts it
            assert lab is not None
            hosts.heal_all(lab)
            self.local.kill("srv1")
        revived = time.time()
        self.local.revive("srv1")
        self.finish(self.newest("reclaim", revived))
        self.run(FAILBACK, MoveRequest("srv1"))
        return {"detection": ms(suspect["at"] - killed),
                "confirmation": ms(down["at"] - suspect["at"]),
                "trigger": ms(run["created_at"] - down["at"]),
                "lease_wait": ms(lease_wait),
                "chain": ms(run["finished_at"] - run["created_at"] - lease_wait),
                "first_job": ms(first_job - run["finished_at"]),
                "outage": ms(first_job - killed)}

    def down(self) -> None:
        self.local.down()


def serve(kind: str, base: Path, objects: int, broker: str | None, auto: bool) -> None:
    """One site in this process, driven by the lines on stdin: `round` answers one
    round trip's durations (with `auto`, one unplanned outage's phases) as a JSON line,
    end of input takes the site down. A process per site: a process's Celery app keeps
    the broker it first used."""
    site = Site(base, kind, objects, broker, auto)
    try:
        site.run(BACKUP, BackupRequest())
        if auto:
            site.local.start_watch()
        print(json.dumps({"ready": kind}), flush=True)
        for line in sys.stdin:
            if line.strip() == "round":
                print(json.dumps(site.outage() if auto else site.round_trip()), flush=True)
    finally:
        site.down()


class Child:
    """A `serve` process and its JSON answers."""

    def __init__(self, kind: str, base: Path, objects: int, broker: str | None,
                 auto: bool) -> None:
        argv = [sys.executable, "-m", "bench.hosts", "--serve", kind, "--base", str(base),
                "--objects", str(objects), *(["--broker", broker] if broker else []),
                *(["--outage"] if auto else [])]
        self.kind = kind
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                                     text=True, cwd=Path(__file__).resolve().parent.parent)

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchFailed(f"the {self.kind} site ended (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def round(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def measure(objects: int, repeats: int, auto: bool) -> dict[str, Any]:
    require_root("bench.hosts")
    header = run_header(repeats)
    base = Path(tempfile.mkdtemp(prefix="cosfail-bench-hosts-"))
    redis = LoopbackRedis(base / "redis")
    redis.start()
    kinds = OUTAGE_KINDS if auto else KINDS
    children: list[Child] = []
    try:
        children = [Child(k, base, objects, redis.url if k == "loopback" else None, auto)
                    for k in kinds]
        for child in children:
            child.answer()  # ready
        rounds: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for _ in range(repeats):
            for child in children:  # interleaved: both see the same machine load
                rounds[child.kind].append(child.round())
    finally:
        for child in children:
            child.close()
        redis.stop()
    medians = {k: {w: median([r[w] for r in rounds[k]]) for w in rounds[k][0]} for k in kinds}
    return {**header, "loadavg_end": os.getloadavg(), "objects": objects,
            "rounds": rounds, "median_ms": medians,
            "max_ms": {k: {w: max(r[w] for r in rounds[k]) for w in rounds[k][0]}
                       for k in kinds},
            "ratio": {w: round(medians["hosts"][w] / medians["loopback"][w], 2)
                      for w in medians["hosts"] if medians["loopback"][w] > 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", choices=OUTAGE_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--outage", action="store_true",
                        help="the unplanned outage by phase: kill srv1, the detector fails "
                             "it over by itself, until bcs1 accepts a client's job")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.base, args.objects, args.broker, args.outage)
        return
    results = measure(args.objects, args.repeats, args.outage)
    out = OUTAGE_RESULTS if args.outage else RESULTS
    write_json(out, results)
    print(machine_line(results))
    if args.outage:
        print(f"{'phase':<13}" + "".join(f"{k + ' median/max ms':>26}" for k in OUTAGE_KINDS))
        for ph in PHASES:
            print(f"{ph:<13}" + "".join(
                f"{results['median_ms'][k][ph]:>15.0f}/{results['max_ms'][k][ph]:<10.0f}"
                for k in OUTAGE_KINDS))
        print(f"wrote {out}")
        return
    print(f"{'workflow':<10} {'loopback ms':>12} {'hosts ms':>10} {'hosts/loopback':>15}")
    for w, ratio in results["ratio"].items():
        print(f"{w:<10} {results['median_ms']['loopback'][w]:>12} "
              f"{results['median_ms']['hosts'][w]:>10} {ratio:>15}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
