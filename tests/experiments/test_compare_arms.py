"""``compare`` with parametrised arms end to end, its new outputs, and ``balanced-l1 balance`` on them."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from balanced_l1.cli import main
from balanced_l1.experiments.output_folder.files import ROI_SAMPLE_ROWS

TINY = ["--iters", "4", "--batch-size", "2", "--train-images", "4", "--val-images", "3", "--image-size", "64"]
ARMS = "smooth_l1,balanced_l1(alpha=0.3,gamma=1.0),l1(loss_weight=1.5)"
NAMES = ["smooth_l1", "balanced_l1(alpha=0.3,gamma=1.0)", "l1(loss_weight=1.5)"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("arms") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["compare", *TINY, "--arms", ARMS, "--jobs", "1", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text()), stdout.getvalue()


def test_the_tables_and_results_use_the_canonical_names(finished: tuple[Path, dict[str, Any], str]) -> None:
    _, results, printed = finished
    assert list(results["arms"]) == NAMES
    assert set(results["paired_difference"]) == {f"{n} - smooth_l1" for n in NAMES[1:]}
    assert all(f"| {n} " in printed for n in NAMES)
    assert "with alpha=0.3, gamma=1.0" in results["arms"][NAMES[1]]["description"]


def test_each_run_records_its_parameters_in_its_fingerprint(finished: tuple[Path, dict[str, Any], str]) -> None:
    out, _, _ = finished
    record = json.loads((out / "runs" / "balanced_l1__alpha-0.3__gamma-1.0_seed0.json").read_text())
    assert record["arm"] == NAMES[1]
    assert record["fingerprint"]["arm_parameters"] == {
        "alpha": 0.3, "gamma": 1.0, "beta": 1.0, "formulation": "scaled", "loss_weight": 1.0, "placement": "roi"
    }  # fmt: skip
    l1 = json.loads((out / "runs" / "l1__loss_weight-1.5_seed0.json").read_text())
    assert l1["fingerprint"]["arm_parameters"] == {"loss_weight": 1.5, "placement": "roi"}


def test_each_run_keeps_a_bounded_sample_of_its_roi_positives(finished: tuple[Path, dict[str, Any], str]) -> None:
    out, _, _ = finished
    for stem in ("smooth_l1", "balanced_l1__alpha-0.3__gamma-1.0", "l1__loss_weight-1.5"):
        sample = np.load(out / "runs" / f"{stem}_seed0_roi_sample.npy", allow_pickle=False)
        assert sample.dtype == np.float64 and sample.ndim == 2 and sample.shape[1] == 12
        assert 0 < sample.shape[0] <= ROI_SAMPLE_ROWS and np.isfinite(sample).all()


def test_the_prediction_from_the_baseline_and_the_words_are_reported(
    finished: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, printed = finished
    assert set(results["predicted_from_baseline"]) == set(NAMES)
    assert "predicted from smooth_l1's regression errors" in printed
    assert "of an outlier's box gradient in the RoI head against" in printed
    with Image.open(out / "balance_vs_ap.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_balance_predicts_a_grid_on_the_recorded_errors(
    finished: tuple[Path, dict[str, Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = finished
    assert main(["balance", str(out), "--arm", "smooth_l1", "--alpha", "0.3|0.5", "--gamma", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "smooth_l1 (measured)" in printed
    assert "balanced_l1(alpha=0.3, gamma=1.0)" in printed and "balanced_l1(alpha=0.5, gamma=1.0)" in printed
    assert main(["balance", str(out), "--arm", "smooth_l1", "--loss", "giou", "--loss-weight", "10"]) == 0
    assert "giou(loss_weight=10.0)" in capsys.readouterr().out


def test_balance_solves_alpha_for_the_baselines_measured_ratio(
    finished: tuple[Path, dict[str, Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = finished
    assert main(["balance", str(out), "--arm", "smooth_l1", "--target-arm", "smooth_l1", "--gamma", "1.5"]) == 0
    assert "smooth_l1's measured ratio" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arm", "nope"], "no finished run of arm 'nope'; it has runs of: "),
        (["--loss", "l1", "--alpha", "0.3"], "the l1 loss takes loss_weight; got alpha"),
        (["--alpha", "-1"], "alpha must be finite and > 0"),
        (["--alpha", "x"], "expected float values separated by |"),
        (["--target-ratio", "0"], "--target-ratio must be finite and > 0"),
        (["--target-ratio", "0.5", "--alpha", "0.3"], "give --gamma/--beta only"),
        (["--loss", "foo"], "invalid choice: 'foo'"),
    ],
)
def test_balance_refuses_bad_arguments_with_exit_2(
    finished: tuple[Path, dict[str, Any], str], args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = finished
    with pytest.raises(SystemExit) as exit_info:
        main(["balance", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: balanced-l1 balance" in err and "Traceback" not in err


def test_balance_on_a_folder_that_is_not_one_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["balance", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err


def _runs_with_smooth_l1_sample(out: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``out/runs`` to tamper with, and the path of its smooth_l1 RoI sample."""
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    return copy, copy / "runs" / "smooth_l1_seed0_roi_sample.npy"


def test_a_tampered_sample_exits_1_naming_the_file(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy, sample = _runs_with_smooth_l1_sample(finished[0], tmp_path)
    np.save(sample, np.array([[1.0, 2.0]]), allow_pickle=False)
    assert main(["balance", str(copy), "--arm", "smooth_l1"]) == 1
    err = capsys.readouterr().err
    assert str(sample) in err and "its header declares a float64 array of shape (1, 2)" in err
    with sample.open("wb") as handle:
        np.save(handle, np.array([object()], dtype=object), allow_pickle=True)
    assert main(["balance", str(copy), "--arm", "smooth_l1"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_sample_header_declaring_a_billion_rows_is_refused_before_anything_is_allocated(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy, sample = _runs_with_smooth_l1_sample(finished[0], tmp_path)
    with sample.open("wb") as handle:  # 89 GiB declared, a few bytes written
        header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 12)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 96)
    assert main(["balance", str(copy), "--arm", "smooth_l1"]) == 1
    err = capsys.readouterr().err
    assert f"{sample}: cannot read this run's RoI sample (its header declares a float64 array of shape " in err
    assert "(1000000000, 12); a run writes float64 (K, 12) with K <= 4096" in err and "Traceback" not in err


def test_the_balance_sentence_says_which_way_an_arm_moves_the_ratio() -> None:
    from balanced_l1.experiments.report.balance import explain_balance

    def arm(ratio: float) -> dict[str, Any]:
        return {"gradient_balance_mean": {"gradient_balance": {"inlier_outlier_gradient_ratio": ratio}}}

    lines = explain_balance({"base": arm(0.8), "up": arm(1.2), "down": arm(0.4), "same": arm(0.81)}, "base")
    assert "more of the gradient to inliers" in lines[0] and "+50%" in lines[0]
    assert "less of the gradient to inliers" in lines[1]
    assert "about the same balance" in lines[2]
