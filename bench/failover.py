"""Failover benchmark (not a test): `.venv/bin/python bench/failover.py`.

RTO = from the failover's accept (`start_failover` returns with a run id: what the API's
202 answers) to the run recorded `succeeded` in the ledger (its own `finished_at`, so
polling does not blur it). A run succeeds only after its verify step: the BCS serves as
master at the new epoch, every restarted node points at it, and a test job on a moved
queue is accepted. The time to accept (probing every node, one of them dead, and
planning) is reported apart: the operator waits for it too, but it is not the RTO.

Configurations (1 server, 1 bcs, the rest clients; coverage one): 10 nodes at 10k and
100k objects; 5, 10 and 25 nodes at 10k objects. Each is one real domain (a redis-server
of its own, one real worker and one real `cosprintd` per node, as the test fixture runs
them), failed over `repeats` times: before each repetition the domain is put back as it
was after its first backup (every COSprint stopped, each node's tables, designation and
last-running record restored from a copy, the authority set back to srv1@1, srv1's
worker and COSprint started again), then srv1 is killed (SIGKILL its worker and
COSprint) and failed over to bcs1.

Where the time goes, from the ledger's started/finished of each step on the critical
path (the chain's top-level steps; for a fan-out, its slowest member):
- driver: inside node steps (stop, restore, rehost, publish, designation, restart-check,
  start COSprint): what the COSprint driver does;
- control: inside control steps (lock, epoch, fence, verify, release);
- orchestration: everything else: accept → first step, the hops between steps (broker,
  epoch check, journal), a fan-out's own overhead beyond its slowest member.
The issue's "orchestration share" is RTO minus driver time; the narrower between-steps
share is shown too. Medians of the repetitions; rich tables and
`bench/results/failover.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import update

from cosprint import authority, designation, tables
from cosprint.demo import init_demo
from cosprint.designation import Designation
from cosprint.domain import Domain, load_domain
from cosprint.drivers import driver_for
from workers.app import configure
from workers.local import LocalDomain, pid_alive
from workflows import ledger as L
from workflows.engine import Engine
from workflows.failover import start_failover
from workflows.plan import FailoverRequest
from workflows.state import current_state

try:  # shared with the backup benchmark: its redis-server and its rounding
    from bench.backup import Redis, median, ms
except ImportError:  # run as a script: bench/ itself is on sys.path
    from backup import Redis, median, ms  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "failover.json"
CONFIGS = [(5, 10_000), (10, 10_000), (10, 100_000), (25, 10_000)]  # heaviest last
TARGET_RTO_MS = 2000.0  # at 10 nodes / 100k objects
TARGET_ORCHESTRATION = 0.10
TARGET_GROWTH = 1.5  # RTO at 25 nodes / RTO at 5 nodes, 10k objects
SAVED = (Path("tables.db"), designation.DESIGNATION, designation.LAST_RUNNING)


class BenchFailed(Exception):
    """A run of the benchmark did not succeed: recorded for its configuration."""


class BenchDomain:
    """A demo domain running for real, failed over and put back, again and again."""

    def __init__(self, base: Path, nodes: int, objects: int, broker: str) -> None:
        path = init_demo(base, servers=1, bcs=1, clients=nodes - 2, objects=objects,
                         broker=broker)
        self.base = base
        self.domain: Domain = load_domain(path)
        configure(self.domain)
        self.engine = Engine(self.domain)
        current_state(self.engine)
        self.local = LocalDomain(self.domain)
        self.nodes = self.domain.names()

    def __enter__(self) -> BenchDomain:
        self.local.up(with_services=False)
        self.quiet()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.local.down()

    def quiet(self, timeout: float = 120.0) -> None:
        """Until no run is in progress (a worker runs a start-up check when it starts)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(r["state"] not in (L.PLANNED, L.RUNNING)
                   for r in self.engine.ledger.runs(200)):
                return
            time.sleep(0.05)
        sys.exit("bench: the domain did not settle (a run stays in progress)")

    def finish(self, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.engine.ledger.run(run_id)
            if run["state"] not in (L.PLANNED, L.RUNNING):
                if run["state"] != L.SUCCEEDED:
                    raise BenchFailed(f"run {run_id} {run['state']}: {run['error']}")
                return run
            time.sleep(0.002)
        raise BenchFailed(f"run {run_id} did not finish within {timeout:g} s")

    def backup(self) -> None:
        from workflows.backup import start_backup

        run_id, _ = start_backup(self.engine, "bench", "benchmark")
        self.finish(run_id)

    # ----- put the domain back as it was before the failover --------------------------------
    def save(self) -> None:
        for node in self.nodes:
            for rel in SAVED:
                dest = self.base / "saved" / node / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.domain.home(node) / rel, dest)

    def _parallel(self, fn, nodes: list[str]) -> None:  # type: ignore[no-untyped-def]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fn, nodes))

    def reset(self) -> None:
        self._parallel(lambda n: driver_for(self.domain, n).stop(), self.nodes)
        for node in self.nodes:
            home = self.domain.home(node)
            for suffix in ("-journal", "-wal", "-shm"):
                (home / f"tables.db{suffix}").unlink(missing_ok=True)
            for rel in SAVED:
                shutil.copy2(self.base / "saved" / node / rel, home / rel)
        with self.engine.ledger.engine.begin() as conn:
            conn.execute(update(authority.domain_state)
                         .where(authority.domain_state.c.domain == self.domain.control.name)
                         .values(master="srv1", epoch=1, updated_at=time.time()))
        self._parallel(lambda n: driver_for(self.domain, n).start(), self.nodes)
        self.local.start_worker("srv1")  # after its kill: its start-up check finds it current
        self.local.wait_workers(["srv1"])
        self.quiet()
        assert current_state(self.engine) == Designation("srv1", 1)

    def kill_server(self) -> None:
        pid = self.local.components()["worker:srv1"].pid
        self.local.kill("srv1")
        while pid_alive(pid):
            time.sleep(0.005)


