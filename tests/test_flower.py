"""`cosfail flower` on real Redis and real workers: a failover's steps in Flower's task
list, a failed step retried through Flower's own `async-apply`, and the Retry button in a
real headless Chromium."""

from __future__ import annotations

import ast
import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ARTIFACTS, Cluster, FlowerServer
from cosfail.cosprint.designation import Designation
from cosfail.workers.app import PROBE_TASK
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest

RESTORE = "cosfail.failover.restore_snapshot"

# The pre-failover hook below runs after the plan was made (it chose these snapshots,
# each verified) and before the run starts: it damages every snapshot on the BCS, in the
# middle of the file, as a disk would. The restore step then finds no candidate that
# verifies, and the run fails there.
CORRUPT = """\
import pathlib, sys
for snap in pathlib.Path(sys.argv[1]).glob("*.snap"):
    with open(snap, "r+b") as f:
        f.seek(snap.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
"""


def fail_at_restore(c: Cluster, tmp: Path) -> tuple[str, dict[Path, bytes]]:
    """A backup, srv1 lost, then a failover that fails at its restore step because every
    snapshot on bcs1 was damaged after the plan; returns the run id and the good bytes."""
    c.backup()
    area = c.domain.backup_area("bcs1")
    good = {p: p.read_bytes() for p in area.glob("*.snap")}
    assert good
    script = tmp / "corrupt.py"
    script.write_text(CORRUPT)
    hook = json.dumps([sys.executable, str(script), str(area)])
    c.amend_domain(append=f"\n[hooks]\npre_failover = {hook}\n")  # read by the trigger
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "failed", run
    assert "restore_snapshot" in run["error"] and "no candidate snapshot verifies" in run["error"]
    return started.run_id, good


def restore_row(c: Cluster, run_id: str):  # type: ignore[no-untyped-def]
    [row] = [s for s in c.ledger.steps(run_id) if s.task == RESTORE]
    return row


def assert_failed_over(c: Cluster, run_id: str, objects: int) -> None:
    """What an undisturbed failover of srv1 to bcs1 ends in (tests/test_failover.py)."""
    run = c.wait(run_id)
    assert run["state"] == "succeeded", run["error"]
    for node in ("bcs1", "cl1", "cl2"):
        counts = c.hosted(node)
        assert counts == {"bcs1": objects}, (node, counts)
        st = c.driver(node).status()
        assert (st.master, st.epoch) == ("bcs1", 2), node
    assert c.driver("bcs1").status().role == "master"
    assert c.authority() == Designation("bcs1", 2)
    assert [r["id"] for r in c.ledger.runs(workflow="failover")] == [run_id]  # one run
    assert all(s.state in ("succeeded", "skipped") for s in c.ledger.steps(run_id))
    assert c.ledger.holder("hosting") is None


