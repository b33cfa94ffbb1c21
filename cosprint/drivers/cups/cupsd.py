"""One node's cupsd as a program: its ServerRoot, spool, state and logs under the
node's home, CUPS's own tools run as that node, and the cupsd process itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cosfail.cosprint.domain import CupsSettings, Domain
from cosfail.cosprint.drivers import ipp
from cosfail.cosprint.drivers.base import NodeFiles, children
from cosfail.cosprint.drivers.cups.conf import SINK_SCHEME
from cosfail.cosprint.errors import DriverError
from cosfail.cosprint.fsutil import atomic_write_bytes

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STATUS_TIMEOUT = 0.5
TOOL_TIMEOUT = 30.0
POLL = 0.02


def _tool(name: str) -> str:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    found = shutil.which(name)
    if found:
        return found
    raise DriverError(f"{name} not found: install cups-client and cups-bsd "
                      "(apt-get install cups-daemon cups-client cups-bsd)")


SINK_BACKEND = '''#!{python} -I
# cosfail's sink backend for node {node}: it records each job it is handed, as one
# JSON line in {sink}/<printer>.log, and prints nowhere. Written by the CUPS driver.
import json, os, sys, time

SINK, NODE = {sink!r}, {node!r}
if len(sys.argv) == 1:
    print('direct {scheme} "Unknown" "cosfail sink (records jobs, prints nowhere)"')
    sys.exit(0)
if len(sys.argv) not in (6, 7):
    print("Usage: {scheme} job-id user title copies options [file]", file=sys.stderr)
    sys.exit(1)
job, user, title, copies, options = sys.argv[1:6]
size = 0
src = open(sys.argv[6], "rb") if len(sys.argv) == 7 else sys.stdin.buffer
with src:
    while True:
        chunk = src.read(65536)
        if not chunk:
            break
        size += len(chunk)
printer = os.environ.get("PRINTER", "unknown")
uri = os.environ.get("DEVICE_URI", "")
line = {{"job_id": title, "cups_job": int(job), "queue": os.environ.get("CLASS") or printer,
        "printer": printer, "node": NODE, "user": user, "copies": int(copies or 1),
        "bytes": size, "device": uri.split(":", 1)[1] if ":" in uri else uri,
        "time": time.time()}}
os.makedirs(SINK, exist_ok=True)
safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in printer)
fd = os.open(os.path.join(SINK, safe + ".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
try:
    os.write(fd, (json.dumps(line) + "\\n").encode())
    os.fsync(fd)
finally:
    os.close(fd)
print("INFO: recorded job %s in the cosfail sink" % job, file=sys.stderr)
sys.exit(0)
'''


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` atomically unless it holds it already: an unchanged file
    keeps its mtime (a client's status reads its start time from client.conf's)."""
    try:
        same = path.read_text() == text
    except OSError:
        same = False
    if not same:
        atomic_write_bytes(path, text.encode())


