"""``balanced-l1 compare`` end to end with tiny settings, and its refusals before any training."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from balanced_l1.cli import main
from balanced_l1.detection.gradient_balance import STATISTICS
from balanced_l1.experiments.data.coco_data import save_coco_folder
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset
from balanced_l1.experiments.metric_names import METRICS
from balanced_l1.experiments.report.verdict import compare_to_baseline, verdict_lines

TINY = ["--iters", "2", "--batch-size", "2", "--train-images", "4", "--val-images", "3", "--image-size", "64"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("compare") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["compare", *TINY, "--seeds", "0,1", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text()), stdout.getvalue()


def test_results_hold_metrics_per_seed_and_their_mean_for_both_arms(finished: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = finished
    assert list(results["arms"]) == ["smooth_l1", "balanced_l1"]
    for arm in results["arms"].values():
        assert set(arm["per_seed"]) == {"0", "1"}
        assert set(arm["mean"]) == set(METRICS) and set(arm["std"]) == set(METRICS)
        for metrics in arm["per_seed"].values():
            assert len(metrics["ap_per_iou"]) == 10
            assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in [*(metrics[m] for m in METRICS), *metrics["ap_per_iou"]])
    assert set(results["paired_difference"]) == {"balanced_l1 - smooth_l1"}
    assert results["config"]["seeds"] == [0, 1] and results["config"]["iters"] == 2


def test_figures_are_valid_pngs(finished: tuple[Path, dict[str, Any], str]) -> None:
    out, _, _ = finished
    for name in ("loss_curves.png", "ap_vs_iou.png", "gradient_balance.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
            image.verify()


def test_table_is_printed_with_a_row_per_arm_and_the_difference(finished: tuple[Path, dict[str, Any], str]) -> None:
    _, _, printed = finished
    assert "| arm " in printed and "| smooth_l1 " in printed and "| balanced_l1 - smooth_l1 | 2 " in printed


def test_results_hold_the_verdict_of_each_arm_against_the_first(finished: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = finished
    ap = {arm: {int(s): 100 * m["AP"] for s, m in data["per_seed"].items()} for arm, data in results["arms"].items()}
    [verdict] = results["verdict"]
    assert verdict == compare_to_baseline(ap, "smooth_l1")[0].as_dict()
    assert verdict["arm"] == "balanced_l1" and verdict["baseline"] == "smooth_l1" and verdict["seeds"] == [0, 1]
    assert verdict["p_value"] is not None and verdict["ci_low"] <= verdict["mean_difference"] <= verdict["ci_high"]
    assert verdict["word"] in {"better", "worse", "not resolved with 2 seeds"}


def test_the_printed_ap_table_ends_with_the_verdict(finished: tuple[Path, dict[str, Any], str]) -> None:
    _, results, printed = finished
    ap = {arm: {int(s): 100 * m["AP"] for s, m in data["per_seed"].items()} for arm, data in results["arms"].items()}
    lines = verdict_lines(compare_to_baseline(ap, "smooth_l1"))
    table_end = printed.index("| balanced_l1 - smooth_l1 | 2 ")
    assert printed.index("\n".join(lines)) > table_end
    assert printed.index("\n".join(lines)) < printed.index("gradient balance, second half of training")


def test_each_run_keeps_its_loss_history(finished: tuple[Path, dict[str, Any], str]) -> None:
    out, _, _ = finished
    record = json.loads((out / "runs" / "balanced_l1_seed1.json").read_text())
    assert len(record["history"]) == 2 and {"loss", "loss_box_reg", "loss_rpn_box_reg"} <= set(record["history"][0])


def test_arms_start_from_the_same_weights_and_data_so_first_losses_match_outside_box_terms(
    finished: tuple[Path, dict[str, Any], str],
) -> None:
    out, _, _ = finished
    first = [
        json.loads((out / "runs" / f"{arm}_seed0.json").read_text())["history"][0]
        for arm in ("smooth_l1", "balanced_l1")
    ]
    assert first[0]["loss_classifier"] == first[1]["loss_classifier"]
    assert first[0]["loss_objectness"] == first[1]["loss_objectness"]
    assert first[0]["loss_box_reg"] != first[1]["loss_box_reg"]


def test_every_run_records_its_gradient_balance_series_and_second_half_means(
    finished: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, printed = finished
    for arm, data in results["arms"].items():
        for seed, entry in data["per_seed"].items():
            record = json.loads((out / "runs" / f"{arm}_seed{seed}.json").read_text())
            series = record["gradient_balance"]
            assert len(series) == 2 and set(series[0]) == {"roi_heads", "rpn"}
            assert set(entry["gradient_balance"]) == set(STATISTICS)
            assert set(entry["rpn_gradient_balance"]) == set(STATISTICS)
            second = series[1]["roi_heads"]["inlier_fraction"]  # the second half of 2 iterations is the last one
            assert entry["gradient_balance"]["inlier_fraction"] == second
            assert entry["rpn_gradient_balance"]["box_cls_gradient_ratio"] is None  # measured for the RoI head only
        assert set(data["gradient_balance_mean"]) == {"gradient_balance", "rpn_gradient_balance"}
    assert "in/out grad" in printed and "gradient balance, second half of training" in printed


def test_the_baseline_arms_switch_the_roi_head_loss_they_name_and_leave_the_rpn_to_torchvision() -> None:
    import torch
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from balanced_l1.detection import build_small_faster_rcnn
    from balanced_l1.experiments.arms import get_arm

    for arm, loss, values in (
        ("smooth_l1_beta1", "smooth_l1", {"beta": 1.0}),
        ("l1", "l1", {}),
        ("balanced_l1", "balanced_l1", {"alpha": 0.5, "gamma": 1.5, "beta": 1.0, "formulation": "scaled"}),
    ):
        torch.manual_seed(0)
        model = build_small_faster_rcnn(3)
        get_arm(arm).apply(model, {})
        config = model.roi_heads.balanced_l1_config
        assert (config.loss, dict(config.values)) == (loss, values), arm
        assert type(model.rpn) is RegionProposalNetwork, arm


def _assert_refused_before_training(out: Path) -> None:
    assert not (out / "results.json").exists()
    assert not (out / "checkpoints").exists()


def test_unknown_arm_exits_2_listing_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--arms", "smooth_l1,huber", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "arms: arm 'smooth_l1,huber'" not in (err := capsys.readouterr().err)
    assert "unknown arm 'huber'; valid arms: smooth_l1, balanced_l1, smooth_l1_beta1, l1, giou" in err
    _assert_refused_before_training(tmp_path / "out")


@pytest.mark.parametrize(
    ("seeds", "reason"), [("0,a", "non-negative integers"), ("1,1", "must not repeat"), ("-1", "non-negative")]
)
def test_bad_seed_list_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], seeds: str, reason: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--seeds", seeds, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and reason in err
    _assert_refused_before_training(tmp_path / "out")


def test_zero_iters_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--iters", "0", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "iters must be >= 1, got 0" in capsys.readouterr().err


def test_a_broken_held_out_image_exits_1_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = save_coco_folder(make_synthetic_dataset(2, 2, image_size=64), tmp_path / "data")
    (data / "images" / "val_00001.png").write_bytes(b"broken")
    code = main(["compare", *TINY, "--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "val_00001.png: cannot decode" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_annotation_file_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    code = main(["compare", *TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"{tmp_path / 'data' / 'annotations' / 'train.json'}: annotation file not found" in capsys.readouterr().err
    _assert_refused_before_training(tmp_path / "out")


def test_coco_folder_trains_and_evaluates(tmp_path: Path) -> None:
    data = save_coco_folder(make_synthetic_dataset(2, 2, image_size=64, seed=4), tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            ["compare", *TINY, "--iters", "1", "--arms", "smooth_l1", "--data", str(data), "--out", str(tmp_path / "o")]
        )
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert code == 0 and results["config"]["data"] == str(data) and list(results["arms"]) == ["smooth_l1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "lr must be finite and > 0, got 0.0"),
        (["--image-size", "32"], "image_size must be between 64 and 4096 pixels, got 32"),
        (["--image-size", "100000"], "image_size must be between 64 and 4096 pixels, got 100000"),
        (["--min-size", "9000"], "min_size must be between 32 and 4096 pixels, got 9000"),
        (["--hflip", "1.5"], "hflip must be a probability in [0, 1], got 1.5"),
        (["--lr-schedule", "cosine", "--lr-steps", "2"], "lr_steps [2] need lr_schedule 'step'"),
        (["--workers", "-1"], "workers must be >= 0, got -1"),
        (["--warmup-iters", "-1"], "warmup_iters must be >= 0, got -1"),
        (["--data-seed", "-1"], "data_seed must be >= 0, got -1"),
    ],
)
def test_out_of_range_setting_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    _assert_refused_before_training(tmp_path / "out")


def test_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_resume_reuses_finished_runs_of_the_same_settings(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    out, results, _ = finished
    shutil.copytree(out / "runs", tmp_path / "out" / "runs")
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["compare", *TINY, "--seeds", "0,1", "--out", str(tmp_path / "out"), "--resume"])
    assert code == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["arms"] == results["arms"]


def test_resume_refuses_a_finished_run_of_other_settings(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = finished
    shutil.copytree(out / "runs", tmp_path / "out" / "runs")
    code = main(["compare", *TINY, "--iters", "3", "--seeds", "0,1", "--out", str(tmp_path / "out"), "--resume"])
    assert code == 1
    assert "smooth_l1_seed0.json: finished by a run with other settings" in capsys.readouterr().err
    _assert_refused_before_training(tmp_path / "out")


def test_diverging_loss_exits_1_and_leaves_no_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"left": "by an earlier run"}')
    args = [*TINY, "--iters", "4", "--warmup-iters", "0", "--lr", "1000", "--grad-clip", "0", "--arms", "smooth_l1"]
    code = main(["compare", *args, "--out", str(out)])
    assert code == 1
    assert "smooth_l1 seed 0: loss became nan" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_runs_side_by_side_give_exactly_the_results_of_runs_one_after_another(
    finished: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    out, results, _ = finished  # the fixture ran with the default --jobs 2
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compare", *TINY, "--seeds", "0,1", "--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    serial = json.loads((tmp_path / "serial" / "results.json").read_text())
    assert serial["arms"] == results["arms"] and serial["paired_difference"] == results["paired_difference"]
    for record in (out / "runs").glob("*.json"):
        history = json.loads(record.read_text())["history"]
        assert json.loads((tmp_path / "serial" / "runs" / record.name).read_text())["history"] == history


def test_a_run_failing_in_a_side_process_exits_1_with_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TINY, "--iters", "4", "--warmup-iters", "0", "--lr", "1000", "--grad-clip", "0", "--jobs", "2"]
    code = main(["compare", *args, "--out", str(tmp_path / "out")])
    assert code == 1
    assert "loss became nan" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_amp_on_cpu_trains_in_bfloat16_and_records_the_gradient_balance(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["compare", *TINY, "--amp", "--arms", "balanced_l1", "--balance-every", "1", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "runs" / "balanced_l1_seed0.json").read_text())
    assert all(r["roi_heads"]["box_cls_gradient_ratio"] is not None for r in record["gradient_balance"])
