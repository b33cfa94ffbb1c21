"""The failed server comes back in the middle of its own failover: never two masters.

srv1 (the master) is SIGKILLed and failed over to bcs1. Pause failpoints hold the run at
each phase in turn; at each, srv1 is killed if it runs and then comes back for real:
its `cosprintd` first, then its worker; the run is let go to the next phase. Every
node's COSprint is asked who it is every 50 ms throughout. At no sample may two nodes
claim master; at the end bcs1 is the only master, every node serves at the domain's
epoch, and srv1 is a slave: its last returning worker found it stale once the run had
ended and auto_reclaim reclaimed it (a slave it stays: only a failback, which nothing
here runs, makes it master again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import pytest
from cosfail.cosprint.designation import Designation
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest

HOLD = 60.0  # seconds a held step waits at most; the test lets it go long before


@dataclass(frozen=True)
class Phase:
    name: str
    failpoint: str  # where the failover is held while srv1 returns
    srv1_returns_as: str  # the role srv1's COSprint claims when it is back


PHASES = [
    # The trigger has planned (srv1 was down) and holds the lock row; the run's first
    # step has not confirmed it yet, and the epoch is still srv1's: a returning srv1 is
    # rightly master until advance_epoch, after which fence_server stops it.
    Phase("before the lock", "take_lock@:before", "master"),
    # bcs1's tables are restored from the snapshot; the step has not ended.
    Phase("mid-restore", "restore_snapshot@bcs1:after", "stale"),
    # bcs1 has published its tables at the new epoch; no node re-pointed or restarted yet.
    Phase("tables published", "repoint_and_start@bcs1:before", "stale"),
    # bcs1 already serves as master; the run has still to verify and release the lock.
    Phase("the BCS serving", "verify@:before", "stale"),
]


@pytest.mark.timeout(600)
def test_a_server_returning_at_any_phase_of_its_failover_never_makes_two_masters(
        fault_cluster, watch_masters):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=500)
    c.backup()
    c.local.kill("srv1")
    fired = fp.with_name(fp.name + ".fired")
    fp.write_text(f"{PHASES[0].failpoint}:pause={HOLD:g}\n")
    reached: list[float] = []
    with watch_masters(c) as watch:
        run_id = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"),
                             "fault-suite").run_id
        for i, phase in enumerate(PHASES):
            deadline = time.time() + 60
            while not fired.exists():
                assert c.ledger.run(run_id)["state"] == L.RUNNING, \
                    f"{phase.name}: the run ended before {phase.failpoint}"
                assert time.time() < deadline, f"{phase.name}: {phase.failpoint} never reached"
                time.sleep(0.02)
            reached.append(time.time())
            c.local.kill("srv1")
            c.driver("srv1").start()
            back = c.driver("srv1").status()
            assert back is not None and back.role == phase.srv1_returns_as, (phase.name, back)
            c.restart_worker("srv1")
            assert c.ledger.run(run_id)["state"] == L.RUNNING, phase.name
            if i + 1 < len(PHASES):
                fp.write_text(f"{PHASES[i + 1].failpoint}:pause={HOLD:g}\n")
            fired.unlink()  # let the held step go on
        run = c.wait(run_id)
        reached.append(time.time())
        reclaim = c.wait(c.newest_run("reclaim")["id"])
        end = {n: c.driver(n).status() for n in c.domain.names()}

    assert run["state"] == L.SUCCEEDED, run["error"]
    assert reclaim["state"] == L.SUCCEEDED, reclaim["error"]
    assert reclaim["triggered_by"] == "auto" and reclaim["created_at"] > run["finished_at"]
    for phase, (t0, t1) in zip(PHASES, pairwise(reached), strict=True):
        samples = [ms for t, ms in watch.samples if t0 <= t < t1]
        print(f"{phase.name}: {len(samples)} samples, at most "
              f"{max(map(len, samples), default=0)} master(s) in one", flush=True)
        assert len(samples) >= 5, phase.name
        # The watcher saw what srv1 claimed: master only while its epoch was current.
        assert any("srv1" in ms for ms in samples) == (phase.srv1_returns_as == "master")
    assert watch.most_masters() == 1, "two masters in one sample"
    assert c.authority() == Designation("bcs1", 2)
    served = {n: (st.role, st.master, st.epoch) for n, st in end.items()}
    assert served == {"srv1": ("slave", "bcs1", 2), "bcs1": ("master", "bcs1", 2),
                      "cl1": ("slave", "bcs1", 2)}, served
