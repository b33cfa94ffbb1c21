"""The CUPS driver: a node whose COSprint is a real `cupsd`.

The COSprint tables stay the domain's model: snapshots, restores and rehosts work on
them exactly as with the reference driver. What this driver adds is the print server
they describe: every server and BCS runs a `cupsd` of its own (its own ServerRoot,
spool, state and logs under the node's home, listening on the node's port), and the
objects a node hosts in its tables are kept equal to what that cupsd serves.

Mapping (rows whose `host` is this node ⇄ this node's cupsd; read back through IPP):
- printers (name, device, location) ⇄ a raw printer `name` (`lpadmin -p name -v device
  -L location`), read from CUPS-Get-Printers;
- resource_capabilities (printer, capability, value) ⇄ the printer's default option
  `capability-default=value` (`lpadmin -p P -o`), which `lpoptions -p P` shows as
  `capability=value`; read from the printer-defaults group;
- queues (name, printer) ⇄ a class `name` whose one member is the printer (member-names);
- defaults (name, queue, format) ⇄ the class's `media-default`, the format's paper as a
  PWG media name; the lowest-id default's queue is the cupsd's default destination
  (`lpadmin -d`, read with CUPS-Get-Default);
- formats, default_locks: CUPS has no such object; they are carried in the tables and
  snapshots only (a format reaches CUPS as the media of the defaults that use it).

With `[node.cups] sink = true` a printer's CUPS device URI is the table's device behind
the project's sink backend (`cosfail-sink:<device>`), which records each job it is
handed in `var/sink/<printer>.log` and prints nowhere. Printer state (enabled,
accepting) is operational state, not configuration: a destination is created enabled
and accepting; on a node whose epoch is not confirmed (stale, unverified) every
destination is stopped and rejects jobs, with a reason starting with `cosfail:`.

Keeping the two equal is a three-way merge per object, between what cupsd serves now
(read through IPP, never by reading a running cupsd's files), what this driver last
applied (`var/cups/applied.json`) and what the tables say:
- an object an administrator changed in CUPS (with lpadmin) and not in the tables is
  captured into the tables (`export_snapshot`, `stop`, `start`) — on a node serving as
  master or server only; elsewhere it is set aside in `var/reclaimed/`, never lost;
- an object the tables changed (restore, rehost, restart-check) is applied to cupsd
  with `lpadmin` (argument lists, no shell) when COSprint starts;
- both changed, or a CUPS object the tables cannot describe (a class of two printers,
  a printer with a PPD, a user allow-list, …), or a table row CUPS cannot take (a name
  CUPS refuses, a device that is not a URI, a paper with no PWG name, …) is reported by
  name, and nothing is changed: validation comes before the first write.
After applying, the driver reads cupsd again; anything cupsd did not keep as asked is
reported, never taken for done.

A client node runs no cupsd: its COSprint is its `client.conf` (`ServerName` the
master's cupsd), which `start` rewrites (re-pointing the client) and `stop` leaves in
place (without one, `lp` would fall back to a system cupsd); `submit` sends a job to the
cupsd that hosts the queue, as the client's tables say.

Spool: a cupsd's RequestRoot is the node's spool directory, and cosfail's cupsd keeps
no job history there, so it holds unfinished jobs only. `failover --with-spool` copies
the failed server's into `var/spool-incoming/<server>/` on the BCS; once the BCS's cupsd
serves, each unfinished job found there is resubmitted with `lp` (its title, user,
copies and job options; documents in order) and its files kept in
`var/spool-resubmitted/<server>/`, its job-uuid recorded so that a second pass never
resubmits it again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, delete, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from cosprint import authority, tables
from cosprint import snapshot as snapshots
from cosprint.designation import Designation
from cosprint.domain import CupsSettings, Domain
from cosprint.driver import ServiceStatus
from cosprint.drivers import ipp
from cosprint.drivers.base import NodeFiles, children
from cosprint.errors import CosfailError, DriverError
from cosprint.fsutil import atomic_write_bytes
from cosprint.role import PRINTING_ROLES, decide_role

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STATUS_TIMEOUT = 0.5
TOOL_TIMEOUT = 30.0
_POLL = 0.02

SINK_SCHEME = "cosfail-sink"
REASON_PREFIX = "cosfail:"

# PWG 5101.1 media names of the papers a COSprint format may name.
MEDIA = {
    "A3": "iso_a3_297x420mm",
    "A4": "iso_a4_210x297mm",
    "A5": "iso_a5_148x210mm",
    "B5": "iso_b5_176x250mm",
    "DL": "iso_dl_110x220mm",
    "Letter": "na_letter_8.5x11in",
    "Legal": "na_legal_8.5x14in",
    "Tabloid": "na_ledger_11x17in",
}

# What cupsd reports for every raw printer (classes: the same without finishings) when
# nobody set the option: not configuration, so neither captured nor compared.
BASELINE = {
    "copies": "1",
    "document-format": "application/octet-stream",
    "finishings": "3",
    "job-cancel-after": "10800",
    "job-hold-until": "no-hold",
    "job-priority": "50",
    "notify-events": "job-completed",
    "notify-lease-duration": "86400",
    "number-up": "1",
    "orientation-requested": "",
    "print-color-mode": "monochrome",
    "print-quality": "4",
}
# Option names cupsd treats as something else than a stored default, or that name a
# printer attribute: a capability of one of these names cannot be a CUPS option.
RESERVED = frozenset({
    "auth-info-required", "device-uri", "document-format", "job-k-limit", "job-page-limit",
    "job-quota-period", "job-sheets", "member-names", "member-uris", "notify-events",
    "notify-lease-duration", "port-monitor", "printer-error-policy", "printer-geo-location",
    "printer-info", "printer-is-accepting-jobs", "printer-is-shared", "printer-location",
    "printer-make-and-model", "printer-op-policy", "printer-organization",
    "printer-organizational-unit", "printer-state", "printer-state-message",
    "printer-type", "requesting-user-name-allowed", "requesting-user-name-denied",
})
_CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*$")
_VALUE_RE = re.compile(r"^[^\s'\"\\]{1,200}$")  # cupsd keeps one word, no quoting
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s'\"\\]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID_RE = re.compile(r"request id is (\S+)-(\d+) ")
CUPS_PRINTER_CLASS = 0x0001
CUPS_PRINTER_REMOTE = 0x0002
STATE_STOPPED = 5
UNFINISHED = {3, 4, 5, 6}  # pending, pending-held, processing, processing-stopped
# Job attributes a resubmitted job carries over, as `lp -o name=value`.
CARRIED = ("media", "sides", "number-up", "print-color-mode", "job-priority",
           "orientation-requested", "page-ranges", "print-quality", "output-bin")

class CupsError(DriverError):
    """A CUPS object or a table row the CUPS driver cannot map; nothing was changed."""


def valid_dest_name(name: str) -> bool:
    """cupsd's rule for printer and class names (scheduler/ipp.c validate_name)."""
    return 0 < len(name) < 128 and all(
        0x20 < ord(c) < 0x7F and c not in "/\\?'\"#" for c in name)


