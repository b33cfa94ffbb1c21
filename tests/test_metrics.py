"""/metrics as Prometheus takes it: counters that only grow, real histograms, names its
linter accepts (`promtool check metrics`); the alerts of deploy/prometheus checked and
unit-tested by promtool; and the alerts and the Grafana dashboard of deploy/ asking
only for series the exporter serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from cosfail.cosprint.lease import Outage, outcome_kind
from cosfail.workflows.metrics import OUTAGE_KINDS, render
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "cosfail.json"
PROMETHEUS_OWN = {"up"}  # series Prometheus records of each scrape, not the exporter's
# Series names a family of each type puts in Prometheus (a counter's only with _total).
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
NOT_NAMES = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,  # noqa: S603
                          timeout=60, cwd=PROMETHEUS, check=False)


def lint(text: str) -> None:
    done = promtool("check", "metrics", stdin=text)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


def served(text: str) -> set[str]:
    """The series names a scrape of `text` gives Prometheus; a family's even before it
    has a sample."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in SERIES_SUFFIXES.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def samples(text: str, types: tuple[str, ...] = ("counter", "gauge", "histogram")
            ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) if fam.type in types
            for s in fam.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left of it without strings,
    label matchers, ranges, grouping label lists, functions, keywords and numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return {n for n in re.findall(r"\b[A-Za-z_:][\w:]*\b(?!\s*\()", expr)
            if n.lower() not in NOT_NAMES}


def unserved(exprs: list[str], names: set[str]) -> dict[str, set[str]]:
    """Each expression that names a series `names` lacks, with those it lacks."""
    return {e: missing for e in exprs if (missing := metric_names(e) - names - PROMETHEUS_OWN)}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r for group in doc["groups"] for r in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def queries() -> list[str]:
    return dashboard_exprs() + [r["expr"] for r in alert_rules()]


# ----- pure --------------------------------------------------------------------------------
def test_metric_names_are_read_from_promql_without_functions_labels_or_keywords():
    assert metric_names('histogram_quantile(0.95, sum by (le, workflow) (rate('
                        'cosfail_run_duration_seconds_bucket{workflow="backup"}[1h])))') == \
        {"cosfail_run_duration_seconds_bucket"}
    assert metric_names("(cosfail_lease_remaining_seconds < 0 and cosfail_lease_epoch == "
                        "ignoring(node) group_left() cosfail_epoch) unless cosfail_node_up "
                        "== 1") == {"cosfail_lease_remaining_seconds", "cosfail_lease_epoch",
                                    "cosfail_epoch", "cosfail_node_up"}
    assert metric_names('time() - cosfail_node_down_since_seconds offset 5m') == \
        {"cosfail_node_down_since_seconds"}
    assert all(metric_names(q) for q in queries())  # each query is read, none is skipped


def test_a_query_naming_a_series_the_exporter_does_not_serve_is_reported():
    text = ("# HELP cosfail_runs_finished_total Runs\n"
            "# TYPE cosfail_runs_finished_total counter\n"
            'cosfail_runs_finished_total{state="failed",workflow="backup"} 1.0\n'
            "# HELP cosfail_step_duration_seconds Steps\n"
            "# TYPE cosfail_step_duration_seconds histogram\n")
    exprs = ['increase(cosfail_runs_finished_total{state="failed"}[15m]) > 0',
             "rate(cosfail_step_duration_seconds_bucket[1h])",
             'up{job="cosfail"} == 0',
             "increase(cosfail_run_finished_total[15m])",  # misspelled
             "cosfail_runs_finished",  # a counter's series has _total
             "cosfail_step_duration_seconds"]  # a histogram's has _bucket, _sum, _count
    assert unserved(exprs, served(text)) == {
        "increase(cosfail_run_finished_total[15m])": {"cosfail_run_finished_total"},
        "cosfail_runs_finished": {"cosfail_runs_finished"},
        "cosfail_step_duration_seconds": {"cosfail_step_duration_seconds"}}


def test_the_alerts_pass_promtool_and_their_unit_tests_fire_and_silence_each_one():
    for args in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml"),
                 ("check", "config", "--syntax-only", "prometheus.yml")):
        done = promtool(*args)
        assert done.returncode == 0, (args, done.stdout + done.stderr)
    cases = [case for group in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
             ["tests"] for case in group["alert_rule_test"]]
    for alert in {r["alert"] for r in alert_rules()}:
        outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: a case that fires and one that does not"


def test_every_dashboard_query_parses_as_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_ledger_outage_outcome_is_served_from_the_start():
    outcomes = (Outage(0.0, 1), Outage(0.0, 1, failsafe=True), Outage(0.0, 1, stopped="why"))
    assert {outcome_kind(o.outcome()) for o in outcomes} == set(OUTAGE_KINDS)


# ----- a real domain -----------------------------------------------------------------------
def test_metrics_lint_clean_and_keep_a_resumed_runs_failure_counted(make_cluster):
    """A backup fails (srv1's worker stopped: its step expires), then is resumed to its
    end: the run's state forgets the failure, the counter keeps it; no counter or
    histogram goes down; and every series the alerts and dashboard ask for is served."""
    c = make_cluster(servers=1, bcs=1, clients=0, objects=100, up=False)
    c.amend_domain(control={"step_expires": 2.0})
    c.up()
    failed = c.backup_nobody_takes()
    run_id = failed["id"]
    assert failed["state"] == "failed", failed
    before = render(c.engine)
    lint(before)

    c.engine.resume(run_id)
    assert c.wait(run_id)["state"] == "succeeded"
    after = render(c.engine)
    lint(after)

    b, a = samples(before), samples(after)
    backup_runs = {st: ("cosfail_runs_finished_total", (("state", st), ("workflow", "backup")))
                   for st in ("failed", "succeeded")}
    assert (b[backup_runs["failed"]], a[backup_runs["failed"]]) == (1, 1)
    assert ("backup", "failed") not in c.ledger.run_counts()
    assert c.ledger.run(run_id)["failures"] == 1  # counted by the ledger as it failed
    assert a[backup_runs["succeeded"]] == b[backup_runs["succeeded"]] + 1
    assert a["cosfail_run_duration_seconds_count", (("workflow", "backup"),)] == 1
    assert a["cosfail_verified_snapshots", (("bcs", "bcs1"),)] == 1
    assert a["cosfail_last_verified_backup_age_seconds", (("bcs", "bcs1"),)] >= 0
    grown = samples(before, ("counter", "histogram"))
    assert all(a.get(k, -1) >= v for k, v in grown.items()), \
        {k: (v, a.get(k)) for k, v in grown.items() if a.get(k, -1) < v}

    assert unserved(queries(), served(after)) == {}
