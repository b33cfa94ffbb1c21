"""The CUPS driver: a node whose COSprint is a real `cupsd` (see the package's
docstring)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from cosfail.cosprint import snapshot as snapshots
from cosfail.cosprint import tables
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.driver import Driver, Resent, ServiceStatus
from cosfail.cosprint.drivers.cups.conf import CupsError
from cosfail.cosprint.drivers.cups.cupsd import POLL, START_TIMEOUT, STOP_TIMEOUT, write_if_changed
from cosfail.cosprint.drivers.cups.spooled import (
    CONTROL_FILE_RE,
    UNFINISHED,
    control_files,
    read_job,
    unfinished_files,
)
from cosfail.cosprint.drivers.cups.sync import CupsConfig
from cosfail.cosprint.errors import CosfailError, DriverError
from cosfail.cosprint.role import PRINTING_ROLES
from sqlalchemy import select

_REQUEST_ID_RE = re.compile(r"request id is (\S+)-(\d+) ")


class CupsDriver(CupsConfig, Driver):
    """Drives one node's cupsd (server, BCS) or client configuration (client)."""

    @classmethod
    def spool_handoff(cls, domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
        """A CUPS server's RequestRoot, the incoming area of `here` (its start resubmits
        what it finds there), every file."""
        return (domain.spool_dir(source),
                domain.home(here) / "var" / "spool-incoming" / source, "")

    def prepare(self) -> None:
        """Nothing to prepare: cupsd is a program of its own, started as it is."""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start cupsd unless it runs, then make it serve what the tables say: validate
        first (a row CUPS cannot take fails here, before anything changes), capture what
        an administrator changed, apply the rest with lpadmin, verify, then resubmit any
        handed-over jobs."""
        if self.is_client:
            self._start_client()
            return
        desired, problems = self.desired(backends=None)
        if problems:
            raise CupsError(f"node {self.node}: {len(problems)} object(s) cannot be served "
                            f"by CUPS; nothing changed: {'; '.join(problems)}")
        self._prepare()
        desired, problems = self.desired(backends=self.backends())
        if problems:
            raise CupsError(f"node {self.node}: {len(problems)} object(s) cannot be served "
                            f"by CUPS; nothing changed: {'; '.join(problems)}")
        pid = self.pid()
        if pid is None:
            self._quarantine_stale_spool()
            proc = self._spawn()
            deadline = time.monotonic() + timeout
            while not self.answers():
                if proc.poll() is not None:
                    raise DriverError(f"node {self.node}: cupsd exited with status "
                                      f"{proc.returncode} (see {self.log_dir}): "
                                      f"{self._log_tail()}")
                if time.monotonic() > deadline:
                    self._signal(proc.pid, signal.SIGKILL)
                    raise DriverError(f"node {self.node}: cupsd did not answer at "
                                      f"{self.address} within {timeout:g} s (see "
                                      f"{self.log_dir}): {self._log_tail()}")
                time.sleep(POLL * 2)
        elif not self.answers(timeout=5.0):
            raise DriverError(f"node {self.node}: cupsd pid {pid} runs but does not answer "
                              f"at {self.address} (see {self.log_dir})")
        self.sync(apply=True)
        self.resubmit_incoming()

    def _quarantine_stale_spool(self) -> None:
        """A node whose epoch is provably old must not print the jobs it had when it was
        failed over (the BCS may have printed them): before its cupsd starts and loads
        them, they move to var/reclaimed/<its epoch>/spool/, where reclaim puts them."""
        role, _why, own, _hosted = self._role()
        if role != "stale":
            return
        jobs = self.spool_paths()
        if not jobs:
            return
        dest = self.home / "var" / "reclaimed" / str(own.epoch if own else 0) / "spool"
        dest.mkdir(parents=True, exist_ok=True)
        for path in jobs:
            os.replace(path, dest / path.name)
        self.log(f"stale epoch: set aside {len(jobs)} spool file(s) in {dest} before "
                 "starting cupsd")

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Capture what an administrator changed (best effort: what cannot be captured
        stays in cupsd's own configuration and is met again at the next start), then
        SIGTERM, SIGKILL after `timeout`; True if it was running. A client runs nothing:
        its client.conf stays (without one, `lp` would fall back to a system cupsd)."""
        if self.is_client:
            return False
        pid = self.pid()
        if pid is None:
            return False
        try:
            if self.answers():
                self.sync(apply=False)
        except CosfailError as exc:
            self.log(f"stop: changes made in CUPS not captured: {exc}")
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 5.0):
                raise DriverError(f"node {self.node}: cupsd pid {pid} survived SIGKILL")
        self._signal(pid, signal.SIGKILL, group=True)  # a backend it left behind
        return True

    def kill(self) -> bool:
        """SIGKILL cupsd and whatever it runs, as a lost machine would."""
        if self.is_client:
            return False
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        self._signal(pid, signal.SIGKILL, group=True)
        if not self._wait_gone(pid, 5.0):
            raise DriverError(f"node {self.node}: cupsd pid {pid} survived SIGKILL")
        return True

    # ----- a client node ----------------------------------------------------------------
    def _master_node(self) -> str:
        d = self.read_designation()
        return d.master if d else self.domain.initial_master

    def _start_client(self) -> None:
        master = self._master_node()
        target = CupsDriver(self.domain, master) if \
            self.domain.node(master).driver == "cups" else None
        if target is None:
            raise DriverError(f"node {self.node}: master {master} runs no cupsd (driver "
                              f"{self.domain.node(master).driver!r})")
        text = (f"# client.conf of node {self.node}, written by cosfail's CUPS driver: "
                f"the master's cupsd.\nServerName {target.address}\n")
        write_if_changed(self.client_conf, text)

    def points_at(self) -> str | None:
        """The node whose cupsd this client's client.conf names, or None."""
        try:
            text = self.client_conf.read_text()
        except OSError:
            return None
        m = re.search(r"^ServerName\s+(\S+)\s*$", text, re.M)
        if not m:
            return None
        for n in self.domain.spec.node:
            host = "127.0.0.1" if n.host == "localhost" else n.host
            if n.driver == "cups" and n.role != "client" and f"{host}:{n.port}" == m.group(1):
                return n.name
        return m.group(1)

    def status(self) -> ServiceStatus | None:
        if self.is_client:
            try:
                up_since = self.client_conf.stat().st_mtime
            except OSError:
                return None
            role, _why, own, hosted = self._role()
            return ServiceStatus(node=self.node, role=role, master=self.points_at() or "",
                                 epoch=own.epoch if own else 0, hosted=hosted,
                                 up_since=up_since, pid=0)
        pid = self.pid()
        if pid is None or not self.answers():
            return None
        role, _why, own, hosted = self._role()
        try:
            up_since = self.pidfile.stat().st_mtime
        except OSError:
            up_since = time.time()
        return ServiceStatus(node=self.node, role=role, master=own.master if own else "",
                             epoch=own.epoch if own else 0, hosted=hosted,
                             up_since=up_since, pid=pid)

    # ----- jobs -------------------------------------------------------------------------
    def submit(self, queue: str, data: str, job_id: str | None = None,
               timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """Print through `lp` at the cupsd that hosts `queue` (as this node's tables
        say): (HTTP-like status, answer). `job_id` becomes the job's title."""
        with tables.connect(self.tables_url) as conn:
            host = conn.execute(select(tables.queues.c.host)
                                .where(tables.queues.c.name == queue)).scalar()
        if host is None:
            return 404, {"error": f"{self.node}: unknown queue {queue!r}"}
        if host not in self.domain.nodes or self.domain.node(host).driver != "cups":
            return 502, {"error": f"{self.node}: queue {queue!r} is hosted by {host!r}, "
                                  "which runs no cupsd"}
        target = CupsDriver(self.domain, host)
        title = job_id or f"job-{uuid.uuid4().hex[:12]}"
        done = self.run("lp", "-d", queue, "-t", title, server=target.address,
                        input_data=data.encode(), timeout=timeout)
        out = (done.stdout + done.stderr).decode(errors="replace").strip()
        m = _REQUEST_ID_RE.search(out)
        if done.returncode == 0 and m:
            return 202, {"job_id": title, "printed_by": host, "request_id": f"{m[1]}-{m[2]}"}
        if not target.answers():
            return 503, {"error": f"{self.node}: {host}'s cupsd at {target.address} does not "
                                  f"answer: {out}", "retriable": True}
        if "does not exist" in out:
            return 404, {"error": f"{self.node}: {host}'s cupsd has no queue {queue!r}: {out}"}
        return 503, {"error": f"{self.node}: {host}'s cupsd refused the job: {out}",
                     "retriable": True}

    def spool_paths(self) -> list[Path]:
        """The files of unfinished jobs in this cupsd's spool (control file first, then
        its documents), oldest job first; an unreadable control file is included."""
        return unfinished_files(self.request_root)

    def resend_set_aside(self, spool: Path) -> Resent:
        """Sends none, and counts each set-aside job as kept: a CUPS job carries no id
        its queue's new host could know it by, and a `failover --with-spool` may have
        printed it there already (resubmitted from the hand-over)."""
        kept = sum(bool(CONTROL_FILE_RE.match(p.name)) for p in unfinished_files(spool))
        if kept:
            self.log(f"reclaim: {kept} set-aside job(s) kept in {spool}, not sent again: "
                     "print with lp those that the hand-over did not")
        return Resent(sent=0, duplicates=0, kept=kept)

    def resubmit_incoming(self) -> list[str]:
        """Print here the unfinished jobs a failed server's spool handed over."""
        if not self.incoming.is_dir():
            return []
        role, _why, _own, _hosted = self._role()
        if role not in PRINTING_ROLES:
            return []
        done: list[str] = []
        for src in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            kept = self.resubmitted / src.name
            kept.mkdir(parents=True, exist_ok=True)
            record = kept / "resubmitted.jsonl"
            seen = set()
            if record.exists():
                for line in record.read_text().splitlines():
                    try:
                        seen.add(json.loads(line)["uuid"])
                    except (ValueError, KeyError):
                        continue
            for control in control_files(src):
                try:
                    job = read_job(control)
                except CupsError as exc:
                    self.log(f"resubmit: {exc}; left in {src}")
                    continue
                if job.state in UNFINISHED and job.uuid not in seen:
                    if not job.documents:
                        self.log(f"resubmit: job {src.name}-{job.job_id} has no document "
                                 f"file; left in {src}")
                        continue
                    args = ["-d", job.dest, "-t", job.title, "-n", str(job.copies)]
                    if job.user:
                        args += ["-U", job.user]
                    if job.state == 4 and job.hold:
                        args += ["-H", job.hold]
                    for k, v in job.options.items():
                        args += ["-o", f"{k}={v}"]
                    res = self.run("lp", *args, "--", *map(str, job.documents))
                    out = (res.stdout + res.stderr).decode(errors="replace").strip()
                    m = _REQUEST_ID_RE.search(out)
                    if res.returncode != 0 or not m:
                        self.log(f"resubmit: job {src.name}-{job.job_id} for {job.dest} "
                                 f"refused ({out}); left in {src}")
                        continue
                    with open(record, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"uuid": job.uuid, "from": f"{src.name}-"
                                            f"{job.job_id}", "as": f"{m[1]}-{m[2]}",
                                            "title": job.title, "time": time.time()}) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                    done.append(f"{src.name}-{job.job_id} → {m[1]}-{m[2]}")
                for path in (control, *job.documents):
                    try:
                        os.replace(path, kept / path.name)
                    except FileNotFoundError:
                        pass
        if done:
            self.log(f"resubmitted {len(done)} handed-over job(s): {', '.join(done)}")
        return done

    # ----- data -------------------------------------------------------------------------
    def export_snapshot(self, dest: Path, epoch: int, domain: str) -> snapshots.Manifest:
        """The tables, after capturing what an administrator changed in a running
        cupsd (an object the tables cannot describe fails the export, naming it)."""
        extra: dict[str, str] = {}
        if not self.is_client and self.pid() is not None and self.answers():
            done = self.sync(apply=False)
            if done["captured"]:
                extra["cups_captured"] = ", ".join(done["captured"])
        manifest = super().export_snapshot(dest, epoch, domain)
        if extra:
            manifest = dataclasses.replace(manifest, extra=extra)
            snapshots.write_manifest(dest, manifest)
        return manifest