def test_flower_needs_credentials_and_lists_each_step_with_run_step_and_node(
        make_cluster, flower, tmp_path):
    c = make_cluster(servers=1, bcs=1, clients=2, objects=1000)
    c.settle()
    fl: FlowerServer = flower(c)
    anon = httpx.Client(base_url=fl.url, timeout=10)
    wrong = httpx.Client(base_url=fl.url, timeout=10, auth=(fl.auth[0], "wrong"))
    for client in (anon, wrong):
        for method, path in [("GET", "/"), ("GET", "/tasks"), ("GET", "/api/tasks"),
                             ("POST", "/api/task/async-apply/" + RESTORE),
                             ("POST", "/cosfail/retry/x"), ("GET", "/cosfail/run/x")]:
            r = client.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code)
    assert anon.get("/").headers["WWW-Authenticate"].startswith("Basic")

    run_id, good = fail_at_restore(c, tmp_path)
    failed = restore_row(c, run_id)
    assert failed.state == "failed" and failed.task_id
    shown = fl.wait_task(failed.task_id, "FAILURE")
    assert "no candidate snapshot verifies on bcs1" in shown["exception"]

    # Every step that ran is in Flower's task list, its kwargs naming run, step and node.
    ran = [s for s in c.ledger.steps(run_id) if s.task_id]
    tasks = fl.tasks(search=run_id)
    for s in ran:
        assert s.task_id in tasks, s
        kwargs = ast.literal_eval(tasks[s.task_id]["kwargs"])
        env = kwargs["run"]
        assert (env["run_id"], env["workflow"], env["index"], env["node"]) == \
            (run_id, "failover", s.idx, s.node)
        assert env["name"] == s.name
        assert tasks[s.task_id]["name"] == s.task
    assert tasks[failed.task_id]["state"] == "FAILURE"

    # The retry handler refuses, with a reason, what is not a failed cosfail step.
    r = fl.client.post("/cosfail/retry/no-such-task")
    assert r.status_code == 404 and "not a step of any cosfail run" in r.json()["error"]
    done = next(s for s in ran if s.state == "succeeded" and not s.member)
    r = fl.client.post(f"/cosfail/retry/{done.task_id}")
    assert r.status_code == 409, r.text
    assert f"{done.name} on" in r.json()["error"] and "succeeded, not failed" in r.json()["error"]
    # A page of another site cannot make a logged-in browser retry (Flower's own check).
    r = fl.client.post(f"/cosfail/retry/{failed.task_id}",
                       headers={"Origin": "http://elsewhere.example"})
    assert r.status_code == 403 and restore_row(c, run_id).state == "failed"
    probe = next(iter(fl.tasks(taskname=PROBE_TASK)))
    assert fl.client.post(f"/cosfail/retry/{probe}").status_code == 404

    # Fix the fault, then re-apply the failed step through Flower's own API with its
    # original arguments, the ledger's JSON copy (not Flower's display of them).
    for p, data in good.items():
        p.write_bytes(data)
    run = c.ledger.run(run_id)
    kwargs = {"run": {**failed.envelope, "launch": run["launch"]}, "step": failed.input}
    r = fl.client.post(f"/api/task/async-apply/{RESTORE}", json={"kwargs": kwargs})
    assert r.status_code == 200, r.text
    retried = r.json()["task-id"]
    deadline = time.time() + 30  # the run stays `failed` until bcs1's worker takes it
    while restore_row(c, run_id).task_id != retried:
        assert time.time() < deadline, "the re-applied step never began"
        time.sleep(0.05)
    assert_failed_over(c, run_id, objects=1000)
    again = restore_row(c, run_id)
    assert (again.task_id, again.attempt, again.state) == (retried, 2, "succeeded")
    assert c.ledger.run(run_id)["launch"] == run["launch"]  # the same launch, continued
    fl.wait_task(retried, "SUCCESS")


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def chromium(tmp_path):  # type: ignore[no-untyped-def]
    """Debian's headless Chromium driven by selenium through Debian's chromedriver."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), \
            f"{binary} missing: apt-get install chromium chromium-driver (.ci/run does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_retry_button_on_the_failed_steps_page_resumes_the_run(make_cluster, flower,
                                                                chromium, tmp_path):
    import base64

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    c = make_cluster(servers=1, bcs=1, clients=2, objects=1000)
    c.settle()
    fl: FlowerServer = flower(c)
    run_id, good = fail_at_restore(c, tmp_path)
    failed = restore_row(c, run_id)
    fl.wait_task(failed.task_id, "FAILURE")
    for p, data in good.items():
        p.write_bytes(data)

    # Log in: Flower's basic auth, sent by the browser with every request of the page.
    token = base64.b64encode(":".join(fl.auth).encode()).decode()
    chromium.execute_cdp_cmd("Network.enable", {})
    chromium.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                             {"headers": {"Authorization": f"Basic {token}"}})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium.get(f"{fl.url}/task/{failed.task_id}")
    wait = WebDriverWait(chromium, 30)
    button = wait.until(ec.element_to_be_clickable((By.ID, "cosfail-retry")))
    note = chromium.find_element(By.ID, "cosfail-note").text
    assert run_id in note and "restore_snapshot on bcs1" in note and "failed" in note
    chromium.save_screenshot(str(ARTIFACTS / "flower-failed-step.png"))
    button.click()
    wait.until(ec.url_contains(f"/cosfail/run/{run_id}"))
    WebDriverWait(chromium, 60).until(
        lambda d: d.find_element(By.ID, "run-state").text == "succeeded")
    rows = chromium.find_elements(By.CSS_SELECTOR, "tr.step")
    assert rows and all(r.get_attribute("data-state") in ("succeeded", "skipped") for r in rows)
    chromium.save_screenshot(str(ARTIFACTS / "flower-run-retried.png"))

    assert_failed_over(c, run_id, objects=1000)
    assert restore_row(c, run_id).attempt == 2
    # The task retried is now an earlier attempt of its step: a second retry is refused.
    r = fl.client.post(f"/cosfail/retry/{failed.task_id}")
    assert r.status_code == 404 and "earlier attempt" in r.json()["error"]