def ipp_text(value: Any) -> str:
    """An IPP value as lpoptions would write it."""
    if isinstance(value, list):
        return ",".join(ipp_text(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


# --------------------------------------------------------------------------------------
# the CUPS configuration of one node, as data
# --------------------------------------------------------------------------------------
Options = dict[str, str]


def _norm(options: Options) -> tuple[tuple[str, str], ...]:
    """Options as compared: those equal to cupsd's own default leave no trace in CUPS."""
    return tuple(sorted((k, v) for k, v in options.items() if BASELINE.get(k) != v))


@dataclass(frozen=True)
class PrinterConf:
    device: str
    location: str
    options: Options = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.device, self.location, _norm(self.options))


@dataclass(frozen=True)
class ClassConf:
    members: tuple[str, ...]
    options: Options = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.members, _norm(self.options))


@dataclass
class CupsConf:
    printers: dict[str, PrinterConf] = field(default_factory=dict)
    classes: dict[str, ClassConf] = field(default_factory=dict)
    default: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "printers": {n: {"device": p.device, "location": p.location,
                             "options": dict(sorted(p.options.items()))}
                         for n, p in sorted(self.printers.items())},
            "classes": {n: {"members": list(c.members), "options": dict(sorted(c.options.items()))}
                        for n, c in sorted(self.classes.items())},
            "default": self.default,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CupsConf:
        return cls(
            printers={n: PrinterConf(p["device"], p["location"], dict(p["options"]))
                      for n, p in data["printers"].items()},
            classes={n: ClassConf(tuple(c["members"]), dict(c["options"]))
                     for n, c in data["classes"].items()},
            default=data.get("default"),
        )


@dataclass
class LiveDest:
    """What cupsd says of one destination beyond its configuration."""

    accepting: bool
    stopped: bool
    message: str
    problems: list[str]  # why the tables cannot describe it (if it had to be captured)


@dataclass
class Live:
    conf: CupsConf
    dests: dict[str, LiveDest]


# --------------------------------------------------------------------------------------
# tables → CUPS (what a node's cupsd should serve)
# --------------------------------------------------------------------------------------
def wrap_device(device: str, sink: bool) -> str:
    return f"{SINK_SCHEME}:{device}" if sink else device


def unwrap_device(uri: str, sink: bool) -> str:
    prefix = f"{SINK_SCHEME}:"
    return uri[len(prefix):] if sink and uri.startswith(prefix) else uri


def check_capability(printer: str, cap: str, value: str) -> str | None:
    """Why (cap, value) cannot be a CUPS printer option, or None."""
    where = f"printer {printer!r}: capability {cap!r}"
    if not _CAPABILITY_RE.match(cap) or cap.endswith("-default") or len(cap) > 80:
        return f"{where} is not a CUPS option name (a-z 0-9 _, words joined by -)"
    if cap in RESERVED:
        return f"{where} names a CUPS printer attribute, not an option CUPS stores"
    if not _VALUE_RE.match(value):
        return (f"{where} = {value!r}: cupsd keeps one word of a default option "
                "(no spaces, quotes or backslashes, 1-200 characters)")
    return None


