"""The jobs of a cupsd's spool, read from their control files (a dead cupsd's spool
too)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosfail.cosprint.drivers import ipp
from cosfail.cosprint.drivers.cups.conf import CupsError, ipp_text

UNFINISHED = {3, 4, 5, 6}  # pending, pending-held, processing, processing-stopped
# Job attributes a resubmitted job carries over, as `lp -o name=value`.
CARRIED = ("media", "sides", "number-up", "print-color-mode", "job-priority",
           "orientation-requested", "page-ranges", "print-quality", "output-bin")


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


CONTROL_FILE_RE = re.compile(r"^c(\d{5,})$")


def read_job(control: Path) -> SpooledJob:
    """One job of a cupsd spool, from its control file `c#####` (IPP-encoded)."""
    m = CONTROL_FILE_RE.match(control.name)
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


def control_files(directory: Path) -> list[Path]:
    """The job control files in `directory`, oldest job first (none if it is missing)."""
    try:
        return sorted(p for p in directory.iterdir() if CONTROL_FILE_RE.match(p.name))
    except FileNotFoundError:
        return []


def unfinished_files(directory: Path) -> list[Path]:
    """The files of the unfinished jobs in `directory` (control file first, then its
    documents), oldest job first; an unreadable control file is included."""
    out: list[Path] = []
    for c in control_files(directory):
        try:
            job = read_job(c)
        except CupsError:
            out.append(c)
            continue
        if job.state in UNFINISHED:
            out += [c, *job.documents]
    return out
