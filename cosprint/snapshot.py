"""Snapshots: a node's tables as one SQLite file, plus a JSON manifest beside it.

The manifest records the domain, epoch, source, time, row count per table and the
file's sha256; the file itself carries the epoch in `PRAGMA user_version` and a hash of
the domain's name in `PRAGMA application_id`, so a manifest
taken from another snapshot, an edited epoch, a flipped byte or a truncation is caught.
Nothing is restored before the whole snapshot verifies.

SQLite's own checks (quick_check, foreign keys) run once, on the file as it is written,
before its sha256 is taken: from then on a matching sha256 proves the bytes are those
checked, so verifying a copy (on each BCS, at each restore) is the sha256, the header and
the row counts, read in place, never the file's whole b-tree again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zlib
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cosfail.cosprint import tables
from cosfail.cosprint.database import open_engine
from cosfail.cosprint.errors import SnapshotError
from cosfail.cosprint.fsutil import TMP_SUFFIX, atomic_copy, atomic_write_bytes, fsync_dir
from sqlalchemy import delete, insert, make_url, select
from sqlalchemy.engine import Connection

FORMAT = 1
SUFFIX = ".snap"
MANIFEST_SUFFIX = ".manifest.json"
_ROWS_PER_INSERT = 5000


@dataclass(frozen=True)
class Manifest:
    domain: str
    epoch: int
    source: str
    created_at: float
    tables: dict[str, int]
    sha256: str
    size: int
    format: int = FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def domain_id(domain: str) -> int:
    """The domain's name as a signed 32-bit number, for the file's own header."""
    return zlib.crc32(domain.encode()) - 2**31


def manifest_path(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name.removesuffix(SUFFIX) + MANIFEST_SUFFIX)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database)
    return None


def _copy_rows(src: Connection, dst: Connection) -> None:
    """Stream every table from `src` into `dst`, parents first, in bounded chunks."""
    for t in (*tables.OBJECT_TABLES, tables.domain_pointer):
        result = src.execution_options(yield_per=_ROWS_PER_INSERT).execute(select(t))
        for part in result.partitions():
            dst.execute(insert(t), [row._asdict() for row in part])


def _unjournaled(tmp: Path) -> closing[sqlite3.Connection]:
    """A connection to a file still under its temporary name: it is fsynced and renamed
    only once whole, so SQLite's own journal and syncs on it would buy nothing."""
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    return closing(conn)


def _write_snapshot_file(tables_url: str, tmp: Path) -> None:
    source = _sqlite_path(tables_url)
    if source is not None:
        # The SQLite online backup API copies pages, not rows: the fast path.
        with closing(sqlite3.connect(source)) as src, _unjournaled(tmp) as dst:
            src.backup(dst)
        return
    src_engine = tables.open_tables(tables_url)
    dst_engine = tables.open_tables(f"sqlite:///{tmp}")
    try:
        with src_engine.connect() as src, dst_engine.begin() as dst:
            _copy_rows(src, dst)
    finally:
        src_engine.dispose()
        dst_engine.dispose()


def _integrity_fault(conn: sqlite3.Connection) -> str | None:
    """What SQLite finds wrong with a file's pages or references, or None."""
    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        return "fail SQLite's integrity check"
    if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
        return "have rows that reference missing objects"
    return None