def desired_conf(conn: Connection, node: str, sink: bool,
                 backends: set[str] | None = None) -> tuple[CupsConf, list[str]]:
    """What `node`'s cupsd should serve per these tables, and every row it cannot map."""
    t = tables
    problems: list[str] = []
    conf = CupsConf()
    printers = {r.id: r for r in conn.execute(select(t.printers))}
    printer_names = {r.name for r in printers.values() if r.host == node}
    queues = {r.id: r for r in conn.execute(select(t.queues))}
    formats = {r.id: r for r in conn.execute(select(t.formats))}
    for p in sorted(printers.values(), key=lambda r: r.id):
        if p.host != node:
            continue
        where = f"printer {p.name!r} (printers.id {p.id})"
        if not valid_dest_name(p.name):
            problems.append(f"{where}: not a name CUPS accepts (1-127 printable characters, "
                            "none of space / \\ ? ' \" #)")
            continue
        uri = wrap_device(p.device, sink)
        if not _URI_RE.match(p.device) or len(uri) > 1023:
            problems.append(f"{where}: device {p.device!r} is not a URI CUPS accepts")
            continue
        scheme = uri.split(":", 1)[0]
        if backends is not None and scheme not in backends:
            problems.append(f"{where}: device scheme {scheme!r} has no CUPS backend on "
                            f"this node (have: {', '.join(sorted(backends))})")
            continue
        if _CONTROL_RE.search(p.location):
            problems.append(f"{where}: location contains control characters")
            continue
        conf.printers[p.name] = PrinterConf(uri, p.location)
    caps: dict[str, Options] = {}
    for c in conn.execute(select(t.resource_capabilities).order_by(t.resource_capabilities.c.id)):
        if c.host != node:
            continue
        p = printers[c.printer_id]
        if p.host != node:
            problems.append(f"capability {c.capability!r} (resource_capabilities.id {c.id}) "
                            f"of printer {p.name!r}: the printer is hosted by {p.host}")
            continue
        why = check_capability(p.name, c.capability, c.value)
        if why:
            problems.append(f"{why} (resource_capabilities.id {c.id})")
            continue
        opts = caps.setdefault(p.name, {})
        if c.capability in opts:
            problems.append(f"printer {p.name!r}: capability {c.capability!r} given twice "
                            f"({opts[c.capability]!r} and {c.value!r}); a CUPS option has "
                            f"one value (resource_capabilities.id {c.id})")
            continue
        opts[c.capability] = c.value
    for name, opts in caps.items():
        if name in conf.printers:
            conf.printers[name] = PrinterConf(conf.printers[name].device,
                                              conf.printers[name].location, opts)
    for q in sorted(queues.values(), key=lambda r: r.id):
        if q.host != node:
            continue
        where = f"queue {q.name!r} (queues.id {q.id})"
        p = printers[q.printer_id]
        if not valid_dest_name(q.name):
            problems.append(f"{where}: not a name CUPS accepts for a class")
        elif q.name in printer_names:
            problems.append(f"{where}: a printer has that name; CUPS printers and classes "
                            "share one name space")
        elif p.host != node:
            problems.append(f"{where}: its printer {p.name!r} is hosted by {p.host}; a CUPS "
                            "class holds printers of its own cupsd only")
        elif p.name in conf.printers:
            conf.classes[q.name] = ClassConf((p.name,))
    media: dict[str, tuple[str, str]] = {}
    first: tuple[int, str] | None = None
    for d in conn.execute(select(t.defaults).order_by(t.defaults.c.id)):
        if d.host != node:
            continue
        where = f"default {d.name!r} (defaults.id {d.id})"
        q, f = queues[d.queue_id], formats[d.format_id]
        if q.host != node:
            problems.append(f"{where}: its queue {q.name!r} is hosted by {q.host}")
            continue
        paper = MEDIA.get(f.paper)
        if paper is None:
            problems.append(f"{where}: format {f.name!r} has paper {f.paper!r}, which has no "
                            f"PWG media name here (known: {', '.join(sorted(MEDIA))})")
            continue
        if q.name in media and media[q.name][1] != paper:
            problems.append(f"{where}: queue {q.name!r} already gets media "
                            f"{media[q.name][1]} from default {media[q.name][0]!r}; a CUPS "
                            "class has one media-default")
            continue
        media[q.name] = (d.name, paper)
        if first is None:
            first = (d.id, q.name)
    for qname, (_d, paper) in media.items():
        if qname in conf.classes:
            conf.classes[qname] = ClassConf(conf.classes[qname].members, {"media": paper})
    if first is not None and first[1] in conf.classes:
        conf.default = first[1]
    return conf, problems


