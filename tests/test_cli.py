"""The operator's command line as one meets it first: its version, where -d goes, shell
completion, and text from runs printed as written."""

from __future__ import annotations

import json
import re
import time
from importlib.metadata import version
from pathlib import Path

from conftest import free_port, run_cli
from cosfail.cosprint.domain import load_domain
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.local import LocalDomain
from cosfail.workers.app import check_broker
from cosfail.workflows.metrics import render

WIDE = {"COLUMNS": "400"}  # Rich wraps at 80 columns off a terminal


def test_version_prints_the_installed_version():
    r = run_cli("--version")
    assert (r.returncode, r.stdout) == (0, f"cosfail {version('cosfail')}\n"), r.stderr


def test_the_domain_file_may_be_given_before_the_command_and_after_it_wins(tmp_path: Path):
    path = init_demo(tmp_path / "dom", objects=10)
    before = run_cli("-d", str(path), "check", "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["file"] == str(path)
    after = run_cli("-d", str(tmp_path / "nowhere.toml"), "check", "--json", "-d", str(path))
    assert after.returncode == 0, after.stderr
    missing = run_cli("-d", str(tmp_path / "nowhere.toml"), "check")
    assert missing.returncode == 2
    assert "nowhere.toml" in missing.stderr, missing.stderr


def test_bash_completion_completes_a_command():
    r = run_cli(env={"_COSFAIL_COMPLETE": "complete_bash", "COMP_WORDS": "cosfail sta",
                     "COMP_CWORD": "1"})
    assert r.stdout.split() == ["status"], (r.stdout, r.stderr)


def test_text_from_a_run_that_looks_like_markup_prints_as_written(make_cluster):
    """A post_failover hook fails with brackets in its message: the live view, `runs` and
    `run` print it as written instead of crashing on it as Rich markup."""
    c = make_cluster(servers=1, bcs=1, clients=1, objects=100)
    c.settle()
    c.backup()
    said = "closing [/] has nothing [bold]to close"
    hook = json.dumps(["sh", "-c", f"echo '{said}' >&2; exit 4"])
    c.amend_domain(append=f"\n[hooks]\npost_failover = {hook}\n")
    domain = str(c.domain.path)
    live = run_cli("failover", "srv1", "--to", "bcs1", "--force", "--yes", "--wait",
                   "-d", domain, env=WIDE)
    assert live.returncode == 1, (live.stdout, live.stderr)
    assert "MarkupError" not in live.stderr, live.stderr
    assert f"post_failover hook exited 4: {said}" in live.stdout, live.stdout
    [failed] = c.ledger.runs(workflow="failover")
    assert failed["state"] == "failed"
    for args in (("runs",), ("run", failed["id"])):
        shown = run_cli(*args, "-d", domain, env=WIDE)
        assert shown.returncode == 0, shown.stderr
        assert said in shown.stdout, shown.stdout
    status = run_cli("status", "-d", domain, env=WIDE)  # its styles are Text spans now
    assert status.returncode == 0, status.stderr
    assert "master bcs1, epoch 2" in status.stdout, status.stdout
    assert "bcs1: " in status.stdout and " s old)" in status.stdout, status.stdout


def copy_with(path: Path, name: str, pattern: str, value: str) -> Path:
    """The domain file beside `path` as `name`, the value that `pattern` matches replaced:
    the same domain, seen through a URL with nothing behind it."""
    text = path.read_text()
    changed, found = re.subn(pattern, lambda m: m.group(1) + json.dumps(value), text,
                             count=1, flags=re.M)
    assert found, pattern
    copy = path.with_name(name)
    copy.write_text(changed)
    return copy


def test_status_shows_what_it_reaches_with_the_broker_or_the_ledger_down_and_exits_3(
        make_cluster, tmp_path: Path):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=100)
    c.settle()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    no_broker = copy_with(c.domain.path, "no-broker.toml", r'^(broker = ).*$', dead)
    r = run_cli("status", "--json", "-d", str(no_broker))
    assert r.returncode == 3, r.stderr
    st = json.loads(r.stdout)
    assert st["unreachable"]["broker"].startswith(f"broker {dead} does not answer"), st
    assert {n["worker"] for n in st["nodes"]} == {"unknown"}
    srv1 = next(n for n in st["nodes"] if n["name"] == "srv1")
    assert (srv1["cosprint"], srv1["points_at"]) == ("up", "srv1@1"), srv1
    assert (st["master"], st["epoch"]) == ("srv1", 1)  # the ledger still answers
    human = run_cli("status", "-d", str(no_broker), env=WIDE)
    assert human.returncode == 3
    assert f"broker unreachable: broker {dead} does not answer" in human.stdout, human.stdout

    gone = f"sqlite:///{tmp_path}/gone/ledger.db"
    no_ledger = copy_with(c.domain.path, "no-ledger.toml", r'^(\[ledger\]\nurl = ).*$', gone)
    r = run_cli("status", "--json", "-d", str(no_ledger))
    assert r.returncode == 3, r.stderr
    st = json.loads(r.stdout)
    assert st["unreachable"]["ledger"].startswith("ledger does not answer: "), st
    assert "broker" not in st["unreachable"]
    assert (st["master"], st["backups"]) == (None, {})
    srv1 = next(n for n in st["nodes"] if n["name"] == "srv1")
    assert (srv1["worker"], srv1["cosprint"], srv1["points_at"]) == ("up", "up", "srv1@1")
    human = run_cli("status", "-d", str(no_ledger), env=WIDE)
    assert "master unknown (the ledger does not answer)" in human.stdout, human.stdout
    assert not (tmp_path / "gone").exists()  # nothing made on the way


