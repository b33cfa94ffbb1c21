"""Designation and last-running records: atomic writes and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cosfail.cosprint import designation
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.errors import DesignationError


def test_write_then_read_round_trips(tmp_path: Path):
    path = tmp_path / "etc" / "master"
    designation.write(path, Designation("bcs1", 4))
    assert designation.read(path) == Designation("bcs1", 4)


def test_missing_file_reads_as_none(tmp_path: Path):
    assert designation.read(tmp_path / "etc" / "master") is None


@pytest.mark.parametrize("content", ["", "{", '{"master": "srv1"}', '{"master": "", "epoch": 1}',
                                     '{"master": "srv1", "epoch": "2"}', '[1, 2]'])
def test_malformed_file_names_the_path(tmp_path: Path, content: str):
    path = tmp_path / "master"
    path.write_text(content)
    with pytest.raises(DesignationError, match=str(path)) as err:
        designation.read(path)
    assert "\n" not in str(err.value)


def test_crash_between_write_and_rename_keeps_the_old_file(tmp_path: Path):
    """A child process dies (os._exit) right after writing the temporary file."""
    path = tmp_path / "etc" / "master"
    designation.write(path, Designation("srv1", 1))
    pid = os.fork()
    if pid == 0:  # the child: crash at the worst moment, between fsync and rename
        import cosfail.cosprint.fsutil as fsutil

        def crash(*_args):
            os._exit(9)

        fsutil.os.replace = crash  # type: ignore[attr-defined]
        designation.write(path, Designation("bcs1", 2))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert designation.read(path) == Designation("srv1", 1)
    assert (tmp_path / "etc" / "master.part").exists()  # the torn write, never read
