"""``compare`` as a training tool (issue 17): evaluate without training, validation during training, pictures,
TensorBoard, plain log lines, config.toml first, and the trained model of each run.

One tiny compare run (module scope, in this process, ``--jobs 1``) is shared by the tests; it trains 4 iterations
per arm with ``--eval-every 2 --log-every 2`` (and ``--tensorboard`` when the extra is installed) while standard
error is a string buffer, that is not a terminal.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from balanced_l1.cli import main
from balanced_l1.experiments.config import as_dict, resolve
from balanced_l1.experiments.config.toml_files import load_config_file
from balanced_l1.experiments.metric_names import METRICS
from balanced_l1.experiments.output_folder.errors import RunsNotFoundError
from balanced_l1.experiments.output_folder.files import saved_config
from balanced_l1.experiments.report.pictures import ARM_COLORS, draw_panel, panel_rows, scale
from balanced_l1.experiments.report.verdict import ONE_SEED
from balanced_l1.experiments.run.checkpoint import load_checkpoint
from balanced_l1.experiments.run.evaluate import coco_metrics, predict
from balanced_l1.experiments.run.runner import load_data, run_fingerprint

ITERS = 4
TINY = ["--iters", str(ITERS), "--batch-size", "2", "--train-images", "4", "--val-images", "3", "--image-size", "64"]
ARMS = ("smooth_l1", "balanced_l1")
HAS_TENSORBOARD = True
try:
    import tensorboard  # noqa: F401
except ImportError:
    HAS_TENSORBOARD = False


@dataclass
class Finished:
    out: Path
    results: dict[str, Any]
    stdout: str
    stderr: str

    def record(self, arm: str, seed: int = 0) -> dict[str, Any]:
        return json.loads((self.out / "runs" / f"{arm}_seed{seed}.json").read_text())


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tool") / "out"
    extra = ["--tensorboard"] if HAS_TENSORBOARD else []
    argv = ["compare", *TINY, "--jobs", "1", "--eval-every", "2", "--log-every", "2", *extra, "--out", str(out)]
    code, stdout, stderr = _run(argv)
    assert code == 0, stderr
    return Finished(out, json.loads((out / "results.json").read_text()), stdout, stderr)


def _exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --- the config first, and the trained model ---------------------------------------------------------------------


def test_config_toml_holds_the_resolved_settings_and_reads_back_with_config(finished: Finished) -> None:
    config = resolve([load_config_file(finished.out / "config.toml")])
    expected = {k: v for k, v in finished.results["config"].items() if k not in ("iters_resolved", "world_size")}
    assert as_dict(config) == expected
    assert config.eval_every == 2 and config.log_every == 2


def test_each_run_writes_its_final_weights_as_a_plain_state_dict(finished: Finished) -> None:
    for arm in ARMS:
        state = torch.load(finished.out / "runs" / f"{arm}_seed0_model.pt", weights_only=True)
        final = load_checkpoint(
            finished.out / "checkpoints" / f"{arm}_seed0.pt", finished.record(arm)["fingerprint"], 1
        )
        assert state.keys() == final["model"].keys()
        assert all(torch.equal(state[k], final["model"][k]) for k in state)
        record = finished.record(arm)
        assert record["num_classes"] == 3 and len(record["category_ids"]) == 3


def test_the_rebuilt_model_gives_the_detections_of_the_model_that_was_evaluated(finished: Finished) -> None:
    from balanced_l1.experiments import load_trained_model
    from balanced_l1.experiments.run.runner import build_arm_model

    config = saved_config(finished.out)
    splits = load_data(config)
    for arm in ARMS:
        rebuilt = load_trained_model(finished.out, arm, 0)
        assert not rebuilt.training
        # the trained model as it was in memory at the end of training: the final checkpoint's weights
        spec = next(s for s in config.arm_specs() if s.name == arm)
        trained = build_arm_model(config, 3, spec)
        ckpt = load_checkpoint(finished.out / "checkpoints" / f"{arm}_seed0.pt", finished.record(arm)["fingerprint"], 1)
        trained.load_state_dict(ckpt["model"])
        device = torch.device("cpu")
        detections = predict(rebuilt, splits["val"], device=device, show_progress=False)
        assert detections == predict(trained, splits["val"], device=device, show_progress=False)
        assert coco_metrics(splits["val"], detections) == finished.record(arm)["metrics"]
        for model in (rebuilt, trained):  # every box, not only those above torchvision's 0.05 (a 4-iteration model)
            model.roi_heads.score_thresh = 0.0
        detections = predict(rebuilt, splits["val"], device=device, show_progress=False)
        assert detections and detections == predict(trained, splits["val"], device=device, show_progress=False)


def test_load_trained_model_refuses_a_missing_run_and_a_grid(finished: Finished) -> None:
    from balanced_l1.experiments import load_trained_model
    from balanced_l1.experiments.config.checks import ConfigError

    with pytest.raises(RunsNotFoundError, match="no finished run of arm 'balanced_l1' and seed 7"):
        load_trained_model(finished.out, "balanced_l1", 7)
    with pytest.raises(ConfigError, match="is a grid of 2 arms"):
        load_trained_model(finished.out, "balanced_l1(alpha=0.3|0.5)", 0)


# --- evaluate ------------------------------------------------------------------------------------------------------


def test_evaluate_reproduces_each_runs_ap_exactly_and_leaves_the_compare_files_alone(
    finished: Finished, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    before = {p: p.read_bytes() for p in [out / "results.json", *sorted((out / "runs").iterdir())]}
    code, stdout, _ = _run(["evaluate", str(out), "--show", "2"])
    assert code == 0
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert set(results["runs"]) == {f"{arm}_seed0" for arm in ARMS}
    for arm in ARMS:
        run = results["runs"][f"{arm}_seed0"]
        assert run["metrics"] == finished.record(arm)["metrics"] == run["metrics_recorded_by_training"]
        assert results["arms"][arm]["per_seed"]["0"]["AP"] == finished.results["arms"][arm]["per_seed"]["0"]["AP"]
    assert "| arm " in stdout and "| smooth_l1 " in stdout and "| balanced_l1 - smooth_l1 | 1 " in stdout
    assert results["verdict"][0]["arm"] == "balanced_l1" and results["verdict"][0]["word"] == ONE_SEED
    assert f"but {ONE_SEED}." in stdout
    assert {p: p.read_bytes() for p in before} == before
    pictures = sorted((out / "evaluate" / "show").iterdir())
    assert [p.name for p in pictures] == ["image1.png", "image2.png"]
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG"


def test_evaluate_on_another_split_given_by_files(finished: Finished, tmp_path: Path) -> None:
    from balanced_l1.experiments.data.coco_data import save_coco_folder

    folder = save_coco_folder(load_data(saved_config(finished.out)), tmp_path / "coco")
    dest = tmp_path / "elsewhere"
    argv = ["evaluate", str(finished.out), "--val-ann", str(folder / "annotations" / "val.json")]
    code, _, _ = _run([*argv, "--val-root", str(folder / "images"), "--out", str(dest)])
    assert code == 0
    results = json.loads((dest / "results.json").read_text())
    assert results["split"].startswith(str(folder / "annotations" / "val.json"))
    for arm in ARMS:  # the same images as PNG files: the same AP
        assert results["runs"][f"{arm}_seed0"]["metrics"] == finished.record(arm)["metrics"]
        assert results["runs"][f"{arm}_seed0"]["metrics_recorded_by_training"] is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("iters = 4", "iters = 3"), "iters (run: 4, config.toml: 3)"),
        (("val_images = 3", "val_images = 5"), "data.val (run: "),
    ],
)
def test_evaluate_refuses_a_run_of_other_settings_or_data(
    finished: Finished, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], expected: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    text = (out / "config.toml").read_text()
    assert edit[0] in text
    (out / "config.toml").write_text(text.replace(edit[0], edit[1]))
    assert main(["evaluate", str(out)]) == 1
    err = capsys.readouterr().err
    assert "balanced-l1 evaluate: error:" in err and "a run of other settings or data than" in err
    assert expected in err
    assert not (out / "evaluate" / "results.json").exists()


def test_evaluate_refuses_a_run_without_saved_weights(finished: Finished, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    (out / "runs" / "balanced_l1_seed0_model.pt").unlink()
    assert main(["evaluate", str(out)]) == 1
    assert "balanced_l1_seed0_model.pt: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("num_classes", "reason"),
    [(10**6, "names 1000000 classes, over the limit of 10000"), (10**30, "is beyond 64 bits")],
)
def test_evaluate_refuses_a_record_naming_too_many_classes_before_building_a_model(
    finished: Finished, tmp_path: Path, capsys: pytest.CaptureFixture[str], num_classes: int, reason: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    path = out / "runs" / "balanced_l1_seed0.json"
    record = json.loads(path.read_text())
    record["num_classes"] = num_classes
    path.write_text(json.dumps(record))
    assert main(["evaluate", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and reason in err and "Traceback" not in err


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64])
def test_evaluate_refuses_weights_of_another_dtype_naming_the_tensor(
    finished: Finished, tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: torch.dtype
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    weights = out / "runs" / "balanced_l1_seed0_model.pt"
    state = torch.load(weights, weights_only=True)
    name = next(k for k, v in state.items() if v.dtype == torch.float32)
    state[name] = state[name].to(dtype)
    torch.save(state, weights)
    assert main(["evaluate", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{weights}: does not fit the run's model: the weights {name!r} is a {dtype} tensor" in err
    assert "Traceback" not in err and not (out / "evaluate" / "results.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--show", "-1"], "argument --show: expected an integer >= 0, got '-1'"),
        (["--show", "two"], "argument --show: expected an integer, got 'two'"),
        (["--val-ann", "x.json"], "give --val-ann and --val-root together"),
        (["--val-root", "images"], "give --val-ann and --val-root together"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_evaluate_bad_arguments_exit_2(
    finished: Finished, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert message in _exit_2(["evaluate", str(finished.out), *args], capsys)


def test_evaluate_needs_a_compare_folder_with_config_and_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "OUT" in _exit_2(["evaluate", str(tmp_path / "missing")], capsys)
    assert "config.toml: no such file" in _exit_2(["evaluate", str(tmp_path)], capsys)
    (tmp_path / "config.toml").write_text("iters = 2\n")
    assert "no finished run (no runs/*.json)" in _exit_2(["evaluate", str(tmp_path)], capsys)
    (tmp_path / "config.toml").write_text("iters = 'two'\n")
    assert "iters must be" in _exit_2(["evaluate", str(tmp_path)], capsys)
    (tmp_path / "config.toml").write_text("iters = " + "9" * 5000 + "\n")
    assert "config.toml: iters holds an integer of 5000 digits" in _exit_2(["evaluate", str(tmp_path)], capsys)


# --- validation during training ------------------------------------------------------------------------------------


def test_eval_every_records_ap_over_training_and_its_last_point_is_the_final_evaluation(finished: Finished) -> None:
    for arm in ARMS:
        record = finished.record(arm)
        assert [point["iteration"] for point in record["validation"]] == [2, 4]
        last = record["validation"][-1]
        assert {name: last[name] for name in METRICS} == {name: record["metrics"][name] for name in METRICS}
    with Image.open(finished.out / "ap_curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_validation_does_not_change_training(finished: Finished, tmp_path: Path) -> None:
    code, _, _ = _run(["compare", *TINY, "--jobs", "1", "--arms", "balanced_l1", "--out", str(tmp_path / "plain")])
    assert code == 0
    plain = json.loads((tmp_path / "plain" / "runs" / "balanced_l1_seed0.json").read_text())
    validated = finished.record("balanced_l1")
    assert [{k: v for k, v in row.items() if not k.startswith("val_")} for row in validated["history"]] == plain[
        "history"
    ]
    assert validated["metrics"] == plain["metrics"] and plain["validation"] == []
    assert validated["fingerprint"] == plain["fingerprint"]  # reporting settings are not part of a run's identity
    assert not (tmp_path / "plain" / "ap_curve.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eval-every", "-1"], "eval_every must be >= 0, got -1"),
        (["--eval-every", "often"], "argument --eval-every: expected an integer, got 'often'"),
        (["--log-every", "0"], "log_every must be >= 1, got 0"),
        (["--log-every", "1.5"], "argument --log-every: expected an integer, got '1.5'"),
    ],
)
def test_bad_reporting_flags_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert message in _exit_2(["compare", *TINY, *args, "--out", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_print_config_shows_the_new_settings_and_config_reads_them(tmp_path: Path) -> None:
    code, stdout, _ = _run(["compare", "--eval-every", "3", "--log-every", "7", "--print-config"])
    assert code == 0
    assert "eval_every = 3" in stdout and "log_every = 7" in stdout and "tensorboard = false" in stdout
    (tmp_path / "c.toml").write_text(stdout)
    config = resolve([load_config_file(tmp_path / "c.toml")])
    assert (config.eval_every, config.log_every, config.tensorboard) == (3, 7, False)


def test_eval_every_counts_epochs_when_the_run_is_given_in_epochs() -> None:
    from balanced_l1.experiments.config import DEFAULTS
    from balanced_l1.experiments.run.runner import train_config

    config = resolve([{"epochs": 3, "eval_every": 2, "batch_size": 4}])
    assert train_config(config, 10).eval_every == 6  # an epoch: ceil(10 / 4) = 3 iterations
    assert train_config(DEFAULTS, 10).eval_every == 0


# --- pictures ------------------------------------------------------------------------------------------------------


def test_detections_png_is_written(finished: Finished) -> None:
    with Image.open(finished.out / "detections.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_the_drawn_boxes_are_the_models_predictions(finished: Finished) -> None:
    from balanced_l1.experiments import load_trained_model

    config = saved_config(finished.out)
    val = load_data(config)["val"]
    models = {arm: load_trained_model(finished.out, arm, 0) for arm in ARMS}
    for model in models.values():  # every box, not only those above torchvision's 0.05 (a 4-iteration model)
        model.roi_heads.score_thresh = 0.0
    indices = [0, 1]
    rows = panel_rows(val, indices, models, torch.device("cpu"), min_score=0.0)
    images = torch.stack([row[1] for row in rows]).float() / 255
    drawn_any = False
    for a, (arm, model) in enumerate(models.items()):
        with torch.no_grad():
            outputs = model(list(images))
        for k, (_, image, panels) in enumerate(rows):
            panel = panels[1 + a]
            assert panel.color == ARM_COLORS[a] and panel.title.startswith(arm)
            order = torch.argsort(outputs[k]["scores"], descending=True, stable=True)[:20]
            assert torch.equal(panel.boxes, outputs[k]["boxes"][order])
            picture = draw_panel(image, panel)
            factor = scale(image)
            color = torch.tensor([int(panel.color[i : i + 2], 16) for i in (1, 3, 5)], dtype=torch.uint8)
            for x1, _, x2, y2 in (panel.boxes * factor).tolist():  # the bottom edge's middle is the box's colour
                x, y = round((x1 + x2) / 2), min(round(y2), picture.shape[1] - 1)
                window = picture[:, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].reshape(3, -1)
                assert any(torch.equal(window[:, i], color) for i in range(window.shape[1]))
                drawn_any = True
        truth = rows[0][2][0]
        assert torch.equal(truth.boxes, val.target(indices[0])["boxes"])
    assert drawn_any


# --- TensorBoard ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard extra is not installed")
def test_tensorboard_event_files_hold_losses_lr_balance_and_ap(finished: Finished) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for arm in ARMS:
        events = EventAccumulator(str(finished.out / "tensorboard" / f"{arm}_seed0"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        expected = {"loss/loss", "loss/loss_box_reg", "loss/loss_classifier", "lr", "val/AP", "val/AP50"}
        assert expected <= tags
        assert any(tag.startswith("gradient_balance/roi_heads/") for tag in tags)
        assert [e.step for e in events.Scalars("loss/loss")] == list(range(1, ITERS + 1))
        assert [e.value for e in events.Scalars("loss/loss")] == pytest.approx(
            [row["loss"] for row in finished.record(arm)["history"]]
        )
        assert [e.step for e in events.Scalars("val/AP")] == [2, 4]


def test_tensorboard_without_the_extra_exits_2_naming_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    err = _exit_2(["compare", *TINY, "--tensorboard", "--out", str(tmp_path / "out")], capsys)
    assert "--tensorboard needs the tensorboard package" in err and "pip install -e '.[tensorboard]'" in err
    assert not (tmp_path / "out").exists()


# --- log lines -----------------------------------------------------------------------------------------------------


def test_the_log_off_a_terminal_is_plain_lines_one_per_run_per_interval(finished: Finished) -> None:
    assert "\r" not in finished.stderr
    log = (finished.out / "log.txt").read_text()
    assert "\r" not in log
    for arm in ARMS:
        progress = [line for line in finished.stderr.splitlines() if f"[{arm} seed 0] iter " in line]
        assert len(progress) == math.ceil(ITERS / 2)
        assert [line.split(" iter ")[1].split()[0] for line in progress] == ["2/4", "4/4"]
        assert all(" lr " in line and " it/s eta " in line and " loss_box_reg " in line for line in progress)
        in_file = [line for line in log.splitlines() if f"[{arm} seed 0] iter " in line]
        assert in_file == progress
        assert sum(f"[{arm} seed 0] validation at iter " in line for line in log.splitlines()) == 2


def test_log_lines_are_appended_whole(tmp_path: Path) -> None:
    from balanced_l1.experiments.run.runlog import LogFile

    with LogFile(tmp_path / "log.txt") as first, LogFile(tmp_path / "log.txt") as second:
        for i in range(50):
            (first if i % 2 else second).line(f"line {i}\nwith a newline")
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 50 and all(line.endswith(f"line {i} with a newline") for i, line in enumerate(lines))


def test_fingerprint_leaves_out_the_reporting_settings(finished: Finished) -> None:
    import dataclasses

    config = saved_config(finished.out)
    spec = config.arm_specs()[0]
    other = dataclasses.replace(config, eval_every=0, log_every=1, tensorboard=not config.tensorboard)
    assert run_fingerprint(config, {}, spec, 0) == run_fingerprint(other, {}, spec, 0)
