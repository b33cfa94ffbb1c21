"""Health of one running component, for container healthchecks (`cosfail health`)."""

from __future__ import annotations

from cosfail.cosprint.domain import Domain

HEALTH_COMPONENTS = ("worker", "control", "api", "flower", "beat", "broker", "watch")


def local_url(address: str, path: str) -> str:
    """http://HOST:PORT/path for a listening address; a wildcard host means this host."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def http_ok(url: str, timeout: float) -> tuple[bool, str]:
    import httpx

    try:
        # trust_env=False: a health probe of our own service never goes through a proxy
        r = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"GET {url}: {type(exc).__name__}"
    return r.status_code == 200, f"GET {url}: {r.status_code}"


def component_health(d: Domain, component: str, node: str | None,
                      timeout: float) -> tuple[bool, str]:
    if component == "api":
        return http_ok(local_url(d.control.api, "/healthz"), timeout)
    if component == "flower":
        return http_ok(local_url(d.control.flower, "/healthcheck"), timeout)
    from cosfail.workers.app import BrokerUnreachable, check_broker, configure

    try:
        check_broker(d.broker_url, timeout=timeout)
    except BrokerUnreachable as exc:
        return False, str(exc)
    if component in ("beat", "broker"):
        return True, f"broker {d.broker_url} answers"
    if component == "watch":
        from cosfail.workflows.detect import detector_alive

        return detector_alive(d)
    # Only workers named `<node>@…` (`control@…`) are asked, and the first answer ends
    # the wait: a broadcast ping (workflows.liveness.ping) waits out its whole timeout.
    name = node or "control"
    replies = configure(d).control.ping(timeout=timeout, limit=1, pattern=f"{name}@*",
                                        matcher="glob") or []
    answered = [worker for reply in replies for worker in reply]
    if answered:
        return True, f"worker {answered[0]} answers"
    return False, f"no {name} worker answers a ping within {timeout:g} s"
