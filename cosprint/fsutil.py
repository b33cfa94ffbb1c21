"""Crash-safe file writes: temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

TMP_SUFFIX = ".part"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> int:
    """Stream `chunks` into `path` atomically; returns the number of bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    size = 0
    with open(tmp, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` under a temporary name, fsync, then rename into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + TMP_SUFFIX)
    shutil.copyfile(src, tmp)  # in-kernel (sendfile) where the platform has it
    with open(tmp, "rb+") as fout:
        os.fsync(fout.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def boot_id() -> str:
    """The kernel's id of this boot: monotonic clock readings compare only within one."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
