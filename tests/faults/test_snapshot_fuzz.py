"""Snapshot fuzzing (issue 9, item 4): byte flips, truncations, a foreign manifest, an old
epoch, another domain's snapshot, a tampered manifest. None is ever restored: each is
refused by `import_snapshot` and by the verify check (`check_snapshot`) with a one-line
reason, and the target's rows stay exactly as they were. Pure files, no services.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cosfail.cosprint import tables
from cosfail.cosprint.errors import SnapshotError
from cosfail.cosprint.snapshot import (
    check_snapshot,
    export_snapshot,
    import_snapshot,
    manifest_path,
)
from test_snapshot import _fill

SEED = 20_261_125
FLIPS = 50
EPOCH = 3


@dataclass(frozen=True)
class Pristine:
    """One valid snapshot (domain `demo`, epoch 3) and its sibling variants, never edited."""

    snap: Path
    other_content: Path  # same domain and epoch, different rows
    other_domain: Path  # a valid snapshot of domain `other`
    target_db: Path  # the restore target, filled with rows of its own


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    base = tmp_path_factory.mktemp("snapfuzz")
    master = f"sqlite:///{base / 'master.db'}"
    _fill(master, n=20)
    snap = base / "src" / "demo-e3.snap"
    export_snapshot(master, snap, domain="demo", epoch=EPOCH, source="srv1")
    other_domain = base / "src" / "other-e3.snap"
    export_snapshot(master, other_domain, domain="other", epoch=EPOCH, source="srv1")
    with tables.connect(master) as conn:
        conn.execute(tables.formats.update().values(paper="Letter"))
    other_content = base / "src" / "demo-e3-b.snap"
    export_snapshot(master, other_content, domain="demo", epoch=EPOCH, source="srv1")
    target_db = base / "target.db"
    _fill(f"sqlite:///{target_db}", hosts=("keep",), n=5)
    check_snapshot(snap, domain="demo", min_epoch=EPOCH)  # the original is sound
    check_snapshot(other_domain, domain="other", min_epoch=EPOCH)
    return Pristine(snap, other_content, other_domain, target_db)


@pytest.fixture
def work(pristine: Pristine, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A fresh copy of the valid snapshot (with manifest) and of the target, per case."""
    snap = tmp_path / "case" / pristine.snap.name
    snap.parent.mkdir()
    shutil.copy(pristine.snap, snap)
    shutil.copy(manifest_path(pristine.snap), manifest_path(snap))
    target = tmp_path / "target.db"
    shutil.copy(pristine.target_db, target)
    yield snap, f"sqlite:///{target}"


def _digest(url: str) -> str:
    with tables.connect(url) as conn:
        return tables.rows_digest(conn)


def _edit_manifest(snap: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    path = manifest_path(snap)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def assert_refused(snap: Path, target: str, reason: str, *, domain: str = "demo",
                   min_epoch: int = EPOCH) -> None:
    """Refused by import and by the verify check, with `reason` on one line; target intact."""
    before = _digest(target)
    with pytest.raises(SnapshotError, match=reason) as err:
        import_snapshot(snap, target, domain=domain, min_epoch=min_epoch)
    message = str(err.value)
    # one line, naming the snapshot (or its manifest, for a malformed one)
    assert "\n" not in message and str(snap.with_suffix("")) in message, message
    assert _digest(target) == before, f"refused snapshot changed the target: {message}"
    with pytest.raises(SnapshotError, match=reason):
        check_snapshot(snap, domain=domain, min_epoch=min_epoch)


def _flips() -> list[list[tuple[float, int]]]:
    """50 deterministic cases: 1 to 4 bytes, each at a random fraction of the file's
    length (so the cases do not depend on its exact size), XORed with 1..255."""
    rng = random.Random(SEED)
    return [[(rng.random(), rng.randrange(1, 256)) for _ in range(rng.choice((1, 1, 2, 3, 4)))]
            for _ in range(FLIPS)]


@pytest.mark.parametrize("flips", _flips(), ids=[f"flip{i}" for i in range(FLIPS)])
def test_byte_flips_are_refused_by_the_checksum(work, pristine, flips):  # type: ignore[no-untyped-def]
    snap, target = work
    data = bytearray(snap.read_bytes())
    at = {int(where * len(data)): mask for where, mask in reversed(flips)}  # distinct bytes
    for pos, mask in at.items():
        data[pos] ^= mask
    assert bytes(data) != pristine.snap.read_bytes()
    snap.write_bytes(bytes(data))
    assert_refused(snap, target, "checksum mismatch")


@pytest.mark.parametrize("sixteenth", range(16))
def test_truncation_at_every_sixteenth_is_refused(work, sixteenth):  # type: ignore[no-untyped-def]
    snap, target = work
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) * sixteenth // 16])
    assert_refused(snap, target, "truncated")


