"""Keeping a node's cupsd equal to its tables: the three-way merge of what cupsd serves
(read through IPP), what the driver last applied and what the tables say (see the
package's docstring), applied with lpadmin and checked."""

from __future__ import annotations

import fcntl
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from cosfail.cosprint import authority, tables
from cosfail.cosprint.database import open_engine
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.drivers import ipp
from cosfail.cosprint.drivers.cups.conf import (
    BASELINE,
    ClassConf,
    CupsConf,
    CupsError,
    Live,
    LiveDest,
    PrinterConf,
    check_capability,
    diff,
    ipp_text,
    merge,
)
from cosfail.cosprint.drivers.cups.cupsd import Cupsd
from cosfail.cosprint.drivers.cups.tablemap import capture_into_tables, desired_conf
from cosfail.cosprint.errors import CosfailError, DriverError
from cosfail.cosprint.fsutil import atomic_write_bytes
from cosfail.cosprint.role import PRINTING_ROLES, decide_role
from sqlalchemy.engine import Engine, make_url

REASON_PREFIX = "cosfail:"
CUPS_PRINTER_CLASS = 0x0001
CUPS_PRINTER_REMOTE = 0x0002
STATE_STOPPED = 5


@cache
def _ledger_engine(url: str) -> Engine:
    return open_engine(url, pooled=False)


class CupsConfig(Cupsd):
    """The role a node's cupsd serves in, and the sync of its configuration."""

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
            args = ["-p", name, "-v", p.device, "-L", p.location,
                    *_option_args(p.options, old.options if old else None)]
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
            args = ["-p", name, *_option_args(c.options, old.options if old else None)]
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


def _option_args(options: dict[str, str], old: dict[str, str] | None) -> list[str]:
    """lpadmin's arguments that make a destination's defaults `options`, from `old` (None:
    a new destination, enabled and accepting at once)."""
    args: list[str] = []
    for k, v in sorted(options.items()):
        args += ["-o", f"{k}-default={v}"]
    for k in sorted(set(old or ()) - set(options)):
        args += ["-R", f"{k}-default"]
    if old is None:
        args.append("-E")
    return args
