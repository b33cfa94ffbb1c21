"""`cosfail demo` end to end, as a newcomer runs it: a real subprocess, its JSON summary."""

from __future__ import annotations

import json

from conftest import run_cli


def test_demo_fails_over_loses_no_job_and_ends_with_the_original_master(tmp_path):
    done = run_cli("demo", "--json", "--directory", str(tmp_path / "demo"), "--objects", "2000",
                   timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
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