def test_manifest_of_another_snapshot_is_refused(work, pristine):  # type: ignore[no-untyped-def]
    snap, target = work
    shutil.copy(manifest_path(pristine.other_content), manifest_path(snap))
    assert_refused(snap, target, "checksum mismatch|truncated")


def test_older_epoch_is_refused(work):  # type: ignore[no-untyped-def]
    snap, target = work
    assert_refused(snap, target, f"epoch {EPOCH} is older than the domain's {EPOCH + 1}",
                   min_epoch=EPOCH + 1)


def test_valid_snapshot_of_another_domain_is_refused(work, pristine):  # type: ignore[no-untyped-def]
    _, target = work
    snap = work[0].parent / pristine.other_domain.name
    shutil.copy(pristine.other_domain, snap)
    shutil.copy(manifest_path(pristine.other_domain), manifest_path(snap))
    assert_refused(snap, target, "belongs to domain 'other', not 'demo'")


@pytest.mark.parametrize(("edit", "reason"), [
    pytest.param(lambda m: m.update(epoch=EPOCH + 5), "file epoch differs", id="epoch-up"),
    pytest.param(lambda m: m.update(epoch=EPOCH - 1), "older than", id="epoch-down"),
    pytest.param(lambda m: m.update(size=m["size"] - 1), "truncated or altered", id="size-1"),
    pytest.param(lambda m: m.update(size=m["size"] + 4096), "truncated or altered",
                 id="size+4096"),
    pytest.param(lambda m: m["tables"].update(printers=m["tables"]["printers"] + 1),
                 "table printers has 40 rows, manifest says 41", id="rows+1"),
    pytest.param(lambda m: m["tables"].update(queues=0), "table queues has 40 rows",
                 id="rows-zero"),
    pytest.param(lambda m: m.update(sha256="0" * 64), "checksum mismatch", id="sha256"),
    pytest.param(lambda m: m.update(domain="other"), "belongs to domain 'other'", id="domain"),
    pytest.param(lambda m: m.update(format=2), "unknown snapshot format", id="format"),
    pytest.param(lambda m: m.update(unexpected=1), "malformed manifest", id="unknown-key"),
])
def test_tampered_manifest_is_refused(work, edit, reason):  # type: ignore[no-untyped-def]
    snap, target = work
    _edit_manifest(snap, edit)
    assert_refused(snap, target, reason)


def test_the_untouched_copy_restores(work, pristine):  # type: ignore[no-untyped-def]
    """The control case: the fuzz harness itself does not break a good snapshot."""
    snap, target = work
    manifest = import_snapshot(snap, target, domain="demo", min_epoch=EPOCH)
    assert manifest.rows == 6 * 40
    with tables.connect(target) as conn:
        assert tables.row_counts(conn) == manifest.tables


def test_a_snapshot_of_another_domain_relabelled_in_its_manifest_is_refused(tmp_path):
    """The file's own header names its domain: editing the manifest does not change it."""
    src = f"sqlite:///{tmp_path / 'src.db'}"
    with tables.connect(src) as conn:
        tables.write_pointer(conn, "srv1", 1)
    snap = tmp_path / "other.snap"
    export_snapshot(src, snap, domain="other", epoch=1, source="srv1")
    manifest = json.loads(manifest_path(snap).read_text())
    manifest["domain"] = "demo"
    manifest_path(snap).write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="made for another domain"):
        import_snapshot(snap, f"sqlite:///{tmp_path / 'target.db'}", domain="demo")
