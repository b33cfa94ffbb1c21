"""Remote nodes over SSH, on a real OpenSSH sshd (127.0.0.1, keys made by the fixture).

One machine plays several: two nodes whose `host` values differ ("localhost" and
"127.0.0.1", two names of this machine) are on different hosts to cosfail, so files move
between them over SFTP, through the sshd named in the source node's `[node.ssh]`.
Faults are real: an unknown and a changed host key, the sshd processes serving a
transfer SIGKILLed in the middle of it, a port with no sshd behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import SSHD, free_port
from cosfail.cosprint import tables
from cosfail.cosprint.daemon.spool import JOB_SUFFIX, list_spool, spool_job
from cosfail.cosprint.domain import Domain, load_domain, parse_domain
from cosfail.cosprint.errors import DomainFileError
from cosfail.cosprint.snapshot import import_snapshot, list_snapshots
from cosfail.workers import remote, transport
from cosfail.workers.steps import is_verified
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest
from cosfail.workflows.restart_check import RESTART_CHECK, CheckRequest
from sqlalchemy import select

WEIRD = "it's \"here\" $(touch pwned) `touch pwned`; touch pwned"


# ----- helpers ----------------------------------------------------------------------------
def two_hosts(tmp_path: Path, ssh: dict[str, object]) -> Domain:
    """srv1 on "localhost", reachable at `ssh`; bcs1 on another host, "127.0.0.1"."""
    raw = {
        "control": {"name": "t"},
        "node": [
            {"name": "srv1", "role": "server", "master": True, "home": "srv1", "port": 1,
             "ssh": ssh},
            {"name": "bcs1", "role": "bcs", "home": "bcs1", "port": 2, "host": "127.0.0.1"},
        ],
        "coverage": [{"bcs": "bcs1", "servers": ["srv1"]}],
    }
    return parse_domain(raw, tmp_path / "domain.toml")


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() \
        else []


def other_key_known_hosts(sshd: SSHD, path: Path) -> Path:
    """A known_hosts that has another key for the sshd's host:port (a "changed" key)."""
    other = path.parent / "impostor_key"
    if not other.exists():
        sshd.keygen(other)
    path.write_text(sshd.known_hosts_line(other.with_suffix(".pub")))
    return path