def export_snapshot(
    tables_url: str, dest: Path, *, domain: str, epoch: int, source: str
) -> Manifest:
    """Write the tables at `tables_url` to `dest` (a `.snap`) and its manifest."""
    if not dest.name.endswith(SUFFIX):
        raise SnapshotError(f"{dest}: a snapshot file name must end in {SUFFIX}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)
    _write_snapshot_file(tables_url, tmp)
    with _unjournaled(tmp) as conn:
        # A source without some table still makes a whole snapshot; the live tables are
        # only read, never given a schema by an export.
        conn.executescript(tables.sqlite_schema())
        fault = _integrity_fault(conn)
        if fault:
            tmp.unlink()
            raise SnapshotError(f"{dest}: not written: the tables of {source} {fault}")
        conn.execute(f"PRAGMA user_version = {int(epoch)}")
        conn.execute(f"PRAGMA application_id = {domain_id(domain)}")
        counts = _row_counts(conn)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    manifest = Manifest(
        domain=domain,
        epoch=epoch,
        source=source,
        created_at=time.time(),
        tables=counts,
        sha256=sha256_file(tmp),
        size=tmp.stat().st_size,
    )
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    # The manifest lands last: a snapshot without one is incomplete and never listed.
    write_manifest(dest, manifest)
    return manifest


def write_manifest(snapshot: Path, manifest: Manifest) -> None:
    body = json.dumps(asdict(manifest), indent=1, sort_keys=True).encode()
    atomic_write_bytes(manifest_path(snapshot), body)


def read_manifest(snapshot: Path) -> Manifest:
    path = manifest_path(snapshot)
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**data)
    except FileNotFoundError:
        raise SnapshotError(f"{snapshot}: no manifest ({path.name} missing)") from None
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"{path}: malformed manifest ({exc})") from None
    if manifest.format != FORMAT:
        raise SnapshotError(f"{path}: unknown snapshot format {manifest.format}")
    return manifest


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            for t in tables.OBJECT_TABLES}


def check_snapshot(snapshot: Path, *, domain: str, min_epoch: int = 0) -> Manifest:
    """Checksum, size, domain, epoch and row counts, all read in place (no copy); raises
    SnapshotError naming the fault."""
    manifest = read_manifest(snapshot)
    if manifest.domain != domain:
        raise SnapshotError(
            f"{snapshot}: belongs to domain {manifest.domain!r}, not {domain!r}"
        )
    if manifest.epoch < min_epoch:
        raise SnapshotError(
            f"{snapshot}: epoch {manifest.epoch} is older than the domain's {min_epoch}"
        )
    try:
        size = snapshot.stat().st_size
    except FileNotFoundError:
        raise SnapshotError(f"{snapshot}: snapshot file missing") from None
    if size != manifest.size:
        raise SnapshotError(
            f"{snapshot}: truncated or altered ({size} bytes, manifest says {manifest.size})"
        )
    if sha256_file(snapshot) != manifest.sha256:
        raise SnapshotError(f"{snapshot}: checksum mismatch (corrupt, or not this manifest's)")
    _check_contents(snapshot, manifest)
    return manifest


def _check_contents(snapshot: Path, manifest: Manifest) -> None:
    try:
        conn = sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True)
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] != manifest.epoch:
                raise SnapshotError(f"{snapshot}: file epoch differs from its manifest's")
            if conn.execute("PRAGMA application_id").fetchone()[0] != domain_id(manifest.domain):
                raise SnapshotError(f"{snapshot}: the file was made for another domain "
                                    f"than its manifest's {manifest.domain!r}")
            counts = _row_counts(conn)
            for name, expected in manifest.tables.items():
                if counts.get(name) != expected:
                    raise SnapshotError(f"{snapshot}: table {name} has {counts.get(name)} "
                                        f"rows, manifest says {expected}")
            if counts.keys() != manifest.tables.keys():
                raise SnapshotError(f"{snapshot}: the manifest counts tables "
                                    f"{sorted(manifest.tables)}, not {sorted(counts)}")
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"{snapshot}: not a readable snapshot ({exc})") from None


def import_snapshot(
    snapshot: Path, tables_url: str, *, domain: str, min_epoch: int = 0
) -> Manifest:
    """Replace the tables at `tables_url` with the snapshot, only once it verifies."""
    manifest = check_snapshot(snapshot, domain=domain, min_epoch=min_epoch)
    target = _sqlite_path(tables_url)
    if target is not None:
        # Copy under a temporary name, fsync, rename: the old tables stay whole until then.
        atomic_copy(snapshot, target)
        return manifest
    src_engine = open_engine(f"sqlite:///{snapshot}")
    dst_engine = tables.open_tables(tables_url)
    try:
        with src_engine.connect() as src, dst_engine.begin() as dst:
            for t in reversed((*tables.OBJECT_TABLES, tables.domain_pointer)):
                dst.execute(delete(t))
            _copy_rows(src, dst)
    finally:
        src_engine.dispose()
        dst_engine.dispose()
    return manifest


def list_snapshots(directory: Path) -> list[Path]:
    """Complete snapshots (file and manifest both present) in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.name.endswith(SUFFIX) and manifest_path(p).exists()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime)
