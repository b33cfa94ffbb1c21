"""The pictures of docs/shots/, taken from a real domain: `.venv/bin/python docs/shots.py`.

A demo domain runs (workers, COSprint per node, beat, API, Flower, detector) through a
backup, srv1's loss and its failover, then a pause and a scheduled switchover; then
`cosfail status` and `cosfail history` are drawn as SVG (Rich's own export of what the
terminal shows) and Flower's page of the failover run is photographed by headless
Chromium (Debian's, driven by selenium).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from cosfail.api import view
from cosfail.cosprint.domain import load_domain
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.local import LocalDomain
from cosfail.workers.app import configure
from cosfail.workflows.engine import Engine
from cosfail.workflows.history import history
from cosfail.workflows.status import domain_status
from rich.console import Console

SHOTS = Path(__file__).resolve().parent / "shots"


def cosfail(path: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cosfail.launcher.cli", *args, "-d", str(path)],  # noqa: S603
                   check=True, timeout=300, stdout=subprocess.DEVNULL)


def svg(name: str, renderable: object, title: str) -> None:
    console = Console(record=True, width=150, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    console.save_svg(str(SHOTS / name), title=title)


def flower_page(url: str, auth: str, out: Path, profile: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,900", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {
            "Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}})
        driver.get(url)
        time.sleep(2)  # its tables fill from the ledger
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="cosfail-shots-"))
    path = init_demo(base / "dom", servers=2, bcs=1, clients=2, objects=2000)
    domain = load_domain(path)
    configure(domain)
    local = LocalDomain(domain)
    local.up()
    try:
        cosfail(path, "backup", "--wait")
        local.kill("srv1")
        cosfail(path, "failover", "srv1", "--to", "bcs1", "--yes", "--wait",
                "--reason", "srv1's disk died")
        cosfail(path, "pause", "--reason", "replacing srv1's disk")
        tomorrow = datetime.fromtimestamp(time.time() + 86400).replace(
            hour=2, minute=0, second=0, microsecond=0).astimezone().isoformat()
        cosfail(path, "switchover", "srv2", "--to", "bcs1", "--at", tomorrow, "--yes",
                "--reason", "srv2's disk next")
        eng = Engine(domain)
        SHOTS.mkdir(exist_ok=True)
        svg("status.svg", view.status_view(domain_status(domain, eng)), "cosfail status")
        svg("history.svg", view.history_table(history(eng)), "cosfail history")
        failover = eng.ledger.runs(workflow="failover")[0]["id"]
        auth = domain.resolve(domain.control.flower_auth_file).read_text().strip()
        flower_page(f"http://{domain.control.flower}/cosfail/run/{failover}", auth,
                    SHOTS / "flower-run.png", base / "chromium")
    finally:
        local.down()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
