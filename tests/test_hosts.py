"""A domain of real hosts: every node, and the control plane, in its own network
namespace (launcher/hosts.py), its ledger on the control host's PostgreSQL, tables
moving between hosts over SFTP only."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Cluster, JobSender, run_cli
from cosfail.cosprint import tables
from cosfail.cosprint.domain import load_domain
from cosfail.launcher import hosts
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.local import LocalDomain
from sqlalchemy import select

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def leftovers(lab: hosts.Lab) -> list[str]:
    """Namespaces, links and processes of the lab still on this machine."""
    found = [f"netns {ns}" for ns in hosts.existing_netns(lab.tag)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,  # noqa: S607
                           check=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if f"{hosts.PREFIX}{lab.tag}" in line]
    return found + [f"process {pid}" for pid in processes_of(lab)]


def processes_of(lab: hosts.Lab) -> list[int]:
    """Every process in one of the lab's namespaces (compared by the netns inode)."""
    inodes = set()
    for h in lab.hosts.values():
        try:
            inodes.add(os.stat(f"/run/netns/{h.netns}").st_ino)
        except FileNotFoundError:
            pass
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if os.stat(p / "ns" / "net").st_ino in inodes:
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def host_cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    """1 server, 2 BCSs, 3 clients, each its own host, up (no beat/API/Flower)."""
    path = init_demo(tmp_path / "dom", bcs=2, clients=3, hosts=True)
    local = LocalDomain(load_domain(path))
    lab = local.lab
    assert lab is not None
    try:
        local.start_hosts()  # first: the cluster's engine reaches the ledger on its host
        cluster = Cluster(local.domain)
        cluster.up()
        yield cluster
    finally:
        local.down()
        assert leftovers(lab) == []