# ----- one failover and where its time went -------------------------------------------------
def failover_once(d: BenchDomain) -> dict[str, Any]:
    d.kill_server()
    t_req = time.time()
    started = start_failover(d.engine, FailoverRequest(server="srv1", to="bcs1"), "bench",
                             "benchmark")
    t_acc = time.time()
    assert started.run_id
    run = d.finish(started.run_id)
    rto = run["finished_at"] - t_acc
    if current_state(d.engine) != Designation("bcs1", 2):
        raise BenchFailed("the failover succeeded but the authority is not bcs1@2")
    with tables.connect(d.domain.tables_url("bcs1")) as conn:
        if set(tables.hosted_counts(conn)) != {"bcs1"}:
            raise BenchFailed("the failover succeeded but bcs1 does not host every object")
    return {"accept_ms": ms(t_acc - t_req), "rto_ms": ms(rto),
            **critical_path(d, started.run_id, t_acc, run["finished_at"])}


def critical_path(d: BenchDomain, run_id: str, t0: float, t1: float) -> dict[str, Any]:
    steps = d.engine.ledger.steps(run_id)
    top = sorted((s for s in steps if not s.member), key=lambda s: s.idx)
    members: dict[int, list] = {}  # type: ignore[type-arg]
    for s in steps:
        if s.member:
            members.setdefault(s.idx, []).append(s)
    driver = control = fanout = 0.0
    rows = []
    for s in top:
        took = (s.finished_at or 0) - (s.started_at or 0)
        if s.idx in members:
            done = [m for m in members[s.idx] if m.started_at and m.finished_at]
            slowest = max(done, key=lambda m: m.finished_at - m.started_at, default=None)
            work = slowest.finished_at - slowest.started_at if slowest else 0.0
            driver += work
            fanout += took - work
            rows.append({"idx": s.idx, "step": s.name, "node": slowest.node if slowest else "",
                         "kind": "driver", "ms": ms(took), "work_ms": ms(work),
                         "members_ms": {m.node: ms(m.finished_at - m.started_at) for m in done},
                         "start_ms": ms(s.started_at - t0)})
        else:
            kind = "driver" if s.node else "control"
            driver += took if s.node else 0.0
            control += 0.0 if s.node else took
            rows.append({"idx": s.idx, "step": s.name, "node": s.node or "control",
                         "kind": kind, "ms": ms(took), "work_ms": ms(took),
                         "start_ms": ms(s.started_at - t0)})
    rto = t1 - t0
    between = rto - sum((s.finished_at - s.started_at) for s in top)
    return {
        "driver_ms": ms(driver), "control_ms": ms(control), "fanout_overhead_ms": ms(fanout),
        "between_steps_ms": ms(between), "orchestration_ms": ms(rto - driver),
        "orchestration_share": round((rto - driver) / rto, 3),
        "between_share": round((between + fanout) / rto, 3), "steps": rows,
    }


