"""Failover across hosts against on loopback (not a test): `python -m bench.hosts`, as root.

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
KINDS = ("loopback", "hosts")


class Site:
    """One running domain of the comparison."""

    def __init__(self, base: Path, kind: str, objects: int, broker: str | None) -> None:
        path = init_demo(base / kind, servers=1, bcs=1, clients=1, objects=objects,
                         broker=broker, hosts=kind == "hosts")
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

    def down(self) -> None:
        self.local.down()


def serve(kind: str, base: Path, objects: int, broker: str | None) -> None:
    """One site in this process, driven by the lines on stdin: `round` answers one
    round trip's durations as a JSON line, end of input takes the site down. A process
    per site: a process's Celery app keeps the broker it first used."""
    site = Site(base, kind, objects, broker)
    try:
        site.run(BACKUP, BackupRequest())
        print(json.dumps({"ready": kind}), flush=True)
        for line in sys.stdin:
            if line.strip() == "round":
                print(json.dumps(site.round_trip()), flush=True)
    finally:
        site.down()


class Child:
    """A `serve` process and its JSON answers."""

    def __init__(self, kind: str, base: Path, objects: int, broker: str | None) -> None:
        argv = [sys.executable, "-m", "bench.hosts", "--serve", kind, "--base", str(base),
                "--objects", str(objects), *(["--broker", broker] if broker else [])]
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


def measure(objects: int, repeats: int) -> dict[str, Any]:
    require_root("bench.hosts")
    header = run_header(repeats)
    base = Path(tempfile.mkdtemp(prefix="cosfail-bench-hosts-"))
    redis = LoopbackRedis(base / "redis")
    redis.start()
    children: list[Child] = []
    try:
        children = [Child("loopback", base, objects, redis.url),
                    Child("hosts", base, objects, None)]
        for child in children:
            child.answer()  # ready
        rounds: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        for _ in range(repeats):
            for child in children:  # interleaved: both see the same machine load
                rounds[child.kind].append(child.round())
    finally:
        for child in children:
            child.close()
        redis.stop()
    medians = {k: {w: median([r[w] for r in rounds[k]]) for w in rounds[k][0]} for k in KINDS}
    return {**header, "loadavg_end": os.getloadavg(), "objects": objects,
            "rounds": rounds, "median_ms": medians,
            "ratio": {w: round(medians["hosts"][w] / medians["loopback"][w], 2)
                      for w in medians["hosts"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.base, args.objects, args.broker)
        return
    results = measure(args.objects, args.repeats)
    write_json(RESULTS, results)
    print(machine_line(results))
    print(f"{'workflow':<10} {'loopback ms':>12} {'hosts ms':>10} {'hosts/loopback':>15}")
    for w, ratio in results["ratio"].items():
        print(f"{w:<10} {results['median_ms']['loopback'][w]:>12} "
              f"{results['median_ms']['hosts'][w]:>10} {ratio:>15}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
