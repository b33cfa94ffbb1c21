"""Printing through failover, reclaim and switchover: every job accepted is printed once.

A print client (the demo's `JobStream`: ~20 jobs a second through the client node, to
queues on srv1 and srv2, retrying on a 503 or no answer) runs while, on one domain,
srv1 (the master) is SIGKILLed and failed over to bcs1, srv1 returns and is reclaimed,
and srv2 is switched over to bcs1. Then every node's sink files are counted. What the
SIGKILL may leave in srv1's spool (a job accepted but not printed) is placed there for
certain, and must be printed once after srv1's reclaim.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
from cosfail.cosprint.daemon.spool import SINK_DIR, spool_job
from cosfail.launcher.demo import JobStream, queues_of
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.switchover import SWITCHOVER

# A 503, or no answer: nothing listens any more, or a stopping node dropped the
# connection before reading the job.
RETRIABLE = {"503", "connection refused", "connection reset"}


@dataclass
class Window:
    """One workflow's stretch of the stream: from its fault or trigger to the next's."""

    workflow: str
    start: float
    first_job: int  # index of the first job submitted in it
    end: float = 0.0
    last_job: int = 0  # one past the last


def figures(stream: JobStream, w: Window, printed: dict[str, int]) -> dict[str, int]:
    """Jobs submitted in the window and what became of them; refusals made in it."""
    jobs = list(stream.submitted)[w.first_job:w.last_job]
    refused = {j: n for j, tries in stream.refused.items()
               if (n := sum(w.start <= t < w.end for t, _ in tries))}
    return {
        "submitted": len(jobs),
        "accepted": sum(j in stream.accepted for j in jobs),
        "refused_tries": sum(refused.values()),
        "refused_then_retried": sum(j in stream.accepted for j in refused),
        "printed": sum(printed.get(j, 0) > 0 for j in jobs),
        "lost": sum(j in stream.accepted and printed.get(j, 0) == 0 for j in jobs),
        "duplicated": sum(printed.get(j, 0) > 1 for j in jobs),
    }


def strand_jobs(c, queue: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Leave in the dead srv1's spool what a SIGKILL can leave there: a job it had
    accepted but not printed (a few ms between its spool write and its print), and one
    it had printed but not yet removed from the spool. Written as cosprintd writes them."""
    spool, sink = c.domain.spool_dir("srv1"), c.domain.home("srv1") / SINK_DIR
    jobs = ["stranded-unprinted", "stranded-printed"]
    for job_id in jobs:
        spool_job(spool, {"job_id": job_id, "queue": queue, "data": "page",
                          "accepted_by": "srv1", "accepted_at": time.time()})
    sink.mkdir(parents=True, exist_ok=True)
    with open(sink / "stranded.log", "a") as f:
        f.write(json.dumps({"job_id": jobs[1], "queue": queue, "node": "srv1"}) + "\n")
    return jobs


@pytest.mark.timeout(600)
def test_jobs_through_failover_reclaim_and_switchover_are_each_printed_exactly_once(
        make_cluster):
    c = make_cluster(servers=2, bcs=1, clients=1, objects=300)
    c.backup()
    srv1_queues = queues_of(c.domain, "cl1", "srv1", limit=3)
    stream = JobStream(c.domain, c.domain.names("client"),
                       srv1_queues + queues_of(c.domain, "cl1", "srv2", limit=3))
    windows: list[Window] = []

    def begin(workflow: str) -> None:
        now, n = time.time(), len(stream.submitted)
        if windows:
            windows[-1].end, windows[-1].last_job = now, n
        windows.append(Window(workflow, now, n))

    def succeeded(run_id: str | None) -> None:
        run = c.wait(run_id or "")
        assert run["state"] == L.SUCCEEDED, (run["workflow"], run["error"])

    begin("steady")
    stream.start()
    try:
        time.sleep(1.0)

        begin("failover")
        c.local.kill("srv1")
        stranded = strand_jobs(c, srv1_queues[0])
        succeeded(trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"),
                              "fault-suite", "srv1 died").run_id)

        begin("reclaim")
        c.local.revive("srv1")
        reclaim = c.newest_run("reclaim")
        assert reclaim["triggered_by"] == "auto"
        succeeded(reclaim["id"])
        # Both stranded jobs went again, at least the printed one as a duplicate (the
        # stream's own jobs may have been caught by the kill as well).
        [resent] = [s.facts for s in c.ledger.steps(reclaim["id"])
                    if s.name == "resend_set_aside_jobs"]
        assert resent["sent"] >= 1 and resent["duplicates"] >= 1, resent

        begin("switchover")
        succeeded(trigger.run(c.engine, SWITCHOVER, MoveRequest("srv2", "bcs1"),
                              "fault-suite").run_id)
        time.sleep(1.0)
    finally:
        stream.stop()  # returns once the client's backlog is delivered (or 60 s)
        begin("end")
    accepted = set(stream.accepted) | set(stranded)
    deadline = time.time() + 30
    while not accepted <= set(printed := stream.printed_counts()) and time.time() < deadline:
        time.sleep(0.2)

    report = {w.workflow: figures(stream, w, printed) for w in windows[:-1]}
    for workflow, f in report.items():
        print(f"{workflow}: {f}", flush=True)
    reasons = {why for tries in stream.refused.values() for _, why in tries}
    assert not stream.rejected, stream.rejected
    assert reasons <= RETRIABLE, reasons
    assert set(stream.submitted) == set(stream.accepted), "a job was never accepted"
    assert sum(f["lost"] for f in report.values()) == 0, sorted(accepted - set(printed))
    assert sum(f["duplicated"] for f in report.values()) == 0, \
        sorted(j for j, n in printed.items() if n > 1)
    # The failover of a killed server is an outage: the client was refused and retried,
    # and every job it retried was printed.
    assert report["failover"]["refused_tries"] > 0
    assert report["failover"]["refused_then_retried"] > 0
    assert all(printed.get(j) == 1 and stream.accepted[j] > tries[-1][0]
               for j, tries in stream.refused.items())
    assert sum(f["submitted"] for f in report.values()) == len(stream.submitted)
    # What srv1 held when it died: printed once, after its reclaim or before its death.
    assert {j: printed.get(j, 0) for j in stranded} == {j: 1 for j in stranded}
