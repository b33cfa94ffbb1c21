"""`cosprintd`: the reference COSprint service, one real process per node.

The command line, and the life of one service process: it refuses to start beside a
running one, serves until SIGTERM/SIGINT, then drains what it accepted.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from cosfail.cosprint import forkserver, logs
from cosfail.cosprint.daemon.identity import LOGFILE, PIDFILE, READY, is_cosprintd, read_pid
from cosfail.cosprint.daemon.server import CosprintServer
from cosfail.cosprint.daemon.service import Service
from cosfail.cosprint.daemon.settings import Settings, with_packages
from cosfail.cosprint.errors import CosfailError, DriverError
from cosfail.cosprint.fsutil import atomic_write_bytes

log = logging.getLogger("cosprintd")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _setup_logging(path: Path, node: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if logs.wanted() == "json":
        with_packages()  # the JSON formatter's
    # The driver sends stderr to the same file: echoed only to a terminal, not doubled.
    logs.setup(node, file=path, echo=sys.stderr.isatty())


def _refuse_if_running(path: Path, settings: Settings) -> None:
    other = read_pid(path)
    if other and other != os.getpid() and is_cosprintd(other, settings.node,
                                                       settings.domain_file):
        raise DriverError(f"node {settings.node}: cosprintd already running as pid {other}")


def _release_pidfile(path: Path) -> None:
    if read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def _bind(service: Service, address: str, port: int) -> CosprintServer:
    try:
        return CosprintServer(service, address, port)  # binds now: a busy port fails fast
    except OSError as exc:
        raise DriverError(
            f"node {service.node}: cannot listen on {address}:{port}: {exc.strerror or exc}"
        ) from None


def _say_ready(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, READY)
    except OSError:  # the starter is gone: nobody to tell
        pass
    finally:
        os.close(fd)


def serve(settings: Settings, ready_fd: int | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit status."""
    # First, and inherited by every thread: the stop signals wait for sigwait() below, so a
    # stop is seen the moment it comes (a handler runs only when the main thread wakes,
    # whichever thread the kernel picked), and one during startup is graceful once started.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    port = settings.port
    pidfile = settings.home / PIDFILE
    stop = threading.Event()
    _refuse_if_running(pidfile, settings)
    service = Service(settings, stop)
    server = _bind(service, settings.listen, port)
    try:
        # Written only once the port is ours: of two racing starts, the loser never
        # touches the winner's pidfile.
        atomic_write_bytes(pidfile, f"{os.getpid()}\n".encode())
        service.spool.mkdir(parents=True, exist_ok=True)
        service.load_printed()
        state = service.keeper.refresh(recount=True)  # decided before the first answer
        log.info("started on %s:%d as %s: %s", settings.listen, port, state.role,
                 state.reason)
        threads = [
            threading.Thread(target=server.serve_until_stopped, name="http", daemon=True),
            threading.Thread(target=service.keeper.run, args=(stop,), name="role", daemon=True),
            threading.Thread(target=service.print_loop, name="printer", daemon=True),
            threading.Thread(target=service.keeper.keep_lease, args=(stop,), name="lease",
                             daemon=True),
        ]
        for t in threads:
            t.start()
        _say_ready(ready_fd)
        signal.sigwait(STOP_SIGNALS)
        stop.set()
        log.info("stopping")
        # A request already read may still be on its way to accept(): it is refused now
        # rather than spooled after the drain below (and left unprinted).
        service.close_intake()
        server.stop_serving()
        threads[0].join()
        service.wake.set()
        threads[2].join(timeout=30)  # the printer finishes the job it is on
        # A graceful stop prints what it accepted: a switchover loses no queued job.
        service.print_pending(draining=True)
    finally:
        server.server_close()
        _release_pidfile(pidfile)
    log.info("stopped")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    if args.settings_stdin:
        return _settings_of(args.node, sys.stdin.buffer.read())
    with_packages()
    from cosfail.cosprint.domain import load_domain  # pydantic: only for a start by hand

    return Settings.from_dict(load_domain(args.domain).service_settings(args.node))


def _settings_of(node: str, raw: bytes) -> Settings:
    settings = Settings.from_json(raw)
    if settings.node != node:
        raise CosfailError(f"settings are for node {settings.node!r}, not {node!r}")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cosprintd", description=__doc__.splitlines()[0])
    parser.add_argument("--domain", "-d", default=None, help="domain.toml")
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--settings-stdin", action="store_true",
                        help="read Domain.service_settings as JSON from stdin, not --domain")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="write a line to this fd once serving, then close it")
    parser.add_argument(forkserver.FLAG, type=int, default=None, metavar="FD",
                        help="serve no jobs: fork a service for each start asked for on "
                             "the unix socket FD (see cosprint.forkserver)")
    args = parser.parse_args(argv)
    if args.fork_server is not None:
        return forkserver.serve_forks(args.fork_server, functools.partial(_forked, args.node))
    try:
        settings = _settings(args)
    except CosfailError as exc:
        print(f"cosprintd: {exc}", file=sys.stderr)
        return 2
    return _run(settings, args.ready_fd)


def _forked(node: str, raw: bytes, ready_fd: int) -> int:
    try:
        settings = _settings_of(node, raw)
    except CosfailError as exc:
        print(f"cosprintd: {exc}", file=sys.stderr)
        os.close(ready_fd)
        return flushed(2)
    return flushed(_run(settings, ready_fd))


def _run(settings: Settings, ready_fd: int | None) -> int:
    _setup_logging(settings.home / LOGFILE, settings.node)
    try:
        return serve(settings, ready_fd)
    except CosfailError as exc:
        log.error("%s", exc)
        print(f"cosprintd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        msg = f"node {settings.node}: {exc}"
        log.error("%s", msg)
        print(f"cosprintd: {msg}", file=sys.stderr)
        return 1


def flushed(status: int) -> int:
    """`status`, once what the process wrote is out: its exit skips the interpreter's
    teardown (os._exit)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    return status
