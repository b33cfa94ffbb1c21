"""The Celery app of a process that runs several domains in turn (tests, benchmarks)."""
from __future__ import annotations

from pathlib import Path

import redis
from conftest import RedisServer
from cosfail.cosprint.domain import load_domain
from cosfail.launcher.demo_domain import init_demo
from cosfail.workers.app import configure, key_prefix


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
        depth = {url: redis.Redis.from_url(url).llen(key_prefix("demo") + "probe.moved")
                 for url in (redis_server.url, other.url)}
        assert depth == {redis_server.url: 1, other.url: 1}
    finally:
        redis.Redis.from_url(redis_server.url).delete(key_prefix("demo") + "probe.moved")
        other.stop()


def test_two_domains_on_one_broker_keep_their_queues_apart(redis_server: RedisServer,
                                                           tmp_path: Path) -> None:
    """The same queue name in two domains is two Redis lists, each under its domain's
    prefix; a domain reconfigured in the same process publishes under the new one."""
    first = load_domain(init_demo(tmp_path / "a", broker=redis_server.url))
    second_path = init_demo(tmp_path / "b", broker=redis_server.url)
    second_path.write_text(second_path.read_text().replace('name = "demo"', 'name = "other"', 1))
    second = load_domain(second_path)
    assert second.control.name == "other"
    client = redis.Redis.from_url(redis_server.url)
    try:
        configure(first).send_task("cosfail.probe", queue="node.srv1")
        configure(second).send_task("cosfail.probe", queue="node.srv1")
        configure(second).send_task("cosfail.probe", queue="node.srv1")
        assert (client.llen("cosfail.demo.node.srv1"), client.llen("cosfail.other.node.srv1"),
                client.llen("node.srv1")) == (1, 2, 0)
    finally:
        client.delete("cosfail.demo.node.srv1", "cosfail.other.node.srv1")
