"""API fuzzing (issue 9, item 7) with schemathesis against a real `cosfail api` process,
from the app's own OpenAPI document.

First without a token and with wrong ones: every route but /healthz answers 401 and
nothing changes (runs, authority, hosting lock). Then with the valid token: whatever is
generated, no 5xx (runs it starts legitimately are fine). Finally: the token appears in
no log file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cosfail.api.app import read_token
from cosfail.workflows import ledger as L

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

MAX_EXAMPLES = 20  # per operation and generation mode
PUBLIC = {"/healthz"}


def _fuzz(schema: Any, send: Callable[[Any], str | None], failures: list[str]) -> int:
    """Every operation, positive then negative data, MAX_EXAMPLES each, deterministic and
    without shrinking. `send(case)` makes the request and returns a failure line or None;
    returns the number of requests made."""
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{mode.value} {operation.label}"
            calls: list[str | None] = []
            try:
                _examples(operation.as_strategy(generation_mode=mode), send, calls)()
            except Unsatisfiable:
                # nothing to make invalid (no parameters, no body): e.g. negative /healthz
                assert mode is GenerationMode.NEGATIVE, label
            sent += len(calls)
            failures += [f"{label}: {problem}" for problem in calls if problem]
    return sent


def _examples(strategy: Any, send: Callable[[Any], str | None],
              calls: list[str | None]) -> Callable[[], None]:
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        calls.append(send(case))

    return run


def _state(c) -> tuple[Any, ...]:  # type: ignore[no-untyped-def]
    runs = c.ledger.runs(limit=1000)
    return (len(runs), sorted(r["id"] for r in runs), c.authority(),
            c.ledger.lock_row(L.HOSTING_LOCK), c.ledger.lock_row(L.BACKUP_LOCK))


def _describe(case: Any, response: Any) -> str:
    body = response.text[:300].replace("\n", " ")
    return (f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200} "
            f"-> {response.status_code} {body}")


def test_fuzzed_requests_no_5xx_no_change_without_token_no_token_in_logs(make_cluster):  # type: ignore[no-untyped-def]
    c = make_cluster(servers=1, bcs=1, clients=1, objects=200)
    c.settle()
    c.start_api()
    comp = c.local.components()["api"]
    token = read_token(c.domain)
    schema = schemathesis.openapi.from_url(f"{comp.url}/openapi.json")
    paths = {r.ok().path for r in schema.get_all_operations()}
    assert {"/healthz", "/failover", "/backup", "/runs/{run_id}/resume"} <= paths, paths
    durations: dict[str, float] = {}
    started = time.time()

    # 1. Anonymous, and with wrong tokens: 401 everywhere but /healthz; nothing changes.
    before = _state(c)
    wrong = ["", "Bearer ", "Bearer wrong", f"Bearer {token[:-1]}", f"Bearer {token}x",
             f"Basic {token}", token]
    counter = iter(range(10**9))

    def anonymous(case: Any) -> str | None:
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
        i = next(counter)
        extra = {} if i % 2 == 0 else {"Authorization": wrong[i // 2 % len(wrong)]}
        response = case.call(base_url=comp.url, headers=extra, timeout=30)
        if case.operation.path in PUBLIC:
            return None if response.status_code < 500 else _describe(case, response)
        if response.status_code != 401:
            return _describe(case, response)
        return None

    failures: list[str] = []
    anon_sent = _fuzz(schema, anonymous, failures)
    assert not failures, "\n".join(failures[:20])
    time.sleep(0.5)  # anything a request might have started would show by now
    assert _state(c) == before, "an unauthenticated request changed the domain"

    # 2. With the valid token: no 5xx, whatever the data. (Negative generation also drops
    #    the Authorization header on purpose, "missing auth": those get 401, rightly.)
    codes: dict[int, int] = {}

    def authorised(case: Any) -> str | None:
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
        response = case.call(base_url=comp.url, headers={"Authorization": f"Bearer {token}"},
                             timeout=60)
        codes[response.status_code] = codes.get(response.status_code, 0) + 1
        if response.status_code == 401 and "Authorization" in response.request.headers:
            return f"valid token refused: {_describe(case, response)}"
        key = case.operation.label
        durations[key] = durations.get(key, 0.0) + float(response.elapsed)
        return _describe(case, response) if response.status_code >= 500 else None

    anon_time, started = time.time() - started, time.time()
    auth_sent = _fuzz(schema, authorised, failures)
    assert not failures, "\n".join(failures[:20])
    assert codes.get(202, 0) > 0 and codes.get(422, 0) > 0, codes
    assert comp.alive(), Path(comp.log).read_text()[-2000:]

    # 3. The token is in no log: the domain's run/ dir (API, workers) and node homes' logs.
    logs = [p for p in Path(comp.log).parent.rglob("*") if p.is_file()]
    for node in c.domain.names():
        logs += [p for p in (c.domain.home(node) / "var" / "log").rglob("*") if p.is_file()]
    assert Path(comp.log) in logs and len(logs) > 2, logs
    leaked = [str(p) for p in logs if token.encode() in p.read_bytes()]
    assert not leaked, f"the API token appears in {leaked}"
    print(f"api fuzz: {anon_sent} anonymous requests in {anon_time:.1f} s, {auth_sent} "
          f"authorised in {time.time() - started:.1f} s (status {sorted(codes.items())}), "
          f"{len(logs)} logs clean; slowest {max(durations.items(), key=lambda kv: kv[1])}")