def test_a_paused_domain_skips_beats_backups_saying_why_while_operator_commands_run(
        make_cluster):
    """Paused, every backup beat sends is recorded as skipped, naming the pause; status
    shows it; an operator's backup runs and is told the domain is paused. Unpaused,
    beat's next backup runs."""
    c = make_cluster(servers=1, bcs=1, clients=1, objects=100)
    c.settle()
    c.amend_domain({"backup_interval": 1.0})
    paused = run_cli("pause", "--reason", "printer move [floor 2]", "--json",
                     "-d", str(c.domain.path))
    assert paused.returncode == 0, paused.stderr
    first = json.loads(paused.stdout)
    assert first["began"] and first["paused"]["reason"] == "printer move [floor 2]"
    again = json.loads(c.cli("pause", "--reason", "other", "--json", check=True).stdout)
    assert (again["began"], again["paused"]) == (False, first["paused"])  # the first stands

    c.local.start_beat()
    skipped = poll_runs(c, lambda r: r["triggered_by"] == "beat", 3)
    assert all(r["state"] == "skipped" for r in skipped), skipped
    assert all("the domain is paused (by cli:" in r["reason"] and "[floor 2]" in r["reason"]
               for r in skipped), skipped
    assert c.ledger.catalog("bcs1") == []
    st = json.loads(c.cli("status", "--json", check=True).stdout)
    assert st["paused"] == first["paused"]
    human = run_cli("status", "-d", str(c.domain.path), env=WIDE)
    assert "PAUSED: automatic failover and scheduled backups are off: the domain is paused" \
        in human.stdout, human.stdout
    assert "\ncosfail_domain_paused 1.0\n" in render(c.engine)

    mine = c.cli("backup", "--wait")
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "cosfail: note: the domain is paused (by cli:" in mine.stderr, mine.stderr
    assert len(c.ledger.catalog("bcs1")) == 1

    assert "unpaused: the pause by cli:" in c.cli("unpause", check=True).stdout
    assert c.cli("unpause", check=True).stdout.strip() == "not paused: nothing to do"
    assert "\ncosfail_domain_paused 0.0\n" in render(c.engine)
    ran = poll_runs(c, lambda r: r["triggered_by"] == "beat" and r["state"] != "skipped", 1)
    assert c.wait(ran[0]["id"])["state"] == "succeeded"


def poll_runs(c, which, count: int, timeout: float = 30.0) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    """The first `count` backup runs that `which` picks, once there are that many."""
    deadline = time.time() + timeout
    while len(found := [r for r in c.ledger.runs(limit=200, workflow="backup") if which(r)]) \
            < count:
        assert time.time() < deadline, f"{len(found)} of {count} runs: {found}"
        time.sleep(0.1)
    return found[:count]


def test_init_demo_gives_each_domain_a_broker_of_its_own_that_local_up_starts(tmp_path: Path):
    brokers = []
    for name in ("a", "b"):
        done = run_cli("init-demo", str(tmp_path / name), "--objects", "10")
        assert done.returncode == 0, done.stderr
        brokers.append(load_domain(tmp_path / name / "domain.toml").broker_url)
    assert brokers[0] != brokers[1] and not any(b.endswith(":6379/0") for b in brokers)
    local = LocalDomain(load_domain(tmp_path / "a" / "domain.toml"))
    started = local.ensure_broker()  # what `cosfail local up` does first
    try:
        assert started is not None and started.alive()
        check_broker(brokers[0], timeout=2.0)
    finally:
        local.stop_components([started] if started else [])
