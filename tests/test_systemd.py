"""deploy/systemd: every unit parses for systemd, and its ExecStart runs.

`systemd-analyze verify` reads each unit (templates as `NAME@srv1.service`) with the
install path /opt/cosfail/bin/ pointing at this venv's scripts: it must say nothing.
Then each unit's ExecStart is started natively on a loopback demo domain standing in
for /etc/cosfail/domain.toml, and must become healthy (`cosfail health`, or the
cosprintd's own /status).
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, RedisServer, run_cli
from cosfail.cosprint.domain import load_domain
from cosfail.cosprint.drivers import driver_for
from cosfail.launcher.demo_domain import init_demo
from cosfail.workflows.engine import Engine
from cosfail.workflows.state import current_state

UNITS = REPO / "deploy" / "systemd"
INSTALL_BIN = "/opt/cosfail/bin/"
SITE_DOMAIN = "/etc/cosfail/domain.toml"
BIN = str(Path(sys.executable).parent) + "/"
# unit (an instance of a template) → the `cosfail health` arguments that say it runs
HEALTH = {
    "cosprintd@srv1.service": None,  # no cosfail health component: its /status answers
    "cosfail-worker@srv1.service": ["worker", "--node", "srv1"],
    "cosfail-control.service": ["control"],
    "cosfail-beat.service": ["beat"],
    "cosfail-api.service": ["api"],
    "cosfail-flower.service": ["flower"],
    "cosfail-watch.service": ["watch"],
}


def unit_file(unit: str) -> Path:
    name, at, _instance = unit.partition("@")
    return UNITS / (f"{name}@.service" if at else unit)


def service_section(unit: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit_file(unit).read_text())
    return parser["Service"]


def test_every_unit_in_deploy_is_one_this_test_runs():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(
        unit_file(u).name for u in HEALTH)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", list(HEALTH))
def test_the_unit_parses_for_systemd_without_a_word(unit: str, tmp_path: Path):
    for f in UNITS.glob("*.service"):
        (tmp_path / f.name).write_text(f.read_text().replace(INSTALL_BIN, BIN))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],  # noqa: S603, S607
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done


def test_every_units_execstart_runs_and_becomes_healthy(redis_server: RedisServer,
                                                        tmp_path: Path):
    path = init_demo(tmp_path / "site", servers=1, bcs=1, clients=1, objects=100,
                     broker=redis_server.url)
    domain = load_domain(path)
    current_state(Engine(domain))  # what `cosfail db upgrade` leaves on a new site
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for unit, health in HEALTH.items():  # cosprintd first: the worker finds it running
            section = service_section(unit)
            argv = [a.replace("%i", unit.partition("@")[2].removesuffix(".service"))
                     .replace(INSTALL_BIN, BIN).replace(SITE_DOMAIN, str(path))
                    for a in shlex.split(section["ExecStart"])]
            env = dict(os.environ)
            for assignment in section.get("Environment", "").split():
                k, _, v = assignment.partition("=")
                env[k] = v.replace(SITE_DOMAIN, str(path))
            with open(tmp_path / f"{unit}.log", "wb") as log:
                procs[unit] = subprocess.Popen(argv, env=env, stdout=log,  # noqa: S603
                                               stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 60
            while not healthy(domain, health, path):
                log_tail = (tmp_path / f"{unit}.log").read_text()[-2000:]
                assert procs[unit].poll() is None, f"{unit} exited: {log_tail}"
                assert time.time() < deadline, f"{unit} not healthy: {log_tail}"
                time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        driver_for(domain, "srv1").stop()


def healthy(domain, health: list[str] | None, path: Path) -> bool:  # type: ignore[no-untyped-def]
    if health is None:
        return driver_for(domain, "srv1").status() is not None
    return run_cli("health", *health, "-d", str(path), timeout=60).returncode == 0
