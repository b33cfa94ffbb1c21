"""The operator's command line as one meets it first: its version, where -d goes, shell
completion, and text from runs printed as written."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from conftest import run_cli
from cosfail.launcher.demo_domain import init_demo

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
    script = run_cli("--show-completion", "bash")
    assert "complete -o default -F _cosfail_completion cosfail" in script.stdout


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
