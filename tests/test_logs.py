"""Log lines with level, node, run and step: as text, as JSON, for journald, and from
real workers running a backup."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from cosfail.cosprint import logs


def line(fmt: str, level: int = logging.INFO, run: tuple[str, str] = ("", "")) -> str:
    record = logging.LogRecord("cosfail.step", level, __file__, 1, "stopped %s", ("cl2",), None)
    logs.in_run(*run)
    try:
        logs.Context("srv1").filter(record)
    finally:
        logs.out_of_run()
    return logs.formatter(fmt).format(record)


def test_each_line_carries_level_node_run_and_step_as_text_or_json(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    text = line("text", run=("r42", "stop_cosprint"))
    assert text.endswith(" INFO cosfail.step node=srv1 run=r42 step=stop_cosprint: stopped cl2")
    doc = json.loads(line("json", logging.WARNING, ("r42", "stop_cosprint")))
    assert {k: doc[k] for k in ("level", "logger", "node", "run_id", "step", "message")} == {
        "level": "WARNING", "logger": "cosfail.step", "node": "srv1", "run_id": "r42",
        "step": "stop_cosprint", "message": "stopped cl2"}
    assert json.loads(line("json"))["run_id"] == ""  # outside a run: there, and empty
    with pytest.raises(ValueError, match="log format 'xml' is not one of text, json"):
        logs.formatter("xml")


def test_a_traceback_stays_on_its_events_line_as_text(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("cosfail.x", logging.ERROR, __file__, 1, "first\nsecond",
                                   None, sys.exc_info())
    logs.Context("bcs1").filter(record)
    text = logs.formatter("text").format(record)
    assert "\n" not in text and "first\\nsecond\\nTraceback" in text, text
    assert "ValueError: bad\\nthing" in text


def test_under_journald_a_text_line_starts_with_its_priority_and_no_time(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert line("text", logging.ERROR).startswith("<3>ERROR cosfail.step node=srv1 run= ")
    assert line("text", logging.WARNING).startswith("<4>WARNING ")


def test_a_bad_log_format_is_refused_naming_the_choices():
    done = run_cli("--log-format", "xml", "check")
    assert done.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in done.stderr.replace("\n", " "), done.stderr


def log_lines(cluster, component: str) -> list[str]:  # type: ignore[no-untyped-def]
    text = Path(cluster.local.components()[component].log).read_text()
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize("new_ledger", ["sqlite"], indirect=True)  # the ledger is not it
def test_workers_log_json_lines_with_the_run_and_step_of_each_task(make_cluster,
                                                                   monkeypatch):
    monkeypatch.setenv("COSFAIL_LOG_FORMAT", "json")  # as --log-format json sets it
    c = make_cluster(servers=1, bcs=1, clients=0, objects=100)
    run_id = c.backup()
    for component, node, step in (("worker:srv1", "srv1", "export_tables"),
                                  ("worker:bcs1", "bcs1", "verify_snapshot")):
        lines = log_lines(c, component)
        docs = [json.loads(ln) for ln in lines]  # every line: one JSON document
        assert all(d["node"] == node and d["level"] in ("INFO", "WARNING") for d in docs)
        mine = [d for d in docs if d["run_id"] == run_id]
        assert any(d["step"] == step and "succeeded" in d["message"] for d in mine), mine
    assert all("run_id" in json.loads(ln) for ln in log_lines(c, "worker:control"))
