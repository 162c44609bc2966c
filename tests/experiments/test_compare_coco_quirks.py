"""``balanced-l1 compare`` end to end on a folder in COCO's own layout with real COCO's quirks.

With the small model, and with torchvision's MobileNetV3-FPN Faster R-CNN (random backbone, 128-pixel
resize) for every registered arm, a few iterations each.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from tests.experiments.data.coco_fixture import write_coco_quirks

from balanced_l1.cli import main
from balanced_l1.experiments.arms import arm_names, get_arm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quirks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_coco_quirks(tmp_path_factory.mktemp("coco"))


def _compare(quirks: dict[str, Any], out: Path, *extra: str) -> tuple[int, str, dict[str, Any] | None]:
    data = [
        "--train-ann", str(quirks["train_ann"]), "--train-root", str(quirks["train_root"]),
        "--val-ann", str(quirks["val_ann"]), "--val-root", str(quirks["val_root"]),
    ]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["compare", *data, "--iters", "2", "--batch-size", "2", "--out", str(out), *extra])
    results = out / "results.json"
    return code, stdout.getvalue(), json.loads(results.read_text()) if results.exists() else None


def test_the_small_model_trains_and_scores_on_the_quirky_folder(quirks: dict[str, Any], tmp_path: Path) -> None:
    code, printed, results = _compare(quirks, tmp_path / "out")
    assert code == 0 and results is not None
    report = results["data"]["train"]
    expected = quirks["report"]["train"]
    for key in ("degenerate_boxes_dropped", "boxes_clipped", "crowd_regions", "images_without_annotations"):
        assert report[key] == expected[key] > 0, key
    assert "zero width or height: dropped" in printed and "crowd regions (evaluation only)" in printed
    for arm in results["arms"].values():
        assert 0.0 <= arm["mean"]["AP"] <= 1.0
        assert arm["per_seed"]["0"]["gradient_balance"]["inlier_fraction"] is not None


def _package_arms() -> list[str]:
    """The package's own arms: not those that test modules register for their own cases (a diverging one among them),
    which stay registered in this process once their module is collected."""
    return [name for name in arm_names() if not get_arm(name).configure.__module__.startswith("tests.")]


def test_every_arm_trains_a_mobilenet_v3_fpn_on_the_quirky_folder(quirks: dict[str, Any], tmp_path: Path) -> None:
    arms = ",".join(_package_arms())
    model = ["--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights-backbone", "none"]
    code, _, results = _compare(
        quirks, tmp_path / "out", *model, "--min-size", "128", "--max-size", "128", "--arms", arms, "--jobs", "1"
    )
    assert code == 0 and results is not None
    assert list(results["arms"]) == _package_arms()
    for name, arm in results["arms"].items():
        assert 0.0 <= arm["mean"]["AP"] <= 1.0, name
        assert arm["per_seed"]["0"]["gradient_balance"] is not None, name
