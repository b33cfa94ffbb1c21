"""The CUPS configuration of one node, as data: what its cupsd serves or should serve,
and the three-way merge and the diff between two such configurations. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cosfail.cosprint.errors import DriverError

SINK_SCHEME = "cosfail-sink"

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


Options = dict[str, str]


def norm_options(options: Options) -> tuple[tuple[str, str], ...]:
    """Options as compared: those equal to cupsd's own default leave no trace in CUPS."""
    return tuple(sorted((k, v) for k, v in options.items() if BASELINE.get(k) != v))


@dataclass(frozen=True)
class PrinterConf:
    device: str
    location: str
    options: Options = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.device, self.location, norm_options(self.options))


@dataclass(frozen=True)
class ClassConf:
    members: tuple[str, ...]
    options: Options = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.members, norm_options(self.options))


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
