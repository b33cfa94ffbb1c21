"""Failover benchmark (not a test): `.venv/bin/python -m bench.failover`.

RTO = from the failover's accept (`trigger.run` returns with a run id: what the API's
202 answers) to the run recorded `succeeded` in the ledger (its own `finished_at`, so
polling does not blur it). A run succeeds only after its verify step: the BCS serves as
master at the new epoch, every restarted node points at it, and a test job on a moved
queue is accepted. The time to accept (probing every node, one of them dead, and
planning) is reported apart: the operator waits for it too, but it is not the RTO.

Configurations (1 server, 1 bcs, the rest clients; coverage one): the node sweep 5, 10,
25 and 50 nodes at 10k objects, and the object sweep 10k, 100k and 1M objects at 10
nodes (`--configs NODES:OBJECTS[:REPEATS] …` picks others; `--quick` is a smoke run).
Each is one real domain (a redis-server of its own, one real worker and one real
`cosprintd` per node, as the test fixture runs them, all started at once), failed over
`repeats` times: before each repetition the domain is put back as it was after its first
backup (every COSprint stopped, each node's tables, designation and last-running record
restored from a copy, the authority set back to srv1@1, srv1's worker and COSprint
started again), then srv1 is killed (SIGKILL its worker and COSprint) and failed over to
bcs1.

Memory of one node worker, the BCS's (it restores the snapshot, in its own process: the
worker runs steps in threads): its VmRSS at rest (the domain up, before any run), its
peak through the first backup (it receives and trial-restores the snapshot), and during
each failover its peak (VmHWM, reset through /proc/PID/clear_refs just before).

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
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from cosfail.cosprint import authority, designation, tables
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.drivers import driver_for
from cosfail.launcher.local import LocalError, LoopbackRedis, pid_alive
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest
from cosfail.workflows.state import current_state
from sqlalchemy import delete, update

from bench.common import (
    BenchFailed,
    RunningDomain,
    machine_line,
    median,
    ms,
    parallel,
    run_header,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "failover.json"


class Config(NamedTuple):
    nodes: int
    objects: int
    repeats: int | None = None  # None: the run's --repeats

    @property
    def key(self) -> str:
        return config_key(self.nodes, self.objects)

    @classmethod
    def parse(cls, text: str) -> Config:
        """`NODES:OBJECTS` or `NODES:OBJECTS:REPEATS`."""
        return cls(*(int(x) for x in text.split(":")))


def config_key(nodes: int, objects: int) -> str:
    size = f"{objects // 1_000_000}M" if objects % 1_000_000 == 0 else f"{objects // 1000}k"
    return f"{nodes}n-{size}"


SWEEP_OBJECTS = 10_000  # the node sweep's domain size
SWEEP_NODES = 10  # the object sweep's domain width
# The node sweep, then the object sweep; the 1M domain last, and failed over 3 times
# (each repetition copies every node's 77 MB of tables back).
CONFIGS = [Config(5, 10_000), Config(10, 10_000), Config(25, 10_000), Config(50, 10_000),
           Config(10, 100_000), Config(10, 1_000_000, 3)]
QUICK = [Config(5, 10_000, 1), Config(10, 10_000, 1), Config(10, 100_000, 1)]
TARGET_RTO_MS = 2000.0  # at 10 nodes / 100k objects
TARGET_RTO_1M_MS = 20_000.0  # at 10 nodes / 1M objects
TARGET_ORCHESTRATION = 0.10
TARGET_GROWTH = 1.5  # RTO at the most nodes / RTO at the fewest, 10k objects
SAVED = (Path("tables.db"), designation.DESIGNATION, designation.LAST_RUNNING)


class BenchDomain(RunningDomain):
    """A demo domain running for real, failed over and put back, again and again."""

    def __init__(self, base: Path, nodes: int, objects: int, broker: str) -> None:
        super().__init__(base, objects, broker, clients=nodes - 2)

    def backup(self) -> None:

        run_id = trigger.run(self.engine, BACKUP, BackupRequest(), "bench", "benchmark").run_id
        self.finish(run_id)

    # ----- put the domain back as it was before the failover --------------------------------
    def save(self) -> None:
        for node in self.nodes:
            for rel in SAVED:
                dest = self.base / "saved" / node / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.domain.home(node) / rel, dest)

    def reset(self) -> None:
        parallel(lambda n: driver_for(self.domain, n).stop(), self.nodes)
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
            conn.execute(delete(L.hosting))  # the history goes back with the epoch
        parallel(lambda n: driver_for(self.domain, n).start(), self.nodes)
        self.local.start_worker("srv1")  # after its kill: its start-up check finds it current
        self.local.wait_workers(["srv1"])
        self.quiet()
        assert current_state(self.engine) == Designation("srv1", 1)

    def kill_server(self) -> None:
        pid = self.worker_pid("srv1")
        self.local.kill("srv1")
        while pid_alive(pid):
            time.sleep(0.005)


# ----- memory of a worker process --------------------------------------------------------------
def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since start, or since `reset_peak`), in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def reset_peak(pid: int) -> None:
    """Set the process's VmHWM back to its VmRSS (Linux ≥ 4.0, as its owner or root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ----- one failover and where its time went -------------------------------------------------
