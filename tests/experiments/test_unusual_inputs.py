"""``balanced-l1 compare`` refuses unusual inputs with a named file, a reason and an exit status, never a traceback.

* files that are not regular files (FIFO, device, folder) are refused by kind before they are opened, and files over
  a bound by size: ``--config`` (exit 2), annotation files (exit 1), checkpoints under ``--resume`` (exit 1);
* values no data set holds (ids past 64 bits, a 5000-digit number, a lone surrogate in a file name) and a config
  nested 100000 deep;
* symbolic links that lead out of the data folder (without ``--follow-symlinks``) or out of ``--out``.

None of these needs training: each is refused while the settings, the output folder or the data are checked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balanced_l1.cli import main
from balanced_l1.experiments.data import coco_annotations
from balanced_l1.experiments.data.coco_data import DataError, ImageReadError, load_coco_folder, save_coco_folder
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset

TINY = ["--iters", "1", "--batch-size", "2", "--train-images", "2", "--val-images", "2", "--image-size", "64"]


@pytest.fixture(autouse=True)
def _fail_instead_of_hanging() -> Iterator[None]:
    def hang(signum: int, frame: object) -> None:
        raise TimeoutError("blocked: a FIFO was opened for a blocking read or write")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _run(args: list[str]) -> tuple[int, str]:
    """Exit status and standard error of ``balanced-l1 compare`` (``parser.error`` exits 2 by SystemExit)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(["compare", *TINY, *args])
        except SystemExit as exit_info:
            code = int(exit_info.code or 0)
    text = err.getvalue()
    assert "Traceback" not in text
    return code, text


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return save_coco_folder(make_synthetic_dataset(2, 2, image_size=64, seed=1), tmp_path / "data")


def _special(tmp_path: Path, kind: str) -> Path:
    if kind == "device":
        return Path("/dev/zero")
    path = tmp_path / f"special_{kind}"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    return path


KINDS = [("fifo", "a FIFO"), ("device", "a character device"), ("folder", "a folder")]