def test_a_domain_of_hosts_runs_the_whole_story_on_postgresql_over_sftp_through_a_cut(
        host_cluster):
    c = host_cluster
    domain = c.domain
    assert domain.ledger_url.startswith("postgresql+psycopg://")
    assert len({domain.address(n) for n in domain.names()}) == 6
    c.settle()
    shipped = {s.node: s.outcome for s in c.ledger.steps(c.backup())
               if s.name == "ship_snapshot" and s.member}
    assert sorted(shipped) == ["bcs1", "bcs2"]
    for bcs, outcome in shipped.items():
        assert outcome.endswith(f"from srv1 to {bcs} over SFTP from "
                                f"root@{domain.address('srv1')}:22"), outcome

    # Every node process's open files are its host's own: none under another's directory.
    homes = {n: domain.home(n) for n in domain.names()}
    for node, home in homes.items():
        pids = [p for p in processes_of(c.local.lab) if f"--node\x00{node}\x00".encode()
                in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert pids, node
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(str(domain.base)):
                    assert target.startswith(str(home)), (node, pid, target)

    # A cut link: bcs2 cannot reach srv1's sshd. Its copy fails naming the host, is
    # retried, and completes once the link is healed.
    lab = c.local.lab
    hosts.cut(lab, "bcs2", "srv1")
    try:
        started = run_cli("backup", "--json", "-d", str(domain.path))
        run_id = json.loads(started.stdout)["run_id"]
        deadline = time.time() + 60
        while not (errors := [s.error for s in c.ledger.steps(run_id)
                              if s.node == "bcs2" and s.member and s.error]):
            assert time.time() < deadline, c.ledger.steps(run_id)
            time.sleep(0.2)
        assert lab.host("srv1").address in errors[0], errors
    finally:
        hosts.heal(lab, "bcs2", "srv1")
    assert c.wait(run_id)["state"] == "succeeded"
    [bcs2] = [s for s in c.ledger.steps(run_id)
              if s.node == "bcs2" and s.member and s.name == "ship_snapshot"]
    assert bcs2.state == "succeeded" and bcs2.error is None, bcs2

    c.local.kill("srv1")
    done = run_cli("failover", "srv1", "--to", "bcs1", "--yes", "--wait", "--json",
                   "-d", str(domain.path))
    failover = json.loads(done.stdout)
    assert failover["state"] == "succeeded", done.stderr
    fence = next(s for s in failover["steps"] if s["name"] == "fence_server")
    assert f"over SSH (root@{domain.address('srv1')}:22)" in fence["outcome"]
    assert c.authority().master == "bcs1"

    # srv1 comes back: its restart-check leaves it stopped, auto-reclaim makes it a slave.
    c.local.revive("srv1")
    reclaim = c.wait(c.newest_run("reclaim")["id"])
    assert reclaim["state"] == "succeeded", reclaim["error"]
    back = run_cli("failback", "srv1", "--yes", "--wait", "--json", "-d", str(domain.path))
    assert json.loads(back.stdout)["state"] == "succeeded", back.stderr
    assert c.authority().master == "srv1"
    assert c.hosted("cl3") == {"srv1": 1000}


def test_a_server_cut_from_the_control_host_stops_on_its_lease_before_its_bcs_serves(
        host_cluster):
    """srv1 and the control host lose each other; srv1's clients still reach it. srv1
    prints on its lease, gets no failsafe (its peers read the ledger), and stops within
    ttl + 1 s. A failover from the control host, started at once, cannot fence srv1,
    waits its lease out, and bcs1 accepts srv1's queues only after srv1's last
    acceptance. After the heal srv1 knows it is stale and refuses its old queues."""
    c = host_cluster
    domain, lab = c.domain, c.local.lab
    ttl = domain.spec.lease.ttl
    on_control = lab.netns_exec(hosts.CONTROL)
    c.settle()
    c.backup()
    with tables.connect(domain.tables_url("srv1")) as conn:
        queue = conn.execute(select(tables.queues.c.name).where(
            tables.queues.c.host == "srv1").limit(1)).scalar_one()
    srv1 = c.driver("srv1")
    assert srv1.submit(queue, "page", "before-cut")[0] == 202

    with JobSender(c, "srv1", queue) as to_srv1, JobSender(c, "bcs1", queue) as to_bcs1:
        time.sleep(1)
        hosts.cut(lab, "srv1", hosts.CONTROL, both=True)
        cut = time.monotonic()
        try:
            seen = run_cli("status", "--json", "-d", str(domain.path), on=on_control)
            [row] = [n for n in json.loads(seen.stdout)["nodes"] if n["name"] == "srv1"]
            assert (row["worker"], row["cosprint"]) == ("down", "down"), row
            dry = run_cli("failover", "srv1", "--to", "bcs1", "--dry-run", "--json",
                          "-d", str(domain.path), on=on_control)
            assert any(n.startswith("unless srv1 is fenced, the failover waits up to ")
                       for n in json.loads(dry.stdout)["plan"]["notes"]), dry.stdout
            done = run_cli("failover", "srv1", "--to", "bcs1", "--yes", "--wait", "--json",
                           "-d", str(domain.path), on=on_control)
            failover = json.loads(done.stdout)
            assert failover["state"] == "succeeded", done.stderr
            time.sleep(1)
        finally:
            hosts.heal(lab, "srv1", hosts.CONTROL, both=True)
    steps = {s["name"]: s for s in failover["steps"]}
    assert steps["fence_server"]["outcome"].startswith("srv1 not fenced"), steps
    # its peers read the ledger, so confirmed no failsafe round: only the lease is waited
    assert steps["wait_out_lease"]["outcome"].startswith("waited "), steps
    assert "it won no failsafe round: " in steps["wait_out_lease"]["outcome"], steps
    assert c.authority().master == "bcs1"

    by_srv1 = to_srv1.accepted_by("srv1") + to_bcs1.accepted_by("srv1")
    by_bcs1 = to_srv1.accepted_by("bcs1") + to_bcs1.accepted_by("bcs1")
    assert by_srv1 and by_bcs1, (to_srv1.answers[-3:], to_bcs1.answers[-3:])
    assert max(by_srv1) < min(by_bcs1)  # never both
    assert max(by_srv1) - cut <= ttl + 1
    refused = [a for t, code, a in to_srv1.answers if t > max(by_srv1) and code == 503]
    assert any("lease ended, no failsafe (" in a.get("error", "") for a in refused), refused

    deadline = time.time() + 30
    while (code_answer := srv1.submit(queue, "page", "after-heal"))[0] == 503 \
            and "ledger unreadable" in code_answer[1].get("error", ""):
        assert time.time() < deadline, code_answer
        time.sleep(0.2)
    assert code_answer[1].get("printed_by") != "srv1", code_answer
    deadline = time.time() + 15  # back in reach of the ledger, srv1 records its outage
    while not (events := [e for e in c.ledger.lease_events() if e["node"] == "srv1"]):
        assert time.time() < deadline, "srv1 never recorded its outage"
        time.sleep(0.2)
    assert events[0]["outcome"].startswith("stopped printing: lease ended, no failsafe ("), \
        events


def test_local_down_after_the_supervisor_was_killed_leaves_nothing(tmp_path):
    path = init_demo(tmp_path / "dom", bcs=1, clients=1, hosts=True)
    local = LocalDomain(load_domain(path))
    lab = local.lab
    up = subprocess.Popen([sys.executable, "-m", "cosfail.launcher.cli", "local", "up",  # noqa: S603
                           "-d", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not processes_of(lab) or not (path.parent / "run" / "local.json").exists():
        assert time.time() < deadline, "local up made no host"
        time.sleep(0.1)
    time.sleep(1.0)  # part-way: some of its processes started
    up.send_signal(signal.SIGKILL)
    up.wait()
    assert leftovers(lab) != []
    for _ in range(2):  # and again: nothing left to do, no error
        done = run_cli("local", "down", "-d", str(path))
        assert done.returncode == 0, done.stderr
        assert leftovers(lab) == []


def test_a_lab_gives_its_hosts_no_route_beyond_their_subnet(tmp_path):
    lab = hosts.plan_lab(str(tmp_path), ["control", "srv1"])
    try:
        hosts.up(lab)
        route = subprocess.run([*lab.netns_exec("srv1"), "ip", "route", "get", "192.0.2.1"],  # noqa: S603
                               capture_output=True, text=True)
        assert route.returncode != 0 and "unreachable" in route.stderr, route
        assert hosts.RANGE.supernet_of(ipaddress.ip_network(lab.subnet))
    finally:
        hosts.down(lab.tag)
    assert leftovers(lab) == []