# --------------------------------------------------------------------------------------
# CUPS → tables (capturing what an administrator changed with lpadmin)
# --------------------------------------------------------------------------------------
@dataclass
class Merge:
    final: CupsConf  # what cupsd serves once applied; also what the tables will say
    captured: CupsConf  # objects whose live version goes into the tables
    removed_printers: list[str]  # deleted in CUPS: deleted from the tables
    removed_classes: list[str]
    conflicts: list[str]
    discarded: dict[str, Any]  # live objects changed outside cosfail, not captured

    @property
    def captures(self) -> int:
        return (len(self.captured.printers) + len(self.captured.classes)
                + len(self.removed_printers) + len(self.removed_classes))


def merge(live: CupsConf, base: CupsConf, desired: CupsConf, capture: bool) -> Merge:
    """Per object: unchanged in CUPS since last applied → the tables win; changed in CUPS
    only → captured (when `capture`); changed on both sides, differently → a conflict."""
    out = Merge(CupsConf(), CupsConf(), [], [], [], {})
    kinds = (("printer", live.printers, base.printers, desired.printers,
              out.final.printers, out.captured.printers, out.removed_printers),
             ("class", live.classes, base.classes, desired.classes,
              out.final.classes, out.captured.classes, out.removed_classes))
    for kind, lv, bs, ds, final, captured, removed in kinds:
        for name in sorted(set(lv) | set(bs) | set(ds)):
            L, B, T = lv.get(name), bs.get(name), ds.get(name)  # noqa: N806
            lk, bk, tk = (x.key() if x else None for x in (L, B, T))
            if lk == bk or lk == tk:
                if T is not None:
                    final[name] = T
                continue
            if not capture:
                out.discarded[f"{kind} {name}"] = L.key() if L else None
                if T is not None:
                    final[name] = T
                continue
            if tk != bk:
                out.conflicts.append(
                    f"{kind} {name!r} was changed both in CUPS (outside cosfail) and in the "
                    "tables since cosfail last applied it")
                if T is not None:
                    final[name] = T
                continue
            if L is None:
                removed.append(name)
            else:
                captured[name] = L
                final[name] = L
    out.final.default = desired.default
    if live.default not in (base.default, desired.default):
        if capture:
            out.conflicts.append(
                f"default destination {live.default!r} was set in CUPS; cosfail derives it "
                f"from the defaults table ({desired.default!r}: the queue of its first "
                "default)")
        else:
            out.discarded["default destination"] = live.default
    return out


def _next_id(conn: Connection, table: Any) -> int:
    return (conn.execute(select(func.max(table.c.id))).scalar() or 0) + 1


def capture_into_tables(conn: Connection, node: str, sink: bool, m: Merge,
                        live: Live) -> list[str]:
    """Write the captured objects into the tables (inside the caller's transaction);
    returns what could not be captured (the caller then rolls back)."""
    t = tables
    problems: list[str] = []
    for name in [*m.captured.printers, *m.captured.classes]:
        problems += live.dests[name].problems
    if problems:
        return problems
    by_name = {r.name: r for r in conn.execute(select(t.printers))}
    for name, p in m.captured.printers.items():
        device = unwrap_device(p.device, sink)
        row = by_name.get(name)
        if len(name) > 80 or len(device) > 200 or len(p.location) > 200:
            problems.append(f"printer {name!r}: name, device or location longer than the "
                            "tables hold (80, 200, 200)")
            continue
        if row is not None and row.host != node:
            problems.append(f"printer {name!r} exists in this cupsd, but the tables put it "
                            f"on {row.host}")
            continue
        if row is None:
            pid = _next_id(conn, t.printers)
            conn.execute(insert(t.printers).values(id=pid, name=name, host=node,
                                                   device=device, location=p.location))
        else:
            pid = row.id
            conn.execute(update(t.printers).where(t.printers.c.id == pid)
                         .values(device=device, location=p.location))
        for cap, value in p.options.items():
            why = check_capability(name, cap, value)
            if why:
                problems.append(f"{why}: set in CUPS, cannot be a capability")
        rc = t.resource_capabilities
        have = list(conn.execute(select(rc).where(rc.c.printer_id == pid).order_by(rc.c.id)))
        want = dict(p.options)
        for r in have:  # an option at cupsd's own default leaves no trace: keep its row
            if r.capability not in want and BASELINE.get(r.capability) == r.value:
                want[r.capability] = r.value
        for r in have:
            if r.capability not in want:
                conn.execute(delete(rc).where(rc.c.id == r.id))
            elif r.value != want.pop(r.capability):
                conn.execute(update(rc).where(rc.c.id == r.id)
                             .values(value=p.options[r.capability], host=node))
        for cap, value in want.items():
            conn.execute(insert(rc).values(id=_next_id(conn, rc), host=node, printer_id=pid,
                                           capability=cap, value=value))
    by_name = {r.name: r for r in conn.execute(select(t.printers))}
    queues = {r.name: r for r in conn.execute(select(t.queues))}
    for name in m.removed_classes:
        q = queues.get(name)
        if q is None or q.host != node:
            continue
        gone = [d.id for d in conn.execute(select(t.defaults.c.id)
                                           .where(t.defaults.c.queue_id == q.id))]
        conn.execute(delete(t.default_locks).where(t.default_locks.c.default_id.in_(gone)))
        conn.execute(delete(t.defaults).where(t.defaults.c.id.in_(gone)))
        conn.execute(delete(t.queues).where(t.queues.c.id == q.id))
    for name, c in m.captured.classes.items():
        member = by_name.get(c.members[0]) if len(c.members) == 1 else None
        if member is None or member.host != node:
            problems.append(f"class {name!r}: its member {c.members!r} is no printer "
                            f"{node} hosts")
            continue
        q = queues.get(name)
        if q is not None and q.host != node:
            problems.append(f"class {name!r} exists in this cupsd, but the tables put queue "
                            f"{name!r} on {q.host}")
            continue
        if q is None:
            conn.execute(insert(t.queues).values(id=_next_id(conn, t.queues), name=name,
                                                 host=node, printer_id=member.id))
        else:
            conn.execute(update(t.queues).where(t.queues.c.id == q.id)
                         .values(printer_id=member.id))
    for name in m.removed_printers:
        row = by_name.get(name)
        if row is None or row.host != node:
            continue
        users = [q.name for q in conn.execute(select(t.queues.c.name)
                                              .where(t.queues.c.printer_id == row.id))]
        if users:
            problems.append(f"printer {name!r} was deleted in CUPS, but queue(s) "
                            f"{', '.join(users)} still name it")
            continue
        rc = t.resource_capabilities
        conn.execute(delete(rc).where(rc.c.printer_id == row.id))
        conn.execute(delete(t.printers).where(t.printers.c.id == row.id))
    if problems:
        return problems
    # What the tables say now must be exactly what CUPS serves, object by object.
    after, bad = desired_conf(conn, node, sink)
    problems += bad
    for name, p in m.captured.printers.items():
        if name not in after.printers or after.printers[name].key() != p.key():
            problems.append(f"printer {name!r}: its CUPS configuration does not survive the "
                            "round trip through the tables")
    for name, c in m.captured.classes.items():
        if name not in after.classes or after.classes[name].key() != c.key():
            problems.append(f"class {name!r}: its options {dict(_norm(c.options))} cannot be "
                            "captured (a class's options come from the defaults table)")
    return problems


