"""Atomic writes: fsync before the rename and of the folder after, the umask respected, leftovers removed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from balanced_l1 import _files
from balanced_l1._files import remove_stale_temp_files, write_atomically, write_json_atomically


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


def _write_text(text: str) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    return write


def test_content_arrives_and_no_temporary_file_stays(tmp_path: Path) -> None:
    path = write_atomically(tmp_path / "sub" / "out.txt", _write_text("hello"))
    assert path.read_text() == "hello" and os.listdir(tmp_path / "sub") == ["out.txt"]


def test_file_and_folder_are_synced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        fsync(fd)

    def record_replace(src: str, dst: str) -> None:
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(_files.os, "fsync", record_fsync)
    monkeypatch.setattr(_files.os, "replace", record_replace)
    write_atomically(tmp_path / "out.txt", _write_text("x"))
    assert events == ["fsync file", "replace", "fsync folder"]


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(("owner_only", "mode"), [(False, 0o640), (True, 0o600)])
def test_permissions_follow_the_umask(tmp_path: Path, owner_only: bool, mode: int) -> None:
    path = write_atomically(tmp_path / "out.txt", _write_text("x"), owner_only=owner_only)
    assert path.stat().st_mode & 0o777 == mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_long_but_valid_name_gets_a_valid_temporary_name(tmp_path: Path) -> None:
    name = "r" * 251 + ".png"
    assert write_atomically(tmp_path / name, _write_text("x")).read_text() == "x"


def test_stale_temporary_files_of_a_name_are_removed(tmp_path: Path) -> None:
    stale = [tmp_path / ".loss_curves.png.a1b2c3d4.tmp", tmp_path / ".loss_curves.png.zz_9yy8x.tmp"]
    kept = [
        tmp_path / ".results.json.a1b2c3d4.tmp",
        tmp_path / "loss_curves.png",
        tmp_path / ".loss_curves.png.short.tmp",
    ]
    for path in stale + kept:
        path.write_text("x")
    assert remove_stale_temp_files(tmp_path, "loss_curves.png") == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_stale_temporary_files_of_any_name_are_removed(tmp_path: Path) -> None:
    for name in (".a.png.abcdefgh.tmp", ".b.json.12345678.tmp", "c.txt"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".a.png.abcdefgh.tmp", ".b.json.12345678.tmp"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_leftover_of_a_long_name_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "r" * 251 + ".png"

    def crash(tmp: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_files.os, "unlink", lambda path: None)  # as if the process died before cleaning up
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / name, crash)
    monkeypatch.undo()
    assert len(remove_stale_temp_files(tmp_path, name)) == 1 and not list(tmp_path.iterdir())


def test_json_is_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = write_json_atomically({"a": [1, 2]}, tmp_path / "r.json")
    text = path.read_text()
    assert json.loads(text) == {"a": [1, 2]} and text.endswith("\n") and "\n  " in text