class Cupsd(NodeFiles):
    """A node's cupsd and CUPS tools, as the CUPS driver runs them."""

    def __init__(self, domain: Domain, node_name: str) -> None:
        node = domain.node(node_name)  # an unknown node fails here, naming it
        self.domain = domain
        self.node = node_name
        self.role = node.role
        self.settings: CupsSettings = node.cups or CupsSettings()
        self.home = domain.home(node_name)
        self.host = "127.0.0.1" if node.host == "localhost" else node.host
        self.port = node.port
        self.tables_url = domain.tables_url(node_name)
        self.server_root = self.home / "cups"
        self.server_bin = self.server_root / "lib"
        self.request_root = domain.spool_dir(node_name)
        self.var = self.home / "var" / "cups"
        self.state_dir = self.var / "state"
        self.cache_dir = self.var / "cache"
        self.temp_dir = self.var / "tmp"
        self.log_dir = self.home / "var" / "log" / "cups"
        self.sink_dir = self.home / "var" / "sink"
        self.applied_path = self.var / "applied.json"
        self.incoming = self.home / "var" / "spool-incoming"
        self.resubmitted = self.home / "var" / "spool-resubmitted"
        self.pidfile = self.state_dir / "cupsd.pid"
        self.cupsd_conf = self.server_root / "cupsd.conf"
        self.files_conf = self.server_root / "cups-files.conf"
        self.client_conf = self.server_root / "client.conf"
        self.driver_log = self.home / "var" / "log" / "cups-driver.log"

    @property
    def is_client(self) -> bool:
        return self.role == "client"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ----- running CUPS's own tools ---------------------------------------------------
    def client_env(self, server: str | None = None) -> dict[str, str]:
        """The environment of a CUPS command run as this node: its own ServerRoot for
        client.conf and lpoptions (not /etc/cups), `server` (default: this node's cupsd;
        a client node: its client.conf) as the server, English messages."""
        self.server_root.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CUPS_SERVERROOT": str(self.server_root), "HOME": str(self.server_root),
               "LANG": "C", "LC_ALL": "C"}
        if server is not None:
            env["CUPS_SERVER"] = server
        elif not self.is_client:
            env["CUPS_SERVER"] = self.address
        return env

    def run(self, tool: str, *args: str, input_data: bytes | None = None,
            server: str | None = None,
            timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(  # noqa: S603 - an argument list, no shell
                [_tool(tool), *args], input=input_data, capture_output=True,
                env=self.client_env(server), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DriverError(f"node {self.node}: {tool} {' '.join(args)} did not finish "
                              f"within {timeout:g} s") from None

    def lpadmin(self, what: str, *args: str) -> None:
        done = self.run("lpadmin", *args)
        if done.returncode != 0:
            err = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise DriverError(f"node {self.node}: lpadmin could not {what}: {err}")

    def ipp(self, operation: int, *attrs: tuple[int, str, list[Any]],
            timeout: float = 5.0) -> ipp.Message:
        return ipp.request(self.host, self.port, operation, [*attrs, ipp.user()],
                           timeout=timeout)

    def log(self, text: str) -> None:
        self.driver_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.driver_log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.node} {text}\n")

    # ----- the cupsd process ----------------------------------------------------------
    def _is_ours(self, pid: int) -> bool:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        args = raw.decode(errors="replace").split("\0")
        return bool(args) and Path(args[0]).name == "cupsd" and str(self.cupsd_conf) in args

    def pid(self) -> int | None:
        """The pid of this node's running cupsd, or None."""
        if self.is_client:
            return None
        children.reap()
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and self._is_ours(pid):
            return pid
        return next((p for p in children.running() if self._is_ours(p)), None)

    def answers(self, timeout: float = STATUS_TIMEOUT) -> bool:
        try:
            msg = self.ipp(ipp.CUPS_GET_DEFAULT, ipp.requesting("printer-name"),
                           timeout=timeout)
        except ipp.IPPError:
            return False
        return msg.code in (0, ipp.STATUS_NOT_FOUND)

    def _prepare(self) -> None:
        """ServerRoot, ServerBin (the system's helpers plus the sink), spool and logs."""
        s = self.settings
        for d in (self.server_root, self.request_root, self.state_dir, self.cache_dir,
                  self.temp_dir, self.log_dir, self.sink_dir):
            d.mkdir(parents=True, exist_ok=True)
        allowed = sorted({"127.0.0.1", self.host} | {
            n.host for n in self.domain.spec.node if n.host != "localhost"})
        cupsd_conf = "\n".join([
            f"# cupsd.conf of node {self.node}, written by cosfail's CUPS driver at every "
            "start.",
            "LogLevel info",
            f"Listen {self.address}",
            "Browsing No",
            "BrowseLocalProtocols none",
            "DefaultAuthType None",
            "WebInterface No",
            "ErrorPolicy retry-job",
            "JobRetryInterval 5",
            # A bounded job history, so that a client polls its job to completion
            # (Get-Job-Attributes): each finished job's attributes for job_history
            # seconds, at most max_jobs jobs in all. Documents of unfinished jobs only:
            # those are what --with-spool hands over (docs/architecture.md §1.3).
            f"PreserveJobHistory {s.job_history}",
            f"MaxJobs {s.max_jobs}",
            "PreserveJobFiles No",
            # Configuration and job files written at once, not 30 s later: a crash
            # loses neither an lpadmin change nor an accepted job.
            "DirtyCleanInterval 0",
            "<Location />",
            "  Order allow,deny",
            *(f"  Allow {h}" for h in allowed),
            "</Location>",
            "<Policy default>",
            "  <Limit All>",
            "    Order deny,allow",
            "  </Limit>",
            "</Policy>",
            "",
        ])
        files_conf = "\n".join([
            f"# cups-files.conf of node {self.node}, written by cosfail's CUPS driver.",
            f"User {s.user}",
            f"Group {s.group}",
            "SystemGroup root",
            f"ServerRoot {self.server_root}",
            f"ServerBin {self.server_bin}",
            f"RequestRoot {self.request_root}",
            f"CacheDir {self.cache_dir}",
            f"StateDir {self.state_dir}",
            f"TempDir {self.temp_dir}",
            f"AccessLog {self.log_dir / 'access_log'}",
            f"ErrorLog {self.log_dir / 'error_log'}",
            f"PageLog {self.log_dir / 'page_log'}",
            "FileDevice No",
            "",
        ])
        for path, text in ((self.cupsd_conf, cupsd_conf), (self.files_conf, files_conf)):
            write_if_changed(path, text)
        system = Path(s.server_bin)
        for sub in ("backend", "filter", "notifier", "daemon", "monitor", "cgi-bin"):
            (self.server_bin / sub).mkdir(parents=True, exist_ok=True)
            try:
                entries = list((system / sub).iterdir())
            except OSError:
                continue
            for src in entries:
                link = self.server_bin / sub / src.name
                if not os.path.lexists(link):
                    link.symlink_to(src)
        sink = self.server_bin / "backend" / SINK_SCHEME
        text = SINK_BACKEND.format(python=sys.executable, node=self.node,
                                   sink=str(self.sink_dir), scheme=SINK_SCHEME)
        write_if_changed(sink, text)
        # 0700 and owned by root: cupsd runs it as root, so it may write the sink.
        os.chmod(sink, 0o700)

    def backends(self) -> set[str]:
        try:
            return {p.name for p in (self.server_bin / "backend").iterdir()}
        except OSError:
            return set()

    def _spawn(self) -> subprocess.Popen[bytes]:
        cupsd = self.settings.cupsd
        if not os.access(cupsd, os.X_OK):
            raise DriverError(f"node {self.node}: {cupsd} not found: install cups-daemon "
                              "(apt-get install cups-daemon cups-client cups-bsd)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUPS_")}
        with open(self.log_dir / "cupsd.out", "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                [cupsd, "-f", "-c", str(self.cupsd_conf), "-s", str(self.files_conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.home, env=env, start_new_session=True, close_fds=True)
        children.add(proc)
        return proc

    def _log_tail(self, limit: int = 400) -> str:
        for name in ("cupsd.out", "error_log"):
            try:
                lines = (self.log_dir / name).read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            errors = [ln for ln in lines if not ln.startswith(("I ", "D ", "W "))]
            if errors:
                return errors[-1][-limit:]
        return "no error logged"

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children.reap()
            if not self._is_ours(pid):
                return True
            time.sleep(POLL)
        return False

    def _signal(self, pid: int, sig: signal.Signals, group: bool = False) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
