"""``--resume`` over files edited behind a matching fingerprint: exit 1 naming the file and the reason, no traceback.

One tiny run is trained once; each test copies its output folder, edits the checkpoint (through ``torch.load`` and
``torch.save``, the fingerprint kept) or the finished-run record, and resumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from balanced_l1.cli import main

SETTINGS = [
    "compare", "--arms", "smooth_l1", "--iters", "2", "--checkpoint-every", "1", "--batch-size", "2",
    "--train-images", "4", "--val-images", "2", "--image-size", "64", "--jobs", "1",
]  # fmt: skip
CHECKPOINT = Path("checkpoints") / "smooth_l1_seed0.pt"
RECORD = Path("runs") / "smooth_l1_seed0.json"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tampered") / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*SETTINGS, "--out", str(out)]) == 0
    return out


def _resume(out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([*SETTINGS, "--out", str(out), "--resume"])
    assert "Traceback" not in err.getvalue()
    return code, err.getvalue()


def _copy(finished: Path, tmp_path: Path, *, keep_record: bool) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "results.json").unlink()
    if not keep_record:
        (out / RECORD).unlink()  # so that --resume continues from the checkpoint
    return out


def _extend(ckpt: dict[str, Any]) -> None:
    ckpt["iteration"] = 5
    ckpt["history"] = ckpt["history"] * 3
    ckpt["history"] = ckpt["history"][:5]
    ckpt["gradient_balance"] = (ckpt["gradient_balance"] * 3)[:5]


def _reshape_a_weight(ckpt: dict[str, Any]) -> None:
    name = next(k for k, v in ckpt["model"].items() if v.dim() == 4)
    ckpt["model"][name] = torch.zeros(1, 1, 1, 1)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda c: c.pop("model"), "not a well-formed checkpoint: it has no 'model'"),
        (lambda c: c.__setitem__("iteration", -5), "not a well-formed checkpoint: 'iteration' must be 0 to 2"),
        (
            lambda c: c.__setitem__("iteration", 2.0),
            "not a well-formed checkpoint: 'iteration' must be a int, got float",
        ),
        (_extend, "not a well-formed checkpoint: 'iteration' must be 0 to 2 (this run's length), got 5"),
        (
            lambda c: c["rng"][0].__setitem__("python", "seed"),
            "not a well-formed checkpoint: the random state of rank 0: 'python' must be",
        ),
        (
            lambda c: c["rng"][0]["numpy"].__setitem__("pos", "0"),
            "not a well-formed checkpoint: the random state of rank 0: 'numpy' must be",
        ),
        (_reshape_a_weight, "does not fit this run: 'model' "),
    ],
)
def test_an_edited_checkpoint_exits_1_naming_it_and_the_problem(
    finished: Path, tmp_path: Path, tamper: Callable[[dict[str, Any]], None], reason: str
) -> None:
    out = _copy(finished, tmp_path, keep_record=False)
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    tamper(ckpt)
    torch.save(ckpt, out / CHECKPOINT)
    code, err = _resume(out)
    assert code == 1
    assert f"{out / CHECKPOINT}: {reason}" in err and "Delete it (or use another --out)" in err
    assert not (out / "results.json").exists()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("metrics", "AP 0.5", "'metrics' must be an object, got str"),
        ("metrics", {"AP": "high"}, "'metrics' needs 'AP' as a finite number, got 'high'"),
        ("history", None, "'history' must be a list, got NoneType"),
        ("history", [{"loss": None}], "'history' entry #0 must map 'loss' and other names to finite numbers"),
        ("gradient_balance", [{"roi_heads": 3}], "'gradient_balance' entry #0 must map stages"),
        ("fingerprint", None, "it has no 'fingerprint'"),
    ],
)
def test_an_edited_run_record_exits_1_naming_it_and_the_problem(
    finished: Path, tmp_path: Path, field: str, value: object, reason: str
) -> None:
    out = _copy(finished, tmp_path, keep_record=True)
    record = json.loads((out / RECORD).read_text())
    if value is None and field == "fingerprint":
        del record[field]
    else:
        record[field] = value
    (out / RECORD).write_text(json.dumps(record))
    code, err = _resume(out)
    assert code == 1
    assert f"{out / RECORD}: not a run record of balanced-l1 compare ({reason}" in err
    assert not (out / "results.json").exists()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('"AP": NaN', "NaN is not a JSON number (NaN and Infinity are not standard JSON)"),
        ('"AP": -Infinity', "-Infinity is not a JSON number"),
        ('"AP": 1e400', "the number 1e400 is beyond a float's range"),
        ('"AP": ' + "9" * 4000, "the integer 99999999999999999999... (4000 digits) is beyond 64 bits"),
    ],
)
def test_a_run_record_with_a_number_that_is_not_standard_or_not_bounded_exits_1_naming_it(
    finished: Path, tmp_path: Path, text: str, reason: str
) -> None:
    out = _copy(finished, tmp_path, keep_record=True)
    record = (out / RECORD).read_text()
    start = record.index('"AP": ')
    (out / RECORD).write_text(record[:start] + text + record[record.index(",", start) :])
    code, err = _resume(out)
    assert code == 1 and "Traceback" not in err
    assert f"{out / RECORD}: cannot read this finished-run record (ValueError: {reason}" in err
    assert not (out / "results.json").exists()


def test_an_untouched_output_folder_resumes(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path, keep_record=False)
    code, _ = _resume(out)
    assert code == 0 and (out / "results.json").exists()


def test_a_checkpoint_past_the_length_of_an_epochs_run_is_refused(tmp_path: Path) -> None:
    settings = [a if a != "--iters" else "--epochs" for a in SETTINGS]  # --epochs 1: 4 images of batch 2, 2 iterations
    settings[settings.index("--epochs") + 1] = "1"
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*settings, "--out", str(out)]) == 0
    (out / RECORD).unlink()  # so that --resume continues from the checkpoint
    ckpt = torch.load(out / CHECKPOINT, weights_only=False)
    _extend(ckpt)
    torch.save(ckpt, out / CHECKPOINT)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([*settings, "--out", str(out), "--resume"])
    assert code == 1 and "Traceback" not in err.getvalue()
    assert "'iteration' must be 0 to 2 (this run's length), got 5" in err.getvalue()