# ----- the run -----------------------------------------------------------------------------
def bench(configs: list[tuple[int, int]], repeats: int, keep: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cosfail-bench-failover-"))
    redis = Redis(work)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "repeats": repeats,
        "node_mix": "1 server, 1 bcs, the rest clients", "configs": {},
        "targets": {"rto_ms_10_nodes_100k": TARGET_RTO_MS,
                    "orchestration_share": TARGET_ORCHESTRATION,
                    "growth_5_to_25_nodes": TARGET_GROWTH},
        "loadavg_start": os.getloadavg(),
    }
    try:
        for nodes, objects in configs:
            key = f"{nodes}n-{objects // 1000}k"
            t_setup = time.time()
            samples, failures = [], []
            with BenchDomain(work / key, nodes, objects, redis.url) as d:
                d.backup()
                d.save()
                setup = time.time() - t_setup
                print(f"[{key}] up in {setup:.1f} s; failovers …", file=sys.stderr)
                for i in range(repeats):
                    try:
                        if i:
                            d.reset()
                        samples.append(failover_once(d))
                    except BenchFailed as exc:
                        failures.append(str(exc))
                        print(f"[{key}] FAILED: {str(exc)[:300]}", file=sys.stderr)
                        break  # the domain is half failed over: no clean next repetition
                    print(f"[{key}] RTO {samples[-1]['rto_ms']:.0f} ms", file=sys.stderr)
            if not samples:
                results["configs"][key] = {"nodes": nodes, "objects": objects,
                                           "setup_s": round(setup, 1), "failures": failures}
                continue
            mid = sorted(samples, key=lambda s: s["rto_ms"])[len(samples) // 2]
            results["configs"][key] = {
                "nodes": nodes, "objects": objects, "setup_s": round(setup, 1),
                "failures": failures,
                "rto_ms": median([s["rto_ms"] for s in samples]),
                "accept_ms": median([s["accept_ms"] for s in samples]),
                "driver_ms": median([s["driver_ms"] for s in samples]),
                "control_ms": median([s["control_ms"] for s in samples]),
                "orchestration_ms": median([s["orchestration_ms"] for s in samples]),
                "orchestration_share": round(median([s["orchestration_share"]
                                                     for s in samples]), 3),
                "between_share": round(median([s["between_share"] for s in samples]), 3),
                "rto_samples_ms": [s["rto_ms"] for s in samples],
                "median_run_steps": mid["steps"],
            }
        results["loadavg_end"] = os.getloadavg()
        c = results["configs"]
        if "rto_ms" in c.get("5n-10k", {}) and "rto_ms" in c.get("25n-10k", {}):
            results["growth_5_to_25_nodes"] = round(c["25n-10k"]["rto_ms"] /
                                                    c["5n-10k"]["rto_ms"], 2)
    finally:
        redis.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: dict[str, Any], out: Path = RESULTS) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 130))
    t = Table(title="failover RTO: accept → run succeeded (verified), medians of "
                    f"{results['repeats']}, ms")
    for col in ("nodes", "objects", "RTO", "samples", "driver", "control", "orchestration",
                "orch. share", "between steps", "accept (probe+plan)"):
        t.add_column(col, justify="right")
    for e in results["configs"].values():
        if "rto_ms" not in e:
            t.add_row(str(e["nodes"]), f"{e['objects']:,}", "[red]failed[/]", "", "", "", "",
                      "", "", "")
            continue
        share_ok = e["orchestration_share"] <= TARGET_ORCHESTRATION
        rto = f"{e['rto_ms']:.0f}"
        if e["nodes"] == 10 and e["objects"] == 100_000:
            ok = e["rto_ms"] <= TARGET_RTO_MS
            rto = f"[{'green' if ok else 'red'}]{rto}[/]"
        t.add_row(str(e["nodes"]), f"{e['objects']:,}", rto,
                  " ".join(f"{x:.0f}" for x in e["rto_samples_ms"]),
                  f"{e['driver_ms']:.0f}", f"{e['control_ms']:.0f}",
                  f"{e['orchestration_ms']:.0f}",
                  f"[{'green' if share_ok else 'red'}]{e['orchestration_share']:.0%}[/]",
                  f"{e['between_share']:.0%}", f"{e['accept_ms']:.0f}")
    con.print(t)
    growth = results.get("growth_5_to_25_nodes")
    if growth is not None:
        ok = growth <= TARGET_GROWTH
        con.print(f"RTO 25 nodes / 5 nodes (10k objects): [{'green' if ok else 'red'}]"
                  f"{growth:.2f}×[/] (target ≤ {TARGET_GROWTH:g}×)")
    for key, e in results["configs"].items():
        for f in e.get("failures", []):
            con.print(f"[red]{key}: {f[:400]}[/]")
    targets = (f"targets: RTO ≤ {TARGET_RTO_MS:.0f} ms at 10 nodes / 100k; orchestration "
               f"≤ {TARGET_ORCHESTRATION:.0%} of RTO")
    con.print(targets)
    done = {k: e for k, e in results["configs"].items() if "rto_ms" in e}
    if not done:
        return
    big = done.get("10n-100k") or next(iter(done.values()))
    w = Table(title=f"where the time goes: the median run at {big['nodes']} nodes / "
                    f"{big['objects']:,} objects (critical path, ms from accept)")
    for col in ("#", "step", "node (slowest)", "kind", "starts at", "step", "work",
                "members"):
        w.add_column(col, justify="right" if col not in ("step", "node (slowest)", "kind",
                                                          "members") else "left")
    for r in big["median_run_steps"]:
        members = r.get("members_ms", {})
        spread = (f"{min(members.values()):.0f}–{max(members.values()):.0f} over "
                  f"{len(members)}" if members else "")
        w.add_row(str(r["idx"]), r["step"], r["node"], r["kind"], f"{r['start_ms']:.0f}",
                  f"{r['ms']:.0f}", f"{r['work_ms']:.0f}", spread)
    con.print(w)
    load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(results["loadavg_start"],
                                                         results["loadavg_end"], strict=True))
    con.print(f"{results['cpus']} CPUs; load average 1/5/15 min (start/end): {load}")
    con.print(f"written to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", metavar="NODES:OBJECTS",
                   default=[f"{n}:{o}" for n, o in CONFIGS],
                   help="e.g. 10:100000 (default: the four of the issue)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the bench's domains")
    p.add_argument("--out", type=Path, default=RESULTS, help="the JSON results file")
    args = p.parse_args()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs]
    results = bench(configs, args.repeats, args.keep)  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    report(results, args.out)


if __name__ == "__main__":
    main()
