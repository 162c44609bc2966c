"""The output folder: one run at a time, checked before training, leftovers of a killed run removed."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import io
import os
from pathlib import Path

import pytest

from balanced_l1.cli import main
from balanced_l1.experiments.output_folder import layout

TINY = ["--iters", "1", "--batch-size", "2", "--train-images", "2", "--val-images", "2", "--image-size", "64"]


def _quiet(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["compare", *TINY, *args])


def test_a_second_run_into_a_locked_folder_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".balanced-l1.lock", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running compare holds
        assert _quiet(["--out", str(out)]) == 2
    assert f"out {out} is in use by another balanced-l1 compare run" in capsys.readouterr().err
    assert not (out / "results.json").exists() and not (out / "runs").exists()
    assert _quiet(["--out", str(out)]) == 0  # released: the folder is usable again


def test_an_out_under_a_file_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    with pytest.raises(SystemExit) as exit_info:  # refused with the other settings, before the data are read
        _quiet(["--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"out {out} lies under the file {tmp_path / 'file'}; give a folder" in err


def test_a_folder_where_a_figure_goes_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "loss_curves.png").mkdir(parents=True)
    assert _quiet(["--out", str(out)]) == 2
    assert "loss_curves.png is a folder, where this run writes a file" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_temporary_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".loss_curves.png.abc123de.tmp", out / "checkpoints" / ".smooth_l1_seed0.pt.x9y8z7w6.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = out / "notes.tmp"
    keep.write_text("mine")
    assert _quiet(["--out", str(out), "--arms", "smooth_l1"]) == 0
    assert not any(path.exists() for path in stale) and keep.exists()


def test_an_out_that_cannot_be_written_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see the folder as a user would
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode, **kw: False if Path(path) == out else real_access(path, mode, **kw)
        )
    try:
        assert _quiet(["--out", str(out)]) == 2
    finally:
        out.chmod(0o755)
    assert f"out {out}: the output folder is not writable" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_corrupt_run_record_on_resume_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    record = out / "runs" / "smooth_l1_seed0.json"
    record.write_text('{"fingerprint": ')  # cut off mid-write by an older tool, or edited by hand
    assert _quiet(["--out", str(out), "--arms", "smooth_l1", "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"{record}: cannot read this finished-run record" in err and "delete it to train the run again" in err
    assert not (out / "results.json").exists() and not (out / "checkpoints").exists()


def test_a_full_disk_at_a_checkpoint_exits_1_naming_it_and_the_last_checkpoint_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from balanced_l1.experiments.run.checkpoint import load_checkpoint

    out = tmp_path / "out"
    args = ["--out", str(out), "--arms", "smooth_l1", "--iters", "2", "--checkpoint-every", "1"]
    real_save = torch.save
    saved: list[object] = []

    def full_after_one_checkpoint(obj: object, path: object, *a: object, **kw: object) -> None:
        if isinstance(obj, dict) and "optimizer" in obj:
            saved.append(path)
            if len(saved) > 1:  # what torch.save raises when the disk fills up mid-write
                real_save(obj, path, *a, **kw)
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 490")
        real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", full_after_one_checkpoint)
    assert _quiet(args) == 1
    err = capsys.readouterr().err
    checkpoint = out / "checkpoints" / "smooth_l1_seed0.pt"
    assert f"{checkpoint}: cannot write it (" in err and "unexpected pos 576 vs 490" in err and "free there" in err
    assert "Traceback" not in err and "the last checkpoint is kept" in err and "--resume" in err
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]  # no temporary file left
    fingerprint = torch.load(checkpoint, weights_only=True)["fingerprint"]
    assert load_checkpoint(checkpoint, fingerprint, 1)["iteration"] == 1  # the last checkpoint is whole
    monkeypatch.setattr(torch, "save", real_save)
    assert _quiet([*args, "--resume"]) == 0


def test_tensorboard_events_that_cannot_be_written_exit_1_naming_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "smooth_l1_seed0").write_text("a file where the run's events folder goes")
    assert _quiet(["--out", str(out), "--arms", "smooth_l1", "--tensorboard"]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'tensorboard' / 'smooth_l1_seed0'}: cannot write TensorBoard events there (" in err
    assert "Traceback" not in err


def _names_written_outside_the_owner() -> list[str]:
    """Every string constant outside ``experiments/output_folder/`` that names a file of OUT or a run's file."""
    names = {*layout.OUTPUT_FILES, layout.LOCK_NAME}
    suffixes = ("_model.pt", "_roi_sample.npy")
    src = Path(layout.__file__).resolve().parents[2]
    found = []
    for path in sorted(src.rglob("*.py")):
        if "output_folder" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value
            if text in names or (not any(c.isspace() for c in text) and any(s in text for s in suffixes)):
                found.append(f"{path.relative_to(src)}:{node.lineno}: {text!r}")
    return found


def test_only_the_output_folder_package_names_the_files_of_out() -> None:
    assert not _names_written_outside_the_owner()


def test_a_runs_files_share_one_stem_and_are_found_again_from_its_record(tmp_path: Path) -> None:
    from balanced_l1.experiments.arm_specs import parse_arm
    from balanced_l1.experiments.output_folder.layout import RunFiles

    spec = parse_arm("balanced_l1(alpha=0.3)")[0]
    files = RunFiles.of(tmp_path, spec, 3)
    assert RunFiles.of_record(files.record) == files
    assert {path.parent for path in (files.record, files.model, files.roi_sample)} == {tmp_path / "runs"}
    assert files.record.stem == files.checkpoint.stem == files.tensorboard.name == f"{spec.file_stem}_seed3"