def failover_once(d: BenchDomain) -> dict[str, Any]:
    bcs = d.worker_pid("bcs1")
    before = memory_kb(bcs)
    reset_peak(bcs)
    d.kill_server()
    t_req = time.time()
    started = trigger.run(d.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"),
                          "bench", "benchmark")
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
            "bcs_worker_before_kb": before["VmRSS"], "bcs_worker_peak_kb": memory_kb(bcs)["VmHWM"],
            "bcs_worker_earlier_peak_kb": before["VmHWM"],
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
def run_config(work: Path, cfg: Config, repeats: int, broker: str) -> dict[str, Any]:
    """One configuration's domain, failed over `repeats` times: its medians."""
    t_setup = time.time()
    samples, failures = [], []
    entry: dict[str, Any] = {"nodes": cfg.nodes, "objects": cfg.objects, "repeats": repeats}
    with BenchDomain(work / cfg.key, cfg.nodes, cfg.objects, broker) as d:
        entry["bcs_worker_rest_kb"] = memory_kb(d.worker_pid("bcs1"))["VmRSS"]
        d.backup()
        d.save()
        snap = max(d.domain.backup_area("bcs1").glob("*.snap"), key=os.path.getmtime)
        entry["snapshot_bytes"] = snap.stat().st_size
        entry["setup_s"] = round(time.time() - t_setup, 1)
        print(f"[{cfg.key}] up in {entry['setup_s']:.1f} s; failovers …", file=sys.stderr)
        for i in range(repeats):
            try:
                if i:
                    d.reset()
                samples.append(failover_once(d))
            except BenchFailed as exc:
                failures.append(str(exc))
                print(f"[{cfg.key}] FAILED: {str(exc)[:300]}", file=sys.stderr)
                break  # the domain is half failed over: no clean next repetition
            print(f"[{cfg.key}] RTO {samples[-1]['rto_ms']:.0f} ms", file=sys.stderr)
    entry["failures"] = failures
    if not samples:
        return entry
    mid = sorted(samples, key=lambda s: s["rto_ms"])[len(samples) // 2]
    return {
        **entry,
        "rto_ms": median([s["rto_ms"] for s in samples]),
        "accept_ms": median([s["accept_ms"] for s in samples]),
        "driver_ms": median([s["driver_ms"] for s in samples]),
        "control_ms": median([s["control_ms"] for s in samples]),
        "orchestration_ms": median([s["orchestration_ms"] for s in samples]),
        "orchestration_share": round(median([s["orchestration_share"] for s in samples]), 3),
        "between_share": round(median([s["between_share"] for s in samples]), 3),
        "bcs_worker_before_kb": int(median([s["bcs_worker_before_kb"] for s in samples])),
        "bcs_worker_peak_kb": max(s["bcs_worker_peak_kb"] for s in samples),
        # before the first failover: the peak through start-up and the first backup (its
        # snapshot received and trial-restored on the BCS)
        "bcs_worker_backup_peak_kb": samples[0]["bcs_worker_earlier_peak_kb"],
        "rto_samples_ms": [s["rto_ms"] for s in samples],
        "median_run_steps": mid["steps"],
    }


def growth(configs: dict[str, Any]) -> dict[str, Any]:
    """The issue's two sweeps, from whichever configurations ran and succeeded: RTO at
    the most nodes over RTO at the fewest (10k objects), and the same for objects (10
    nodes) beside the growth in objects (linear)."""
    done = [e for e in configs.values() if "rto_ms" in e]
    out: dict[str, Any] = {}
    for name, axis, fixed, value in (("nodes", "nodes", "objects", SWEEP_OBJECTS),
                                      ("objects", "objects", "nodes", SWEEP_NODES)):
        sweep = sorted((e for e in done if e[fixed] == value), key=lambda e: e[axis])
        if len(sweep) >= 2:
            lo, hi = sweep[0], sweep[-1]
            out[name] = {"from": lo[axis], "to": hi[axis], "scale": hi[axis] / lo[axis],
                         "rto_ratio": round(hi["rto_ms"] / lo["rto_ms"], 2)}
    return out


def bench(redis: LoopbackRedis, configs: list[Config], repeats: int, keep: bool,
          workdir: str | None = None) -> dict[str, Any]:
    """`redis` is the broker of every domain (one per process: Celery's producer pool
    keeps the first broker it was given)."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cosfail-bench-failover-", dir=workdir))
    results: dict[str, Any] = {
        **run_header(repeats), "node_mix": "1 server, 1 bcs, the rest clients", "configs": {},
        "targets": {"rto_ms_10_nodes_100k": TARGET_RTO_MS, "rto_ms_10_nodes_1M": TARGET_RTO_1M_MS,
                    "orchestration_share": TARGET_ORCHESTRATION, "node_growth": TARGET_GROWTH},
    }
    try:
        for cfg in configs:
            redis.flush()  # nothing of the last domain's queues reaches this one
            try:
                entry = run_config(work, cfg, cfg.repeats or repeats, redis.url)
            except (BenchFailed, LocalError) as exc:  # its domain did not come up
                print(f"[{cfg.key}] FAILED: {str(exc)[:300]}", file=sys.stderr)
                entry = {"nodes": cfg.nodes, "objects": cfg.objects, "failures": [str(exc)]}
            results["configs"][cfg.key] = entry
        results["loadavg_end"] = os.getloadavg()
        results["growth"] = growth(results["configs"])
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def report(results: dict[str, Any], out: Path = RESULTS) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    t = Table(title="failover RTO: accept → run succeeded (verified), medians, ms; "
                    "BCS worker memory, MB")
    for col in ("nodes", "objects", "RTO", "samples", "driver", "control", "orchestration",
                "orch. share", "between steps", "accept (probe+plan)", "worker at rest",
                "peak to 1st backup", "before / peak in failover", "snapshot"):
        t.add_column(col, justify="right")
    for e in results["configs"].values():
        if "rto_ms" not in e:
            t.add_row(str(e["nodes"]), f"{e['objects']:,}", "[red]failed[/]")
            continue
        share_ok = e["orchestration_share"] <= TARGET_ORCHESTRATION
        rto = f"{e['rto_ms']:.0f}"
        target = {(10, 100_000): TARGET_RTO_MS, (10, 1_000_000): TARGET_RTO_1M_MS}.get(
            (e["nodes"], e["objects"]))
        if target:
            rto = f"[{'green' if e['rto_ms'] <= target else 'red'}]{rto}[/]"
        t.add_row(str(e["nodes"]), f"{e['objects']:,}", rto,
                  " ".join(f"{x:.0f}" for x in e["rto_samples_ms"]),
                  f"{e['driver_ms']:.0f}", f"{e['control_ms']:.0f}",
                  f"{e['orchestration_ms']:.0f}",
                  f"[{'green' if share_ok else 'red'}]{e['orchestration_share']:.0%}[/]",
                  f"{e['between_share']:.0%}", f"{e['accept_ms']:.0f}",
                  mb(e["bcs_worker_rest_kb"]), mb(e["bcs_worker_backup_peak_kb"]),
                  f"{mb(e['bcs_worker_before_kb'])} / {mb(e['bcs_worker_peak_kb'])}",
                  f"{e['snapshot_bytes'] / 1e6:.1f} MB")
    con.print(t)
    g = results.get("growth", {})
    if "nodes" in g:
        ok = g["nodes"]["rto_ratio"] <= TARGET_GROWTH
        con.print(f"RTO {g['nodes']['to']} nodes / {g['nodes']['from']} nodes "
                  f"({SWEEP_OBJECTS:,} objects): [{'green' if ok else 'red'}]"
                  f"{g['nodes']['rto_ratio']:.2f}×[/] (target ≤ {TARGET_GROWTH:g}×)")
    if "objects" in g:
        ok = g["objects"]["rto_ratio"] <= g["objects"]["scale"]
        con.print(f"RTO {g['objects']['to']:,} objects / {g['objects']['from']:,} objects "
                  f"({SWEEP_NODES} nodes): [{'green' if ok else 'red'}]"
                  f"{g['objects']['rto_ratio']:.2f}×[/] (linear: {g['objects']['scale']:g}×)")
    for key, e in results["configs"].items():
        for f in e.get("failures", []):
            con.print(f"[red]{key}: {f[:400]}[/]")
    con.print(f"targets: RTO ≤ {TARGET_RTO_MS:.0f} ms at 10 nodes / 100k, ≤ "
              f"{TARGET_RTO_1M_MS:.0f} ms at 10 nodes / 1M; orchestration ≤ "
              f"{TARGET_ORCHESTRATION:.0%} of RTO")
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
    con.print(machine_line(results))
    con.print(f"written to {out}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options this benchmark and `python -m bench` share."""
    p.add_argument("--configs", nargs="+", type=Config.parse, metavar="NODES:OBJECTS[:REPEATS]",
                   help="e.g. 50:10000 10:1000000:3 (default: the issue's sweeps)")
    p.add_argument("--repeats", type=int, default=5,
                   help="failovers of each configuration that names none (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: small domains, one failover each")
    p.add_argument("--keep", action="store_true", help="keep the bench's domains")
    p.add_argument("--workdir", help="where the domains live (default: the system's "
                   "temporary directory)")


def chosen_configs(args: argparse.Namespace) -> list[Config]:
    return args.configs or (QUICK if args.quick else CONFIGS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--out", type=Path, default=RESULTS, help="the JSON results file")
    args = p.parse_args()
    with LoopbackRedis(Path(tempfile.gettempdir())) as redis:
        results = bench(redis, chosen_configs(args), args.repeats, args.keep, args.workdir)
    write_json(args.out, results)
    report(results, args.out)


if __name__ == "__main__":
    main()