def toml_value(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string (no DEL here)
    return str(v)


def edit_nodes(c, **nodes: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    """Set keys of [[node]] entries in a cluster's domain.toml (made with up=False)."""
    text = c.domain.path.read_text()
    for node, keys in nodes.items():
        old_home = f'home = "nodes/{node}"\n'
        if "home" in keys:
            assert text.count(old_home) == 1
            text = text.replace(old_home, "")
            (c.domain.base / "nodes" / node).rename(c.domain.base / str(keys["home"]))
        anchor = f'name = "{node}"\n'
        assert text.count(anchor) == 1, text
        text = text.replace(anchor, anchor + "".join(
            f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
    c.domain.path.write_text(text)
    c.amend_domain()  # reload it in the test process


def step_row(c, run_id: str, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in c.ledger.steps(run_id) if s.name == name and not s.member)


def srv1_queues(c) -> list[str]:  # type: ignore[no-untyped-def]
    q = tables.queues
    with tables.connect(c.domain.tables_url("srv1")) as conn:
        return [r[0] for r in conn.execute(select(q.c.name).where(q.c.host == "srv1"))]


def spool_pending_jobs(c, n: int, big: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    """Leave `n` jobs (and one of `big` bytes) pending in srv1's spool: its COSprint
    stopped first, so that nothing prints them. Written as cosprintd spools a job
    (`spool_job`), less the fsyncs, which only slow a test down."""
    c.driver("srv1").stop()
    queues = srv1_queues(c)
    spool = c.domain.spool_dir("srv1")
    spool.mkdir(parents=True, exist_ok=True)
    jobs = [{"job_id": f"pending-{i:04d}", "queue": queues[i % len(queues)],
             "data": f"page {i}"} for i in range(n)]
    if big:
        # Newest, and last by name too (SFTP gives mtimes in whole seconds): copied last.
        jobs.append({"job_id": "zz-big-job", "queue": queues[0], "data": "x" * big})
    for job in jobs:
        job.update(accepted_by="srv1", accepted_at=time.time())
        path = spool / f"{job['job_id']}{JOB_SUFFIX}"
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(job))
        tmp.rename(path)
    assert len(list_spool(spool)) == len(jobs)
    return [j["job_id"] for j in jobs]


def wait_all_printed(c, node: str, ids: list[str], timeout: float = 90.0) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.time() + timeout
    while True:
        printed = c.printed(node)
        if {j["job_id"] for j in printed} >= set(ids):
            return printed
        assert time.time() < deadline, \
            f"{node} printed {len(printed)} of {len(ids)} jobs in {timeout:g} s"
        time.sleep(0.2)


# ----- transport: host keys ---------------------------------------------------------------
def test_an_unknown_host_key_is_refused_naming_host_port_and_fingerprint(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    d = two_hosts(tmp_path, sshd.ssh_table(empty))
    src, dest = tmp_path / "src" / "file.bin", tmp_path / "dest" / "file.bin"
    random_file(src, 100_000)
    before = sshd.accepted()
    with pytest.raises(transport.HostKeyRefused) as err:
        transport.fetch(d, "srv1", src, "bcs1", dest)
    msg = str(err.value)
    assert sshd.address in msg and "unknown" in msg, msg
    assert sshd.fingerprint(sshd.host_key.with_suffix(".pub")) in msg, msg
    assert "\n" not in msg
    assert files_under(tmp_path / "dest") == []  # nothing, not even a .part
    assert sshd.accepted() == before  # refused before authenticating
    assert empty.read_text() == ""  # never auto-added


def test_a_changed_host_key_is_refused_naming_both_fingerprints(sshd, tmp_path):
    kh = other_key_known_hosts(sshd, tmp_path / "known_hosts")
    before_kh = kh.read_text()
    d = two_hosts(tmp_path, sshd.ssh_table(kh))
    src, dest = tmp_path / "src" / "file.bin", tmp_path / "dest" / "file.bin"
    random_file(src, 100_000)
    with pytest.raises(transport.HostKeyRefused) as err:
        transport.fetch(d, "srv1", src, "bcs1", dest)
    msg = str(err.value)
    assert sshd.address in msg and "changed" in msg, msg
    assert sshd.fingerprint(sshd.host_key.with_suffix(".pub")) in msg, msg  # offered
    assert sshd.fingerprint(tmp_path / "impostor_key.pub") in msg, msg  # expected
    assert files_under(tmp_path / "dest") == []
    assert kh.read_text() == before_kh
    assert not isinstance(err.value, ConnectionError)  # not retried: it would not help


# ----- transport: names, paths, quoting ---------------------------------------------------
@pytest.mark.parametrize("name", [
    "srv1;touch pwned", "srv$(reboot)", "srv`id`", "srv 1", "srv1'", 'srv1"', "srv1|x",
    "srv1&", "../srv1", "srv1\nreboot", "srv1\n",
])
def test_a_node_named_with_shell_metacharacters_is_rejected(tmp_path, name):
    path = tmp_path / "domain.toml"
    path.write_text(
        f'[[node]]\nname = {json.dumps(name)}\nrole = "server"\nmaster = true\n'
        f'home = "h"\nport = 7001\n\n[[coverage]]\nbcs = "b"\nservers = ["s"]\n')
    with pytest.raises(DomainFileError) as err:
        load_domain(path)
    assert str(path) in str(err.value) and "is not allowed" in str(err.value), err.value


def test_a_path_with_spaces_and_quotes_travels_intact_over_sftp(sshd, tmp_path):
    d = two_hosts(tmp_path, sshd.ssh_table())
    src = tmp_path / "out box" / f"snap {WEIRD}.bin"
    dest = tmp_path / "back up" / "it's \"here\"" / src.name
    digest = random_file(src, 3_000_000)
    before = sshd.accepted()
    size = transport.fetch(d, "srv1", src, "bcs1", dest)
    assert size == 3_000_000 and sha256(dest) == digest
    assert files_under(dest.parent) == [src.name]  # renamed into place, no .part left
    assert sshd.accepted() == before + 1  # it did go over SSH
    assert transport.how(d, "srv1", "bcs1") == f"over SFTP from root@{sshd.address}"
    assert not list(tmp_path.rglob("pwned")) and not Path("/root/pwned").exists()


def test_remote_commands_quote_every_argument(sshd, tmp_path):
    d = two_hosts(tmp_path, sshd.ssh_table())
    odd = tmp_path / WEIRD
    odd.write_text("plain\n")
    with remote.session(remote.endpoint(d, "srv1")) as s:
        ran = s.run(["cat", "--", str(odd)])
        echoed = s.run(["printf", "%s|", "a b", "$(id)", "'", '"', ";", "*"])
    assert (ran.code, ran.out) == (0, "plain\n"), ran
    assert echoed.out == "a b|$(id)|'|\"|;|*|", echoed
    assert not list(tmp_path.rglob("pwned")) and not Path("/root/pwned").exists()


# ----- transport: a transfer killed in the middle -----------------------------------------
def test_a_killed_sftp_transfer_leaves_no_complete_file_and_the_retry_resumes_it(sshd,
                                                                                  tmp_path):
    d = two_hosts(tmp_path, sshd.ssh_table())
    src, dest = tmp_path / "src" / "big.snap", tmp_path / "dest" / "big.snap"
    size = 24 * 1024 * 1024
    digest = random_file(src, size)
    killed: list[int] = []

    def kill_at_4mb(done: int, total: int) -> None:
        if done >= 4 * 1024 * 1024 and not killed:
            killed.extend(sshd.kill_sessions())

    with pytest.raises(transport.TransportInterrupted) as err:
        with transport.link(d, "srv1", "bcs1") as ln:
            ln.get(src, dest, progress=kill_at_4mb)
    assert killed, "no sshd session process to kill"
    assert isinstance(err.value, ConnectionError)  # a step retries it (workers/step.py)
    assert sshd.address in str(err.value) and "lost" in str(err.value), err.value
    assert not dest.exists()  # nothing complete-looking
    part = dest.with_name(dest.name + ".part")
    assert 0 < part.stat().st_size < size

    with transport.link(d, "srv1", "bcs1") as ln:
        got = ln.get(src, dest)
    assert got.size == size and got.resumed_at > 0, got
    assert sha256(dest) == digest
    assert not part.exists()


def test_an_unreachable_host_is_a_retriable_error_for_copies_and_a_report_for_fencing(
        sshd, tmp_path):
    dead = {"host": "127.0.0.1", "port": free_port(), "user": "root",
            "key_file": str(tmp_path / "key"), "known_hosts": str(tmp_path / "kh")}
    (tmp_path / "kh").write_text("")
    shutil.copy(Path(__file__), tmp_path / "not-a-key")
    d = two_hosts(tmp_path, {**dead, "key_file": str(tmp_path / "not-a-key")})
    with pytest.raises(transport.TransportError) as err:  # the key file is checked first
        transport.fetch(d, "srv1", tmp_path / "x", "bcs1", tmp_path / "y")
    assert "not-a-key" in str(err.value) and "from typing" not in str(err.value)

    sshd.keygen(tmp_path / "key")
    d = two_hosts(tmp_path, dead)
    with pytest.raises(transport.TransportUnreachable) as err:
        transport.fetch(d, "srv1", tmp_path / "x", "bcs1", tmp_path / "y")
    assert isinstance(err.value, ConnectionError)
    assert f"127.0.0.1:{dead['port']}" in str(err.value), err.value
    fenced = remote.fence_cosprint(d, "srv1")
    assert fenced.startswith("srv1 not fenced: cannot reach root@127.0.0.1:"), fenced
    spool = transport.copy_spool(d, "srv1", "bcs1")
    assert spool.sentence.startswith("spool of srv1 not copied to bcs1: cannot reach"), spool
    assert spool.facts["copied"] == 0


# ----- spool copies on one host -----------------------------------------------------------
def test_a_spool_copy_on_one_host_is_resumable_and_never_overwrites_another_job(tmp_path):
    raw = {"node": [
        {"name": "srv1", "role": "server", "master": True, "home": "srv1", "port": 1},
        {"name": "bcs1", "role": "bcs", "home": "bcs1", "port": 2}],
        "coverage": [{"bcs": "bcs1", "servers": ["srv1"]}]}
    d = parse_domain(raw, tmp_path / "domain.toml")
    src, dest = d.spool_dir("srv1"), d.spool_dir("bcs1")
    for i in range(10):
        spool_job(src, {"job_id": f"j{i}", "queue": "q", "data": "x" * i})
    (src / "j9.job.part").write_text("a job still being written")
    spool_job(dest, {"job_id": "j0", "queue": "other", "data": "another job, same id"})
    mine = (dest / "j0.job").read_bytes()

    done = transport.copy_spool(d, "srv1", "bcs1")
    assert done.facts["copied"] == 10 and done.facts["conflicts"] == ["j0.job"], done
    assert done.sentence.startswith("copied 10 spool file(s) (") and "by local copy" in \
        done.sentence and "1 set aside in" in done.sentence, done.sentence
    assert (dest / "j0.job").read_bytes() == mine  # never overwritten
    aside = d.home("bcs1") / "var" / "spool-conflicts" / "srv1" / "j0.job"
    assert aside.read_bytes() == (src / "j0.job").read_bytes()
    assert sorted(p.name for p in list_spool(dest)) == sorted(f"j{i}.job" for i in range(10))
    assert not list(dest.glob("*.part"))

    again = transport.copy_spool(d, "srv1", "bcs1")  # a retry: nothing left to copy
    assert (again.facts["copied"], again.facts["skipped"]) == (0, 10), again


# ----- workflows over SSH -------------------------------------------------------------------
def test_a_backup_ships_over_sftp_to_a_remote_bcs_and_a_changed_key_stops_it(make_cluster,
                                                                            sshd, tmp_path):
    c = make_cluster(servers=1, bcs=1, clients=0, objects=2000, up=False)
    kh = tmp_path / "cluster_known_hosts"
    shutil.copy(sshd.known_hosts, kh)
    edit_nodes(c, srv1={"ssh": sshd.ssh_table(kh)},
               bcs1={"host": "127.0.0.1", "backup_area": "back up/it's \"here\""})
    area = c.domain.backup_area("bcs1")
    assert area.name == "it's \"here\"" and area.parent.name == "back up"
    c.up()
    before = sshd.accepted()
    run_id = c.backup()
    assert sshd.accepted() > before
    ship = next(s for s in c.ledger.steps(run_id) if s.name == "ship_snapshot" and s.member)
    assert ship.outcome.endswith(f"from srv1 to bcs1 over SFTP from root@{sshd.address}"), \
        ship.outcome
    (snap,) = list_snapshots(area)
    assert is_verified(snap)
    restored = f"sqlite:///{tmp_path / 'restored.db'}"
    import_snapshot(snap, restored, domain="demo")
    with tables.connect(restored) as conn:
        got = tables.rows_digest(conn)
    assert got == c.digest("srv1")

    # The master's host now shows another key: the next backup is refused, nothing moves.
    other_key_known_hosts(sshd, kh)
    before_files = files_under(area.parent)
    run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test",
                         "after the host key changed").run_id
    run = c.wait(run_id)
    assert run["state"] == "failed"
    assert "ship_snapshot" in run["error"] and "has changed" in run["error"], run["error"]
    assert sshd.address in run["error"]
    assert sshd.fingerprint(sshd.host_key.with_suffix(".pub")) in run["error"]
    assert files_under(area.parent) == before_files  # not even a .part
    assert c.ledger.holder("backup") is None


def test_fence_over_ssh_stops_a_running_cosprintd_of_the_failed_server(make_cluster, sshd):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=1000, up=False)
    home = f"nodes/srv 1 {WEIRD}"  # the remote command must quote it
    edit_nodes(c, srv1={"ssh": sshd.ssh_table(), "home": home})
    assert c.domain.home("srv1").name == f"srv 1 {WEIRD}"
    c.up()
    c.backup()
    # Its COSprint started again by its worker: a fork of the worker's fork server, which
    # shares its command line; fencing must tell the two apart.
    c.driver("srv1").stop()
    check = trigger.run(c.engine, RESTART_CHECK, CheckRequest("srv1"), "test",
                        "restart through the worker").run_id
    assert c.wait(check)["state"] == "succeeded"
    pid = c.driver("srv1").pid()
    assert pid is not None and Path(f"/proc/{pid}/comm").read_text() == "cosprintd\n"
    c.kill_worker("srv1")  # the worker is gone; its host still answers SSH
    started = trigger.run(c.engine, FAILOVER,
                          FailoverRequest(server="srv1", to="bcs1", force=True), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    fence = step_row(c, started.run_id, "fence_server")
    assert fence.outcome == (f"fenced srv1 over SSH (root@{sshd.address}): "
                             f"stopped cosprintd pid {pid} (SIGTERM)"), fence.outcome
    assert c.driver("srv1").pid() is None and c.driver("srv1").status() is None
    assert c.driver("bcs1").status().role == "master"
    assert not list(c.domain.base.rglob("pwned")) and not Path("/root/pwned").exists()


def test_with_spool_moves_1000_pending_jobs_over_sftp_through_a_killed_transfer(
        make_cluster, sshd):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=1000, up=False)
    edit_nodes(c, srv1={"host": "127.0.0.1", "ssh": sshd.ssh_table()})
    c.up()
    c.backup()  # bcs1 pulls it from srv1's host over SFTP
    ids = spool_pending_jobs(c, 1000, big=24 * 1024 * 1024)
    c.kill_worker("srv1")  # srv1 is down now: worker and COSprint
    bcs_spool = c.domain.spool_dir("bcs1")
    big_part = bcs_spool / "zz-big-job.job.part"
    before = sshd.accepted()

    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1",
                                                       with_spool=True), "test")
    # Kill the SFTP session in the middle of the big job's copy, the last one.
    deadline = time.time() + 60
    while (size_of(big_part) or 0) < 1024 * 1024:
        assert time.time() < deadline, "the big job's copy never started"
        time.sleep(0.002)
    assert sshd.kill_sessions()
    assert not (bcs_spool / "zz-big-job.job").exists()  # nothing complete-looking
    states = set()
    while c.ledger.run(started.run_id)["state"] == "running":
        states.add(step_row(c, started.run_id, "copy_spool").state)
        time.sleep(0.005)
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    copy = step_row(c, started.run_id, "copy_spool")
    assert copy.node == "bcs1"
    assert "retrying" in states, states  # the step's retry completed it
    assert sshd.accepted() >= before + 2
    # The retry skipped what the first attempt had finished and resumed the big job.
    facts = copy.facts
    assert (facts["files"], facts["copied"] + facts["skipped"], facts["resumed"]) == \
        (1001, 1001, 1), facts
    assert facts["skipped"] > 0 and facts["bytes"] > 0, facts
    assert copy.outcome.startswith(f"copied {facts['copied']} spool file(s) ") and \
        f"of srv1 to bcs1 over SFTP from root@{sshd.address}" in copy.outcome and \
        f"{facts['skipped']} already there, 1 resumed" in copy.outcome, copy.outcome
    assert not big_part.exists()

    printed = wait_all_printed(c, "bcs1", ids)
    mine = [j["job_id"] for j in printed if j["job_id"] in set(ids)]
    assert len(mine) == len(set(mine)) == 1001  # each printed once
    assert len(list_spool(c.domain.spool_dir("srv1"))) == 1001  # the source is untouched


def test_with_a_shared_spool_nothing_is_copied_and_the_jobs_print_on_the_bcs(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=0, objects=1000, up=False)
    edit_nodes(c, srv1={"shared_spool": "shared spool"}, bcs1={"shared_spool": "shared spool"})
    shared = c.domain.spool_dir("bcs1")
    assert shared == c.domain.spool_dir("srv1") == c.domain.base / "shared spool"
    c.up()
    c.backup()
    ids = spool_pending_jobs(c, 1000)
    c.kill_worker("srv1")
    r = c.cli("failover", "srv1", "--to", "bcs1", "--with-spool", "--yes", "--wait", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    assert run["state"] == "succeeded", run["error"]
    assert run["params"]["request"]["with_spool"] is True
    copy = step_row(c, run["id"], "copy_spool")
    assert copy.outcome == (f"spool of srv1 is shared with bcs1 ({shared}): nothing to copy; "
                            "1000 pending job file(s) there print on bcs1"), copy.outcome
    assert copy.facts["copied"] == 0
    printed = wait_all_printed(c, "bcs1", ids)
    assert len([j for j in printed if j["job_id"] in set(ids)]) == 1000
    assert list_spool(shared) == []
