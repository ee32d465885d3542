"""Atomic local writes: whole files, the umask's mode, create-if-absent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from narrate.atomic import write_atomic


def test_a_written_file_holds_the_data_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "file.json"
    assert write_atomic(target, "first")
    assert write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_file_mode_follows_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "f.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


def test_create_if_absent_keeps_the_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    assert write_atomic(target, b"first", overwrite=False)
    assert not write_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_write_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.bin"
    write_atomic(target, b"previous")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
