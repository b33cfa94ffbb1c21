"""`cosfail demo` end to end, as a newcomer runs it: a real subprocess, its JSON summary."""

from __future__ import annotations

import json
import os
import pwd

import pytest
from conftest import run_cli
from cosfail.launcher import hosts


@pytest.mark.parametrize("where", [
    pytest.param([], id="loopback"),
    pytest.param(["--hosts"], id="hosts", marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="network namespaces need root")),
])
def test_demo_fails_over_loses_no_job_and_ends_with_the_original_master(tmp_path, where,
                                                                         request):
    args = ("demo", "--json", "--directory", str(tmp_path / "demo"), "--objects", "2000",
            *where)
    if where:
        done = run_cli(*args, timeout=600)
    else:  # as a newcomer gets it: from the wheel, in a fresh venv
        done = request.getfixturevalue("installed_cosfail").run("cosfail", *args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["hosts"] is bool(where)
    workflows = [(r["workflow"], r["state"]) for r in summary["runs"]]
    assert workflows == [("backup", "succeeded"), ("failover", "succeeded"),
                         ("reclaim", "succeeded"), ("failback", "succeeded")]
    assert summary["failover_completed"] is True
    assert summary["jobs_lost"] == 0
    assert summary["jobs_accepted"] > 50 and summary["jobs_printed"] == summary["jobs_accepted"]
    assert summary["master"] == "srv1"
    assert summary["outage_seconds"] is not None
    local = json.loads((tmp_path / "demo" / "domain" / "run" / "local.json").read_text())
    assert local == {}, "the demo leaves nothing running"
    if where:
        assert hosts.existing_netns(hosts.plan_lab(str(tmp_path / "demo" / "domain"), []).tag) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_demo_on_hosts_refuses_in_one_line_without_root_and_makes_nothing(tmp_path):
    tmp_path.chmod(0o777)
    nobody = pwd.getpwnam("nobody")
    done = run_cli("demo", "--hosts", "--directory", str(tmp_path / "demo"), timeout=60,
                   on=["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                       "--clear-groups"],
                   env={"HOME": str(tmp_path)})
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert "cosfail demo --hosts needs root" in line, line
    assert not (tmp_path / "demo").exists()
