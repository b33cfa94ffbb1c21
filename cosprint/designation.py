"""The master designation file (`etc/master`) and last-running record (`var/last_master`).

Both hold a master name and the domain epoch, as one small JSON document, written
atomically so that a crash leaves the previous version intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cosfail.cosprint.errors import DesignationError
from cosfail.cosprint.fsutil import atomic_write_bytes

DESIGNATION = Path("etc/master")
LAST_RUNNING = Path("var/last_master")


@dataclass(frozen=True)
class Designation:
    master: str
    epoch: int

    def __str__(self) -> str:
        return f"{self.master}@{self.epoch}"


def read(path: Path) -> Designation | None:
    """The designation in `path`, None if there is none; malformed content raises."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        master, epoch = data["master"], data["epoch"]
    except (ValueError, KeyError, TypeError):
        raise DesignationError(f"{path}: malformed designation (want master and epoch)") from None
    if not isinstance(master, str) or not master or type(epoch) is not int or epoch < 1:
        raise DesignationError(f"{path}: malformed designation {raw.strip()!r}")
    return Designation(master, epoch)


def write(path: Path, designation: Designation) -> None:
    atomic_write_bytes(path, json.dumps(asdict(designation)).encode() + b"\n")
