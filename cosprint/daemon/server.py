"""The service's HTTP interface on <its host's address>:<node.port>: GET /status and /jobs, POST
/jobs and /failsafe."""

from __future__ import annotations

import json
import logging
import os
import selectors
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cosfail.cosprint.daemon.service import MAX_HOPS, Service

log = logging.getLogger("cosprintd")

MAX_BODY = 32 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    server: CosprintServer
    server_version = "cosprintd/0.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        svc = self.server.service
        if self.path == "/status":
            self.reply(200, svc.status())
        elif self.path == "/jobs":
            self.reply(200, svc.job_counts())
        else:
            self.reply(404, {"error": f"{svc.node}: no such path {self.path!r}"})

    def do_POST(self) -> None:  # noqa: N802
        svc = self.server.service
        if self.path not in ("/jobs", "/failsafe"):
            self.reply(404, {"error": f"{svc.node}: no such path {self.path!r}"})
            return
        body = self.read_json()
        if body is None:
            return
        if self.path == "/failsafe":
            self.reply(*svc.failsafe(body))
            return
        try:
            hops = int(self.headers.get("X-COSprint-Hops", "0"))
        except ValueError:
            hops = MAX_HOPS
        try:
            code, answer = svc.submit(body, hops)
        except Exception:
            log.exception("job submission failed on %s", svc.node)
            code, answer = (
                500,
                {"error": f"{svc.node}: internal error (see its log)", "retriable": True},
            )
        self.reply(code, answer)

    def read_json(self) -> dict[str, Any] | None:
        node = self.server.service.node
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.reply(411, {"error": f"{node}: Content-Length required"})
            return None
        if length > MAX_BODY:
            self.reply(413, {"error": f"{node}: job larger than {MAX_BODY} bytes"})
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.reply(400, {"error": f"{node}: body must be a JSON object"})
            return None
        return body

    def reply(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # /status is polled many times a second; only failed requests are worth a line.
        code = getattr(code, "value", code)
        if isinstance(code, int) and code >= 400:
            log.info("%s %r -> %d", self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.client_address[0], format % args)


class CosprintServer(ThreadingHTTPServer):
    daemon_threads = False  # a graceful stop lets in-flight requests finish
    block_on_close = True

    def __init__(self, service: Service, address: str, port: int) -> None:
        self.service = service
        self._wake_r, self._wake_w = os.pipe()  # first: a failed bind calls server_close()
        super().__init__((address, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer's own also looks up the address's FQDN (a resolver round trip, tens
        # of ms on a start) for a name that nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def serve_until_stopped(self) -> None:
        """Answer requests until stop_serving(), which wakes it at once: serve_forever
        would notice a shutdown only at its next poll tick, and a stop is on the
        failover's critical path."""
        self.timeout = 0  # handle_request() takes the connection select() saw, never waits
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not any(key.fd == self._wake_r for key, _ in sel.select()):
                self.handle_request()

    def stop_serving(self) -> None:
        os.write(self._wake_w, b"\0")

    def server_close(self) -> None:
        super().server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
