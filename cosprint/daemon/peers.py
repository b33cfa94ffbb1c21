"""Requests to a cosprintd, from another (forwarded jobs, failsafe questions) or from
its driver (jobs, status)."""

from __future__ import annotations

import functools
import http.client
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.request


@functools.cache
def opener() -> urllib.request.OpenerDirector:
    import urllib.request  # at the first request, not at start: costly imports

    # Traffic between nodes must never go through an http_proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):  # noqa: N818 (a condition, not a programming error)
    """The peer did not answer; the message says why."""


def post_json(url: str, body: dict[str, Any], timeout: float,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST `body` to `url`: the peer's status code and JSON answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with opener().open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json_or_text(exc.read())
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None


def json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:500]}
    return answer if isinstance(answer, dict) else {"error": str(answer)}
