"""Tables ⇄ CUPS: what a node's cupsd should serve per its tables, and the objects an
administrator changed in CUPS (with lpadmin), written back into the tables."""

from __future__ import annotations

import re
from typing import Any

from cosfail.cosprint import tables
from cosfail.cosprint.drivers.cups.conf import (
    BASELINE,
    MEDIA,
    ClassConf,
    CupsConf,
    Live,
    Merge,
    Options,
    PrinterConf,
    check_capability,
    norm_options,
    unwrap_device,
    valid_dest_name,
    wrap_device,
)
from sqlalchemy import Connection, delete, func, insert, select, update

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s'\"\\]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
            problems.append(f"class {name!r}: its options {dict(norm_options(c.options))} "
                            "cannot be captured (a class's options come from the defaults "
                            "table)")
    return problems
