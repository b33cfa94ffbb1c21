"""What a driver and a running cosprintd know of each other: the files in a node's
home, the line that says "serving", and how /proc tells a cosprintd of a node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cosfail.cosprint import forkserver

if TYPE_CHECKING:
    from cosfail.cosprint.domain import Domain

# Paths inside a node's home.
PIDFILE = Path("var/cosprintd.pid")
LOGFILE = Path("var/log/cosprintd.log")
READY = b"ready\n"  # written on --ready-fd once the service answers


def pidfile_path(domain: Domain, node: str) -> Path:
    return domain.home(node) / PIDFILE


def log_path(domain: Domain, node: str) -> Path:
    return domain.home(node) / LOGFILE


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_cosprintd(pid: int, node: str, domain_file: Path | None = None) -> bool:
    """True if `pid` is a live cosprintd of `node` (not a zombie, not a reused pid, not
    a fork server).

    With `domain_file`, a process started with an absolute --domain must name that file:
    two domains on one machine may both have a node called srv1.
    """
    proc = Path(f"/proc/{pid}")
    try:
        cmdline, comm = (proc / "cmdline").read_bytes(), (proc / "comm").read_text()
    except OSError:
        return False
    return names_cosprintd(cmdline.decode(errors="replace"), comm, node, domain_file)


# The module a reference driver starts (`python -m`), and the name it had before cosfail
# installed under one package: a cosprintd started before an upgrade is still the node's.
DAEMON_MODULES = frozenset({"cosfail.cosprint.daemon", "cosprint.daemon"})


def names_cosprintd(cmdline: str, comm: str, node: str, domain_file: Path | None) -> bool:
    """Whether a process's /proc `cmdline` and `comm` are those of a cosprintd serving
    `node`: a fork server has its services' command line, but only they rename
    themselves (cosprint.forkserver)."""
    args = cmdline.split("\0")  # a zombie's cmdline is empty
    is_daemon = not DAEMON_MODULES.isdisjoint(args) or any(a.endswith("/cosprintd") for a in args)
    opts = dict(zip(args, args[1:], strict=False))
    if not is_daemon or opts.get("--node") != node:
        return False
    if forkserver.FLAG in args and comm.strip() != forkserver.SERVICE_NAME:
        return False
    other = opts.get("--domain", "")
    return domain_file is None or not os.path.isabs(other) or Path(other) == domain_file
