"""Snapshots: a node's tables as one SQLite file, plus a JSON manifest beside it.

The manifest records the domain, epoch, source, time, row count per table and the
file's sha256; the file itself carries the epoch in `PRAGMA user_version` and a hash of
the domain's name in `PRAGMA application_id`, so a manifest
taken from another snapshot, an edited epoch, a flipped byte or a truncation is caught.
Nothing is restored before the whole snapshot verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, delete, insert, make_url, select
from sqlalchemy.engine import Connection

from cosprint import tables
from cosprint.errors import SnapshotError
from cosprint.fsutil import TMP_SUFFIX, atomic_copy, atomic_write_bytes, fsync_dir

FORMAT = 1
SUFFIX = ".snap"
MANIFEST_SUFFIX = ".manifest.json"
_CHUNK = 1024 * 1024
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def _write_snapshot_file(tables_url: str, tmp: Path) -> None:
    source = _sqlite_path(tables_url)
    if source is not None:
        # The SQLite online backup API copies pages, not rows: the fast path.
        tables.open_tables(tables_url).dispose()
        with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
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
    with sqlite3.connect(tmp) as conn:
        conn.execute(f"PRAGMA user_version = {int(epoch)}")
        conn.execute(f"PRAGMA application_id = {domain_id(domain)}")
        counts = {
            t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            for t in tables.OBJECT_TABLES
        }
    conn.close()
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


def check_snapshot(snapshot: Path, *, domain: str, min_epoch: int = 0) -> Manifest:
    """Checksum, size, domain, epoch and row counts; raises SnapshotError naming the fault."""
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
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise SnapshotError(f"{snapshot}: SQLite integrity check failed")
            if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise SnapshotError(f"{snapshot}: rows reference missing objects")
            for name, expected in manifest.tables.items():
                got = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                if got != expected:
                    raise SnapshotError(
                        f"{snapshot}: table {name} has {got} rows, manifest says {expected}"
                    )
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
    src_engine = create_engine(f"sqlite:///{snapshot}")
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


def trial_restore(
    snapshot: Path, scratch_dir: Path, *, domain: str, min_epoch: int = 0
) -> Manifest:
    """Restore into a scratch database and compare its rows with the manifest."""
    scratch = scratch_dir / (snapshot.name + ".trial.db")
    try:
        manifest = import_snapshot(
            snapshot, f"sqlite:///{scratch}", domain=domain, min_epoch=min_epoch
        )
        with tables.connect(f"sqlite:///{scratch}") as conn:
            counts = tables.row_counts(conn)
        if counts != manifest.tables:
            raise SnapshotError(f"{snapshot}: trial restore gave {counts}, not {manifest.tables}")
        return manifest
    finally:
        scratch.unlink(missing_ok=True)


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
