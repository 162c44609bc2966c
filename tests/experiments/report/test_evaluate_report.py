"""COCO scoring through pycocotools, statistics over seeds, the table and results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balanced_l1.experiments.data.synthetic import make_synthetic_split
from balanced_l1.experiments.metric_names import IOU_THRESHOLDS, METRICS
from balanced_l1.experiments.output_folder.files import write_results
from balanced_l1.experiments.report.summary import ap_points, format_table, mean_std, summarize
from balanced_l1.experiments.run.evaluate import coco_metrics


@pytest.fixture(scope="module")
def split() -> Any:
    return make_synthetic_split("val", 6, seed=3)


def _ground_truth_as_detections(split: Any, shift: float = 0.0) -> list[dict[str, Any]]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 0.9,
            "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]],
        }
        for a in split.coco["annotations"]
    ]


def test_perfect_detections_score_ap_one(split: Any) -> None:
    metrics = coco_metrics(split, _ground_truth_as_detections(split))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["ap_per_iou"] == pytest.approx([1.0] * len(IOU_THRESHOLDS))


def test_no_detections_score_zero(split: Any) -> None:
    metrics = coco_metrics(split, [])
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["ap_per_iou"] == [0.0] * 10


def test_shifted_boxes_lose_ap_at_strict_iou_first(split: Any) -> None:
    # shifting by 20% of the width gives IoU 0.8/1.2 = 0.67: a hit at IoU 0.5, a miss at 0.75
    metrics = coco_metrics(split, _ground_truth_as_detections(split, shift=0.2))
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert metrics["ap_per_iou"][:4] == pytest.approx([1.0] * 4) and metrics["ap_per_iou"][4:] == pytest.approx(
        [0.0] * 6
    )


def test_size_range_without_ground_truth_gives_minus_one() -> None:
    tiny = make_synthetic_split("val", 1, seed=0)
    tiny.coco["annotations"] = [a for a in tiny.coco["annotations"] if a["area"] < 32**2][:1]
    metrics = coco_metrics(tiny, _ground_truth_as_detections(tiny))
    assert metrics["APs"] == pytest.approx(1.0) and metrics["APm"] == -1.0 and metrics["APl"] == -1.0


def test_mean_std_uses_sample_standard_deviation() -> None:
    assert mean_std([0.2, 0.4, 0.9]) == pytest.approx((0.5, 0.36055512754639896))


def test_mean_std_of_one_value_has_no_std() -> None:
    assert mean_std([0.3]) == (0.3, None)


def test_mean_std_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def _metrics(ap: float, apl: float = 0.5) -> dict[str, Any]:
    values = dict.fromkeys(METRICS, ap) | {"APl": apl}
    return values | {"ap_per_iou": [ap] * 10}


RUNS = {
    "smooth_l1": {0: _metrics(0.30), 1: _metrics(0.40), 2: _metrics(0.20, apl=-1.0)},
    "balanced_l1": {0: _metrics(0.35), 1: _metrics(0.41), 2: _metrics(0.29, apl=-1.0)},
}


def test_summary_gives_mean_and_std_per_arm() -> None:
    arms = summarize(RUNS, "smooth_l1", {})["arms"]
    assert arms["smooth_l1"]["mean"]["AP"] == pytest.approx(0.3) and arms["smooth_l1"]["std"]["AP"] == pytest.approx(
        0.1
    )
    assert arms["balanced_l1"]["per_seed"]["2"]["AP"] == 0.29


def test_paired_difference_is_per_seed_then_mean_and_std() -> None:
    diff = summarize(RUNS, "smooth_l1", {})["paired_difference"]["balanced_l1 - smooth_l1"]
    assert diff["per_seed"]["0"]["AP"] == pytest.approx(0.05)
    assert diff["mean"]["AP"] == pytest.approx(0.05) and diff["std"]["AP"] == pytest.approx(0.04)


def test_minus_one_metrics_stay_minus_one_and_have_no_difference() -> None:
    summary = summarize(RUNS, "smooth_l1", {})
    assert summary["arms"]["smooth_l1"]["mean"]["APl"] == -1.0
    assert summary["paired_difference"]["balanced_l1 - smooth_l1"]["mean"]["APl"] is None


def test_without_the_baseline_there_are_no_differences() -> None:
    assert summarize({"balanced_l1": RUNS["balanced_l1"]}, "smooth_l1", {})["paired_difference"] == {}


def test_table_shows_percent_mean_std_and_signed_differences() -> None:
    table = format_table(summarize(RUNS, "smooth_l1", {}))
    assert "| smooth_l1 " in table and "30.0 ± 10.0" in table
    assert "| balanced_l1 - smooth_l1 | 3 " in table and "+5.0 ± 4.0" in table and "n/a" in table


def test_results_json_is_written_whole(tmp_path: Path) -> None:
    path = write_results({"arms": {}}, tmp_path / "out")
    assert json.loads(path.read_text()) == {"arms": {}}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_results_json_is_readable_by_others_like_the_figures(tmp_path: Path) -> None:
    path = write_results({"arms": {}}, tmp_path / "out")
    assert path.stat().st_mode & 0o777 == 0o644


def test_ap_points_give_the_verdict_each_arms_ap_per_seed_in_percent() -> None:
    runs = RUNS | {"giou": {0: _metrics(0.33), 1: _metrics(-1.0)}}
    assert ap_points(summarize(runs, "smooth_l1", {})["arms"]) == {
        "smooth_l1": {0: pytest.approx(30.0), 1: pytest.approx(40.0), 2: pytest.approx(20.0)},
        "balanced_l1": {0: pytest.approx(35.0), 1: pytest.approx(41.0), 2: pytest.approx(29.0)},
        "giou": {0: pytest.approx(33.0)},  # pycocotools' -1 (no ground truth) has no AP to compare
    }


def test_the_difference_rows_carry_no_test_of_their_own() -> None:
    summary = summarize(RUNS, "smooth_l1", {})
    assert set(summary["paired_difference"]["balanced_l1 - smooth_l1"]) == {"per_seed", "mean", "std"}
    assert "paired t" not in format_table(summary) and " p = " not in format_table(summary)