# --------------------------------------------------------------------------------------
# job control files (a dead cupsd's spool)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpooledJob:
    control: Path
    documents: list[Path]
    job_id: int
    uuid: str
    state: int
    dest: str
    title: str
    user: str
    copies: int
    hold: str
    options: dict[str, str]


_CFILE_RE = re.compile(r"^c(\d{5,})$")


def read_job(control: Path) -> SpooledJob:
    """One job of a cupsd spool, from its control file `c#####` (IPP-encoded)."""
    m = _CFILE_RE.match(control.name)
    if not m:
        raise CupsError(f"{control}: not a cupsd job control file")
    try:
        msg = ipp.decode(control.read_bytes())
    except (OSError, ipp.IPPError) as exc:
        raise CupsError(f"{control}: unreadable job control file: {exc}") from None
    attrs: dict[str, list[Any]] = {}
    for group in msg.group(ipp.JOB) + msg.group(ipp.OPERATION):
        for k, v in group.items():
            attrs.setdefault(k, v)

    def one(name: str, default: Any = None) -> Any:
        v = attrs.get(name)
        return v[0] if v else default

    job_id = int(m.group(1))
    uri = one("job-printer-uri") or one("printer-uri") or ""
    docs = sorted(control.parent.glob(f"d{m.group(1)}-[0-9][0-9][0-9]"))
    return SpooledJob(
        control=control, documents=docs, job_id=job_id,
        uuid=one("job-uuid") or f"{control.parent.name}:{job_id}",
        state=int(one("job-state", 3) or 3), dest=uri.rstrip("/").rsplit("/", 1)[-1],
        title=one("job-name") or "", user=one("job-originating-user-name") or "",
        copies=int(one("copies", 1) or 1), hold=one("job-hold-until") or "",
        options={k: ipp_text(attrs[k]) for k in CARRIED if ipp_text(attrs.get(k))},
    )


def spool_handoff(domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
    """Where `failover --with-spool` takes a CUPS server's spool from and puts it:
    (its RequestRoot, the incoming area of `here`, the name suffix of files to copy)."""
    return (domain.spool_dir(source), domain.home(here) / "var" / "spool-incoming" / source,
            "")


# --------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------
@cache
def _ledger_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True)


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


