"""What the benchmarks share: a demo domain running for real, and their rounding."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.fsutil import atomic_write_bytes
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.local import LocalDomain
from cosfail.workers.app import configure
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Engine
from cosfail.workflows.state import current_state


class BenchFailed(Exception):
    """A run of a benchmark did not succeed, or its domain did not come up."""


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def run_header(repeats: int) -> dict[str, Any]:
    """What every result file starts with: when, on what, and how loaded the machine was."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "repeats": repeats,
            "loadavg_start": os.getloadavg()}


def machine_line(results: dict[str, Any]) -> str:
    """How loaded the machine was, from a result file: shared machines are noisy."""
    load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(results["loadavg_start"],
                                                         results["loadavg_end"], strict=True))
    return f"{results['cpus']} CPUs; load average 1/5/15 min (start/end): {load}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Results, whole or not at all (an interrupted run keeps the last ones)."""
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def parallel(fn: Callable[[Any], object], items: Iterable[Any]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fn, items))


class RunningDomain:
    """A demo domain (1 server, 1 BCS, `clients` clients) running for real, as the test
    fixture runs it: one worker and one COSprint per node, and a control worker, on the
    given broker. `local` is the LocalDomain that starts them (the backup benchmark's
    also registers its empty steps in the node workers)."""

    def __init__(self, base: Path, objects: int, broker: str, clients: int = 0,
                 local: type[LocalDomain] = LocalDomain) -> None:
        path = init_demo(base, servers=1, bcs=1, clients=clients, objects=objects,
                         broker=broker)
        self.base = base
        self.domain: Domain = load_domain(path)
        configure(self.domain)
        self.engine = Engine(self.domain)
        current_state(self.engine)
        self.local = local(self.domain)
        self.nodes = self.domain.names()

    def __enter__(self) -> RunningDomain:
        """Every COSprint and worker at once: one at a time, each COSprint's start waits
        for its answer before the next begins."""
        try:
            parallel(self.local.start_cosprint, self.nodes)
            for node in [None, *self.nodes]:
                self.local.start_worker(node)
            # 2 cores import 50 Celery workers at once: allow for it.
            self.local.wait_workers([None, *self.nodes], timeout=30 + 3 * len(self.nodes))
            self.quiet()
        except BaseException:  # `with` calls no __exit__ for a failed __enter__
            self.local.down()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.local.down()

    def worker_pid(self, node: str) -> int:
        return self.local.components()[f"worker:{node}"].pid

    def quiet(self, timeout: float = 120.0) -> None:
        """Until no run is in progress (a worker runs a start-up check when it starts)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(r["state"] not in (L.PLANNED, L.RUNNING)
                   for r in self.engine.ledger.runs(200)):
                return
            time.sleep(0.05)
        raise BenchFailed("the domain did not settle (a run stays in progress)")

    def finish(self, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """The run, once it has succeeded; BenchFailed if it failed or takes too long."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.engine.ledger.run(run_id)
            if run["state"] not in (L.PLANNED, L.RUNNING):
                if run["state"] != L.SUCCEEDED:
                    raise BenchFailed(f"run {run_id} {run['state']}: {run['error']}")
                return run
            time.sleep(0.002)
        raise BenchFailed(f"run {run_id} did not finish within {timeout:g} s")
