"""An image that does not decode stops training with exit 1 naming it; after it is fixed, --resume finishes."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from balanced_l1.cli import main
from balanced_l1.experiments.data.coco_data import save_coco_folder
from balanced_l1.experiments.data.loader import DataOrder
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow
ARGS = ["--arms", "smooth_l1", "--iters", "4", "--batch-size", "2", "--checkpoint-every", "1", "--warmup-iters", "2"]


def _first_read_at(iteration: int, num_images: int) -> int:
    """An image index that the seed-0 order reads for the first time at ``iteration``."""
    order = DataOrder(0, num_images)
    earlier = {i for it in range(iteration) for i, _ in order.global_batch(it, 2)}
    return next(i for i, _ in order.global_batch(iteration, 2) if i not in earlier)


def test_a_broken_image_stops_the_run_keeping_a_resumable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits = make_synthetic_dataset(6, 2, image_size=64, seed=3)
    data = save_coco_folder(splits, tmp_path / "data")
    name = splits["train"].coco["images"][_first_read_at(2, 6)]["file_name"]
    image = data / "images" / name
    shutil.copy(image, tmp_path / "good.png")
    image.write_bytes(b"not a png at all")

    out = tmp_path / "out"
    assert main(["compare", *ARGS, "--data", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and "--resume" in err
    assert (out / "checkpoints" / "smooth_l1_seed0.pt").exists() and not (out / "results.json").exists()

    shutil.copy(tmp_path / "good.png", image)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compare", *ARGS, "--data", str(data), "--out", str(out), "--resume"]) == 0
        assert main(["compare", *ARGS, "--data", str(data), "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = (json.loads((d / "results.json").read_text())["arms"] for d in (out, tmp_path / "whole"))
    assert resumed == whole
