"""The Celery app of a process that runs several domains in turn (tests, benchmarks)."""
from __future__ import annotations

from pathlib import Path

import redis
from conftest import RedisServer
from cosfail.cosprint.domain import load_domain
from cosfail.launcher.demo_domain import init_demo
from cosfail.workers.app import configure


def test_a_process_configured_for_another_domain_publishes_to_that_domains_broker(
        redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "other-broker").mkdir()
    other = RedisServer(tmp_path / "other-broker")
    other.start()
    try:
        first = load_domain(init_demo(tmp_path / "a", broker=redis_server.url))
        second = load_domain(init_demo(tmp_path / "b", broker=other.url))
        configure(first).send_task("cosfail.probe", queue="probe.moved")
        configure(second).send_task("cosfail.probe", queue="probe.moved")
        depth = {url: redis.Redis.from_url(url).llen("probe.moved")
                 for url in (redis_server.url, other.url)}
        assert depth == {redis_server.url: 1, other.url: 1}
    finally:
        redis.Redis.from_url(redis_server.url).delete("probe.moved")
        other.stop()