class CupsDriver(NodeFiles):
    """Drives one node's cupsd (server, BCS) or client configuration (client)."""

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
            # Unfinished jobs only in the spool: what --with-spool hands over.
            "PreserveJobHistory No",
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
            try:
                same = path.read_text() == text
            except OSError:
                same = False
            if not same:
                atomic_write_bytes(path, text.encode())
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
        try:
            same = sink.read_text() == text
        except OSError:
            same = False
        if not same:
            atomic_write_bytes(sink, text.encode())
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
            time.sleep(_POLL)
        return False

    def _signal(self, pid: int, sig: signal.Signals, group: bool = False) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

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
                time.sleep(_POLL * 2)
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
        try:
            same = self.client_conf.read_text() == text
        except OSError:
            same = False
        if not same:
            atomic_write_bytes(self.client_conf, text.encode())

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

    # ----- status ---------------------------------------------------------------------
    def _role(self) -> tuple[str, str, Designation | None, int]:
        try:
            own, own_err = self.read_designation(), None
        except CosfailError as exc:
            own, own_err = None, str(exc)
        ledger = self.domain.ledger_url
        auth, auth_err = None, None
        lf = make_url(ledger)
        if lf.get_backend_name() == "sqlite" and lf.database and \
                not Path(lf.database).exists():
            auth_err = f"ledger {lf.database} not found"
        else:
            try:
                auth = authority.read(_ledger_engine(ledger), self.domain.control.name)
                if auth is None:
                    auth_err = "no authoritative state"
            except Exception as exc:  # any DB failure means "cannot verify", never master
                auth_err = f"ledger unreadable: {type(exc).__name__}"
        with tables.connect(self.tables_url) as conn:
            hosted = tables.hosted_counts(conn).get(self.node, 0)
        role, reason = decide_role(self.node, own, auth, hosts_objects=hosted > 0,
                                   designation_error=own_err, authority_error=auth_err)
        return role, reason, own, hosted

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

    # ----- reading and syncing the CUPS configuration -----------------------------------
    def desired(self, backends: set[str] | None = None) -> tuple[CupsConf, list[str]]:
        with tables.connect(self.tables_url) as conn:
            return desired_conf(conn, self.node, self.settings.sink, backends)

    def live(self) -> Live:
        """This node's cupsd, as it answers CUPS-Get-Printers and CUPS-Get-Default."""
        try:
            msg = self.ipp(ipp.CUPS_GET_PRINTERS, ipp.requesting(
                "printer-name", "printer-type", "device-uri", "printer-location",
                "printer-info", "printer-make-and-model", "member-names",
                "printer-is-accepting-jobs", "printer-state", "printer-state-message",
                "printer-is-shared", "printer-is-temporary", "requesting-user-name-allowed",
                "requesting-user-name-denied", "job-quota-period", "job-k-limit",
                "job-page-limit", "printer-error-policy", "printer-op-policy",
                "printer-geo-location", "printer-organization", "printer-organizational-unit",
                "printer-defaults"))
            dflt = self.ipp(ipp.CUPS_GET_DEFAULT, ipp.requesting("printer-name"))
        except ipp.IPPError as exc:
            raise DriverError(f"node {self.node}: cannot read cupsd at {self.address}: "
                              f"{exc}") from None
        if msg.code not in (0, 1, 2, ipp.STATUS_NOT_FOUND):
            raise DriverError(f"node {self.node}: cupsd answered CUPS-Get-Printers with "
                              f"status 0x{msg.code:04x}")
        out = Live(CupsConf(), {})
        for g in msg.group(ipp.PRINTER):
            def one(name: str, default: Any = None, g: dict[str, list[Any]] = g) -> Any:
                v = g.get(name)
                return v[0] if v else default

            name = one("printer-name", "")
            if one("printer-is-temporary", False):
                continue  # a queue cupsd made on its own for a network printer
            ptype = int(one("printer-type", 0) or 0)
            is_class = bool(ptype & CUPS_PRINTER_CLASS)
            options = {k[: -len("-default")]: ipp_text(v[0] if len(v) == 1 else v)
                       for k, v in g.items() if k.endswith("-default")}
            options = {k: v for k, v in options.items() if BASELINE.get(k) != v}
            kind = "class" if is_class else "printer"
            problems = []
            where = f"{kind} {name!r} on {self.node}'s cupsd"
            model = "Local Printer Class" if is_class else "Local Raw Printer"
            checks = [
                (ptype & CUPS_PRINTER_REMOTE, "is a remote queue"),
                (one("printer-info", name) != name,
                 f"has the description {one('printer-info')!r} (printer-info); "
                 "COSprint keeps none"),
                (one("printer-make-and-model", model) != model,
                 f"has a driver/PPD ({one('printer-make-and-model')!r}); COSprint "
                 "printers are raw queues"),
                (g.get("requesting-user-name-allowed") or g.get("requesting-user-name-denied"),
                 "has a user allow/deny list (requesting-user-name-allowed/denied)"),
                (any(one(q, 0) for q in ("job-quota-period", "job-k-limit", "job-page-limit")),
                 "has job quotas (job-quota-period/job-k-limit/job-page-limit)"),
                (one("printer-error-policy") not in (None, "retry-job", "retry-current-job"),
                 f"has printer-error-policy {one('printer-error-policy')!r}"),
                (one("printer-op-policy", "default") != "default",
                 f"has printer-op-policy {one('printer-op-policy')!r}"),
                (one("printer-is-shared", True) is not True, "is not shared (printer-is-shared)"),
                (one("printer-geo-location") or one("printer-organization")
                 or one("printer-organizational-unit"),
                 "has a geo-location or organization"),
            ]
            problems += [f"{where} {why}" for bad, why in checks if bad]
            if is_class:
                members = tuple(g.get("member-names") or ())
                if len(members) != 1:
                    problems.append(f"{where} has {len(members)} members; a COSprint queue "
                                    "names exactly one printer")
                if set(options) - {"media"}:
                    problems.append(f"{where} has options "
                                    f"{', '.join(sorted(set(options) - {'media'}))}; a "
                                    "class's only option is the media of its default")
                out.conf.classes[name] = ClassConf(members, options)
            else:
                for cap, value in options.items():
                    why = check_capability(name, cap, value)
                    if why:
                        problems.append(f"{why}: set on {self.node}'s cupsd")
                out.conf.printers[name] = PrinterConf(one("device-uri", ""),
                                                      one("printer-location", "") or "",
                                                      options)
            out.dests[name] = LiveDest(
                accepting=bool(one("printer-is-accepting-jobs", True)),
                stopped=int(one("printer-state", 3) or 3) == STATE_STOPPED,
                message=one("printer-state-message", "") or "", problems=problems)
        if dflt.code == 0:
            g = dflt.group(ipp.PRINTER)
            out.conf.default = (g[0].get("printer-name") or [None])[0] if g else None
        return out

    def read_applied(self) -> CupsConf | None:
        try:
            return CupsConf.from_json(json.loads(self.applied_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            self.log(f"applied configuration {self.applied_path} unreadable ({exc}): "
                     "taking cupsd's as the base")
            return None

    def write_applied(self, conf: CupsConf) -> None:
        atomic_write_bytes(self.applied_path,
                           json.dumps(conf.to_json(), indent=1, sort_keys=True).encode())

    def sync(self, apply: bool) -> dict[str, Any]:
        """The three-way merge (see the module's docstring). With `apply` False it only
        captures into the tables (export, stop); with True it also makes cupsd serve
        what the tables say, then checks that it does. Returns what it did. One sync at
        a time per node (a lock file), whichever process runs it."""
        self.var.mkdir(parents=True, exist_ok=True)
        with open(self.var / "sync.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            return self._sync(apply)

    def _sync(self, apply: bool) -> dict[str, Any]:
        role, reason, _own, _hosted = self._role()
        capture = role in PRINTING_ROLES
        live = self.live()
        base = self.read_applied()
        if base is None or (not live.conf.printers and not live.conf.classes and (
                base.printers or base.classes)):
            # Never applied here, or a cupsd that lost its whole configuration: the
            # tables are the truth, nothing in CUPS counts as an administrator's change.
            base = live.conf
        with tables.connect(self.tables_url) as conn:
            desired, problems = desired_conf(conn, self.node, self.settings.sink,
                                             self.backends() if apply else None)
            if problems:
                raise CupsError(f"node {self.node}: {len(problems)} object(s) cannot be "
                                f"served by CUPS; nothing changed: {'; '.join(problems)}")
            m = merge(live.conf, base, desired, capture)
            if capture:  # what the tables cannot describe would be lost by a backup
                unsupported = [p for d in live.dests.values() for p in d.problems]
                if unsupported:
                    raise CupsError(f"node {self.node}: CUPS holds what the tables cannot "
                                    f"describe; nothing changed: {'; '.join(unsupported)}")
            survivors = set(m.final.printers) | set(m.final.classes)
            if apply and m.final.default is None and live.conf.default in survivors:
                m.conflicts.append(
                    f"the tables give {self.node} no default destination, but its cupsd's "
                    f"is {live.conf.default!r} and lpadmin cannot unset one")
            if m.conflicts:
                raise CupsError(f"node {self.node}: nothing changed: {'; '.join(m.conflicts)}")
            if m.captures:
                problems = capture_into_tables(conn, self.node, self.settings.sink, m, live)
                if problems:
                    raise CupsError(f"node {self.node}: CUPS holds what the tables cannot "
                                    f"describe; nothing changed: {'; '.join(problems)}")
        done: dict[str, Any] = {"captured": sorted([*m.captured.printers, *m.captured.classes,
                                                    *m.removed_printers, *m.removed_classes])}
        if m.discarded and apply:
            self._set_aside(live.conf, m.discarded, reason)
            done["set_aside"] = sorted(m.discarded)
        if m.captures:
            self.log(f"captured from CUPS into the tables: {', '.join(done['captured'])}")
        if not apply:
            new_base = CupsConf(dict(base.printers), dict(base.classes), base.default)
            for name, p in m.captured.printers.items():
                new_base.printers[name] = p
            for name, c in m.captured.classes.items():
                new_base.classes[name] = c
            for name in m.removed_printers:
                new_base.printers.pop(name, None)
            for name in m.removed_classes:
                new_base.classes.pop(name, None)
            if m.captures or not self.applied_path.exists():
                self.write_applied(new_base)
            return done
        done["applied"] = self._apply(m.final, live, role, reason)
        after = self.live()
        self.write_applied(after.conf)
        wrong = diff(m.final, after.conf)
        if wrong:
            raise DriverError(f"node {self.node}: cupsd did not keep what was applied: "
                              f"{'; '.join(wrong)}")
        return done

    def _set_aside(self, conf: CupsConf, discarded: dict[str, Any], reason: str) -> None:
        """Changes made in CUPS on a node that may not capture them: kept, not lost."""
        dest = self.home / "var" / "reclaimed" / f"cups-{time.strftime('%Y%m%dT%H%M%S')}.json"
        body = {"node": self.node, "why": reason, "changed_outside_cosfail": sorted(discarded),
                "cupsd_configuration": conf.to_json()}
        atomic_write_bytes(dest, json.dumps(body, indent=1, sort_keys=True).encode())
        self.log(f"set aside CUPS changes not captured ({reason}): "
                 f"{', '.join(sorted(discarded))} in {dest}")

    def _apply(self, want: CupsConf, live: Live, role: str, reason: str) -> list[str]:
        """lpadmin until cupsd serves `want`; returns one line per change."""
        have = live.conf
        done: list[str] = []
        survivors = set(want.printers) | set(want.classes)
        for name in sorted(set(have.classes) - set(want.classes)):
            self.lpadmin(f"delete class {name}", "-x", name)
            done.append(f"deleted class {name}")
        for name in sorted(set(have.printers) - set(want.printers)):
            self.lpadmin(f"delete printer {name}", "-x", name)
            done.append(f"deleted printer {name}")
        for name, p in sorted(want.printers.items()):
            old = have.printers.get(name)
            if old is not None and old.key() == p.key():
                continue
            args = ["-p", name, "-v", p.device, "-L", p.location]
            for k, v in sorted(p.options.items()):
                args += ["-o", f"{k}-default={v}"]
            for k in sorted(set(old.options if old else ()) - set(p.options)):
                args += ["-R", f"{k}-default"]
            if old is None:
                args.append("-E")
            self.lpadmin(f"{'create' if old is None else 'update'} printer {name}", *args)
            done.append(f"{'created' if old is None else 'updated'} printer {name}")
        for name, c in sorted(want.classes.items()):
            old = have.classes.get(name)
            if old is not None and old.key() == c.key():
                continue
            for member in c.members:
                if old is None or member not in old.members:
                    self.lpadmin(f"add printer {member} to class {name}",
                                 "-p", member, "-c", name)
            for member in old.members if old else ():
                if member not in c.members:
                    self.lpadmin(f"remove printer {member} from class {name}",
                                 "-p", member, "-r", name)
            args = ["-p", name]
            for k, v in sorted(c.options.items()):
                args += ["-o", f"{k}-default={v}"]
            for k in sorted(set(old.options if old else ()) - set(c.options)):
                args += ["-R", f"{k}-default"]
            if old is None:
                args.append("-E")
            if len(args) > 2:
                self.lpadmin(f"set the options of class {name}", *args)
            done.append(f"{'created' if old is None else 'updated'} class {name}")
        if want.default is not None and want.default != have.default:
            self.lpadmin(f"make {want.default} the default destination", "-d", want.default)
            done.append(f"default destination {want.default}")
        # Printer state: a destination serves only where the epoch is confirmed.
        serving = role in PRINTING_ROLES
        for name in sorted(survivors):
            st = live.dests.get(name)
            if serving and st is not None and st.message.startswith(REASON_PREFIX):
                self._tool_ok("cupsaccept", name)
                self._tool_ok("cupsenable", name)
                done.append(f"{name} serves again")
            elif not serving and (st is None or st.accepting or not st.stopped):
                why = f"{REASON_PREFIX} {reason}"[:200]
                self._tool_ok("cupsreject", "-r", why, name)
                self._tool_ok("cupsdisable", "-r", why, name)
                done.append(f"{name} stopped: {role}")
        return done

    def _tool_ok(self, tool: str, *args: str) -> None:
        done = self.run(tool, *args)
        if done.returncode != 0:
            err = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise DriverError(f"node {self.node}: {tool} {' '.join(args)}: {err}")

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
        out: list[Path] = []
        try:
            controls = sorted(p for p in self.request_root.iterdir() if _CFILE_RE.match(p.name))
        except FileNotFoundError:
            return []
        for c in controls:
            try:
                job = read_job(c)
            except CupsError:
                out.append(c)
                continue
            if job.state in UNFINISHED:
                out += [c, *job.documents]
        return out

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
            for control in sorted(p for p in src.iterdir() if _CFILE_RE.match(p.name)):
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



def diff(want: CupsConf, have: CupsConf) -> list[str]:
    """One line per object that `have` does not serve as `want` says."""
    out = []
    for kind, w, h in (("printer", want.printers, have.printers),
                       ("class", want.classes, have.classes)):
        for name in sorted(set(w) | set(h)):
            a, b = w.get(name), h.get(name)
            if a is None:
                out.append(f"{kind} {name!r} should not exist")
            elif b is None:
                out.append(f"{kind} {name!r} is missing")
            elif a.key() != b.key():
                out.append(f"{kind} {name!r} is {b.key()!r}, not {a.key()!r}")
    if want.default != have.default:
        out.append(f"default destination is {have.default!r}, not {want.default!r}")
    return out