# --- 1. not regular files, and files too large -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), KINDS)
def test_a_config_file_that_is_not_a_regular_file_exits_2_naming_its_kind(tmp_path: Path, kind: str, name: str) -> None:
    path = _special(tmp_path, kind)
    code, err = _run(["--config", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert f"{path}: the config file is {name}, not a regular file; refused without reading it" in err
    assert not (tmp_path / "out").exists()


def test_a_config_file_over_1_mib_exits_2_stating_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * 110_000)
    code, err = _run(["--config", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert f"{path}: the config file is 1.0 MiB (1100000 bytes), over the limit of 1 MiB for a config file" in err


@pytest.mark.parametrize(("kind", "name"), KINDS)
def test_an_annotation_file_that_is_not_a_regular_file_exits_1_naming_its_kind(
    tmp_path: Path, data: Path, kind: str, name: str
) -> None:
    path = _special(tmp_path, kind)
    roots = ["--train-root", str(data / "images"), "--val-root", str(data / "images")]
    code, err = _run(["--train-ann", str(path), "--val-ann", str(data / "annotations" / "val.json"), *roots,
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 1
    assert f"{path}: the annotation file is {name}, not a regular file; refused without reading it" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_an_annotation_file_of_the_data_folder_that_is_a_fifo_exits_1(tmp_path: Path, data: Path) -> None:
    (data / "annotations" / "val.json").unlink()
    os.mkfifo(data / "annotations" / "val.json")
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{data / 'annotations' / 'val.json'}: the annotation file is a FIFO, not a regular file" in err


def test_an_annotation_file_over_the_bound_exits_1_stating_it(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coco_annotations, "MAX_ANNOTATION_BYTES", 100)
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{data / 'annotations' / 'train.json'}: the annotation file is " in err
    assert "over the limit of 100 bytes for a annotation file (COCO's train2017 annotations are" in err


def test_the_annotation_bound_holds_cocos_largest_file() -> None:
    assert coco_annotations.MAX_ANNOTATION_BYTES == 4 << 30 > 448_000_000 * 9


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_checkpoint_that_is_not_a_regular_file_exits_1_under_resume(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    path = out / "checkpoints" / "smooth_l1_seed0.pt"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    code, err = _run(["--arms", "smooth_l1", "--out", str(out), "--resume"])
    assert code == 1
    assert f"{path}: the checkpoint is {'a FIFO' if kind == 'fifo' else 'a folder'}, not a regular file" in err
    assert not (out / "results.json").exists()


# --- 2. values that no data set holds ----------------------------------------------------------------------------


def _edit(data: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = data / "annotations" / "train.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def _image_id(doc: dict[str, Any], value: int) -> None:
    old, doc["images"][0]["id"] = doc["images"][0]["id"], value
    for ann in doc["annotations"]:
        if ann["image_id"] == old:
            ann["image_id"] = value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda doc: _image_id(doc, 10**30), "every image needs an integer 'id' (64-bit)"),
        (lambda doc: _image_id(doc, 2**63), "every image needs an integer 'id' (64-bit)"),
        (
            lambda doc: doc["images"][0].update(width=10**30),
            "needs a positive integer 'width' (at most 1048576 pixels)",
        ),
        (
            lambda doc: doc["images"][0].update(height=2**20 + 1),
            "needs a positive integer 'height' (at most 1048576 pixels)",
        ),
        (
            lambda doc: doc["annotations"][0].update(id=10**30),
            "needs a positive integer 'id' if given (at most 2**63 - 1)",
        ),
        (lambda doc: doc["categories"][0].update(id=-(2**63) - 1), "every category needs an integer 'id' (64-bit)"),
    ],
)
def test_ids_past_64_bits_and_absurd_sizes_exit_1_naming_the_file(
    tmp_path: Path, data: Path, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    path = _edit(data, change)
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{path}: " in err and reason in err


def test_the_largest_64_bit_ids_are_accepted(data: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        _image_id(doc, 2**63 - 1)
        doc["annotations"][0]["id"] = 2**63 - 1

    _edit(data, change)
    split = load_coco_folder(data)["train"]
    assert split.image_id(0) == 2**63 - 1


def test_no_fresh_annotation_id_past_64_bits_is_made(data: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["annotations"][0]["id"] = 2**63 - 1
        del doc["annotations"][1]["id"]

    path = _edit(data, change)
    with pytest.raises(DataError, match=f"{path}: no 64-bit id is left after the largest given annotation id"):
        load_coco_folder(data)


def test_a_5000_digit_number_exits_1_naming_the_file(tmp_path: Path, data: Path) -> None:
    path = data / "annotations" / "train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["bbox"] = [0, 0, 1, "HUGE"]
    path.write_text(json.dumps(doc).replace('"HUGE"', "9" * 5000))
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{path}: not a readable JSON file (Exceeds the limit" in err


@pytest.mark.parametrize(
    ("file_name", "reason"),
    [
        ("\ud800.png", "cannot be encoded as a file name on this system"),
        ("../x.png", "has a '..' component that escapes the image folder"),
        ("/etc/passwd", "is an absolute path"),
        ("a\u0000.png", "contains a NUL character"),
    ],
)
def test_a_bad_file_name_exits_1_naming_the_file_the_image_and_why_and_promises_no_checkpoint(
    tmp_path: Path, data: Path, file_name: str, reason: str
) -> None:
    path = _edit(data, lambda doc: doc["images"][0].update(file_name=file_name))
    image_id = json.loads(path.read_text())["images"][0]["id"]
    with pytest.raises(DataError, match=reason) as info:
        load_coco_folder(data)
    assert not isinstance(info.value, ImageReadError)
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1 and "Traceback" not in err
    assert f"{path}: image {image_id} has file_name {file_name!r} that {reason}" in err
    assert "checkpoint" not in err and "--resume" not in err and not (tmp_path / "out").exists()


def test_a_config_file_nested_100000_deep_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("arms = " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, err = _run(["--config", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert f"{path}: not valid TOML (nested too deeply)" in err


# --- 4. symbolic links out of the data folder and out of --out -----------------------------------------------------


def _move_out(data: Path, entry: str, outside: Path) -> Path:
    """Move ``data / entry`` to ``outside`` and leave a symbolic link to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    (data / entry).rename(outside)
    (data / entry).symlink_to(outside)
    return data / entry


@pytest.mark.parametrize("entry", ["images", "annotations", "annotations/train.json"])
def test_a_data_folder_entry_linking_out_of_it_exits_1_unless_links_are_allowed(
    tmp_path: Path, data: Path, entry: str
) -> None:
    link = _move_out(data, entry, tmp_path / "elsewhere" / Path(entry).name)
    code, err = _run(["--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{link}: a symbolic link that leads out of the data folder {data}" in err
    assert "--follow-symlinks" in err
    splits = load_coco_folder(data, follow_symlinks=True)  # allowed: the data load as before
    assert len(splits["train"]) == 2 and splits["train"].load_image(0).shape == (64, 64, 3)


def test_data_folder_links_that_stay_inside_it_are_allowed(data: Path) -> None:
    (data / "images").rename(data / "pictures")
    (data / "images").symlink_to("pictures")
    (data / "annotations" / "train.json").rename(data / "train-2024.json")
    (data / "annotations" / "train.json").symlink_to(data / "train-2024.json")
    splits = load_coco_folder(data)
    assert len(splits["train"]) == 2 and splits["train"].load_image(0).shape == (64, 64, 3)


def test_a_lock_file_that_is_a_link_exits_2_and_creates_nothing_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere" / "created"
    target.parent.mkdir()
    (out / ".balanced-l1.lock").symlink_to(target)
    code, err = _run(["--out", str(out)])
    assert code == 2
    assert f"{out / '.balanced-l1.lock'} is a symbolic link, not a regular file" in err
    assert not target.exists() and not (out / "runs").exists()


def test_a_lock_file_that_is_a_fifo_exits_2_without_hanging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".balanced-l1.lock")
    code, err = _run(["--out", str(out)])
    assert code == 2
    assert f"{out / '.balanced-l1.lock'} is a FIFO, not a regular file" in err


@pytest.mark.parametrize("entry", ["runs", "checkpoints", "results.json", "checkpoints/smooth_l1_seed0.pt"])
def test_an_output_path_linking_out_of_out_exits_2(tmp_path: Path, entry: str) -> None:
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    (out / "checkpoints").mkdir(parents=True)
    outside.mkdir()
    target = outside / "t"
    if entry in ("runs", "checkpoints"):
        (out / entry).rmdir() if (out / entry).exists() else None
        target.mkdir()
    (out / entry).symlink_to(target)
    code, err = _run(["--arms", "smooth_l1", "--out", str(out), "--resume"])
    assert code == 2
    assert f"out {out}: {out / entry} is a symbolic link that leads out of the output folder" in err
    assert list(outside.iterdir()) == ([target] if target.is_dir() else [])  # nothing written outside
    assert not (target.is_dir() and any(target.iterdir()))


def test_an_out_that_is_itself_a_link_and_links_inside_it_are_used(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "old_runs").mkdir(parents=True)
    (real / "runs").symlink_to("old_runs")
    (tmp_path / "out").symlink_to(real)
    code, _ = _run(["--arms", "smooth_l1", "--out", str(tmp_path / "out")])
    assert code == 0 and (real / "old_runs" / "smooth_l1_seed0.json").exists()
