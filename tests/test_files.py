"""Atomic writes: fsync before the rename and of the folder after, the umask respected, leftovers removed; and
reads of regular files only, of a bounded size, refused by kind before they are opened."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balanced_l1 import _files
from balanced_l1._files import (
    UnreadableFileError,
    WriteError,
    link_leaving,
    load_error_reason,
    loads_strict_json,
    open_regular_file,
    read_regular_file,
    remove_stale_temp_files,
    write_atomically,
    write_json_atomically,
)


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

    with pytest.raises(WriteError, match=f"^{target}: cannot write it \\(disk full; .* free there\\)"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_a_full_disk_is_named_with_the_file_and_the_reason_and_the_old_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")

    def no_space(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as info:
        write_atomically(target, no_space)
    assert str(info.value).startswith(f"{target}: cannot write it (No space left on device; ")
    assert str(info.value).endswith("the file that was there, if any, is left as it was")
    assert target.read_bytes() == b"the last good checkpoint" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        WriteError, match=f"^{tmp_path / 'file' / 'sub' / 'out.txt'}: cannot write it \\(Not a directory"
    ):
        write_atomically(tmp_path / "file" / "sub" / "out.txt", _write_text("x"))


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


# --- reading: regular files of a bounded size only, checked before they are opened -------------------------------


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging if a FIFO is ever opened for a blocking read."""
    import signal

    def hang(signum: int, frame: object) -> None:
        raise TimeoutError("blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert read_regular_file(tmp_path / "f", 3, "config file", why="w") == b"abc"
    with open_regular_file(tmp_path / "f", 3, "config file", why="w") as handle:
        assert handle.read() == b"abc"


_READ_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from balanced_l1._files import read_regular_file
with open("/proc/self/status") as status:
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = used + (256 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(read_regular_file(sys.argv[1], 4 << 30, "annotation file", why="w").decode())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads its address space from /proc")
def test_a_small_file_is_read_under_a_memory_limit_far_below_the_bound(tmp_path: Path) -> None:
    # A bound of 4 GiB must not mean a 4 GiB buffer: the read asks for what the file holds, in bounded chunks.
    (tmp_path / "small.json").write_text("{}" * 512)
    done = subprocess.run(
        [sys.executable, "-c", _READ_UNDER_A_MEMORY_LIMIT, str(tmp_path / "small.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "{}" * 512 + "\n")


def test_no_single_read_asks_for_more_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"ab" * (_files.READ_CHUNK_BYTES + 7))
    monkeypatch.setattr(_files, "READ_CHUNK_BYTES", 1000)
    assert read_regular_file(tmp_path / "f", 4 << 30, "f", why="w") == b"ab" * (1 << 20) + b"ab" * 7


@pytest.mark.usefixtures("alarm")
@pytest.mark.parametrize(("kind", "name"), [("fifo", "a FIFO"), ("device", "a character device"), ("dir", "a folder")])
def test_other_kinds_are_refused_by_kind_before_they_are_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, name: str
) -> None:
    path = {"fifo": tmp_path / "fifo", "device": Path("/dev/zero"), "dir": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    opened: list[object] = []
    real_open = os.open

    def record_open(*args: Any, **kwargs: Any) -> int:
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(_files.os, "open", record_open)
    with pytest.raises(UnreadableFileError, match=f"^{path}: the annotation file is {name}, not a regular file"):
        read_regular_file(path, 1 << 20, "annotation file", why="w")
    assert opened == []


@pytest.mark.usefixtures("alarm")
def test_a_fifo_swapped_in_after_the_check_is_refused_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "regular").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would wait for ever
    regular = os.stat(tmp_path / "regular")
    monkeypatch.setattr(_files.os, "stat", lambda path: regular)  # the check saw a regular file; then the swap
    with pytest.raises(UnreadableFileError, match="is a FIFO, not a regular file"):
        read_regular_file(tmp_path / "fifo", 10, "checkpoint", why="w")


def test_a_file_over_the_bound_is_refused_by_size_with_the_bound_and_why(tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_bytes(b"#" * 2049)
    with pytest.raises(UnreadableFileError) as info:
        read_regular_file(tmp_path / "big.toml", 2048, "config file", why="settings take 4 KiB")
    assert str(info.value) == (
        f"{tmp_path / 'big.toml'}: the config file is 2.0 KiB (2049 bytes), over the limit of 2 KiB for a config "
        "file (settings take 4 KiB); refused without reading it"
    )


def test_missing_files_and_links_without_following_are_named(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match=f"^{tmp_path / 'nope'}: annotation file not found$"):
        read_regular_file(tmp_path / "nope", 10, "annotation file", why="w")
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert read_regular_file(tmp_path / "link", 10, "f", why="w") == b"x"
    with pytest.raises(UnreadableFileError, match="is a symbolic link, not a regular file"):
        read_regular_file(tmp_path / "link", 10, "f", why="w", follow_symlinks=False)


def test_links_leaving_a_folder_are_told_apart_from_links_inside_it(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "inside").symlink_to(root / "real")
    (root / "away").symlink_to(outside)
    (root / "real" / "back_out").symlink_to(outside / "f.json")
    assert link_leaving(root, root / "real") is None and link_leaving(root, root / "missing") is None
    assert link_leaving(root, root / "inside" / "x.json") is None
    assert link_leaving(root, root / "away") == outside.resolve()
    assert link_leaving(root, root / "inside" / "back_out") == (outside / "f.json").resolve()
    (tmp_path / "root_link").symlink_to(root)  # the folder itself may be a link
    assert link_leaving(tmp_path / "root_link", tmp_path / "root_link" / "inside") is None


def test_torchs_advice_to_load_without_weights_only_is_never_repeated() -> None:
    import pickle

    refusal = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, "
        "but it can result in arbitrary code execution.\n\n\nTrying to load unsupported GLOBAL posix.system whose "
        "module posix is blocked.\n\nCheck the documentation of torch.load to learn more about types accepted"
    )
    assert load_error_reason(refusal) == (
        "UnpicklingError: Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    )
    assert load_error_reason(IndexError("list index out of range")) == "IndexError: list index out of range"
    assert load_error_reason(RuntimeError("use weights_only=False")) == "RuntimeError: not plain data"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_json_is_written_standard_or_not_at_all(tmp_path: Path, value: float) -> None:
    target = tmp_path / "results.json"
    target.write_text("{}\n")
    with pytest.raises(ValueError, match=f"^{target}: refused to write Out of range float values"):
        write_json_atomically({"AP": value}, target)
    assert target.read_text() == "{}\n" and os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a": 1e400}', "the number 1e400 is beyond a float's range"),
        ('{"a": 9223372036854775808}', "the integer 9223372036854775808 is beyond 64 bits"),
    ],
)
def test_strict_json_refuses_numbers_that_are_not_standard_or_bounded(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        loads_strict_json(text)


def test_strict_json_reads_what_the_writer_writes(tmp_path: Path) -> None:
    doc = {"AP": 0.5, "ids": [-(2**63), 2**63 - 1], "tiny": 5e-324, "none": None}
    assert loads_strict_json(write_json_atomically(doc, tmp_path / "r.json").read_bytes()) == doc
