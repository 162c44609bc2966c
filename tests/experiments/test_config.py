"""Settings: one dataclass, recipes and config files in layers, flags on top, --print-config."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import pytest

from balanced_l1.cli import main
from balanced_l1.experiments.arms import get_arm
from balanced_l1.experiments.config import DEFAULTS, CompareConfig, resolve
from balanced_l1.experiments.config.checks import ConfigError
from balanced_l1.experiments.config.toml_files import load_config_file, load_recipe, recipe_names, to_toml

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _printed_config(args: list[str]) -> CompareConfig:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", *args, "--print-config"]) == 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "printed.toml"
        path.write_text(out.getvalue())
        return resolve([load_config_file(path)])


def test_no_flags_resolve_to_the_dataclass_defaults() -> None:
    assert _printed_config([]) == DEFAULTS == CompareConfig()


def test_coco_1x_recipe_is_the_mmdetection_schedule() -> None:
    recipe = resolve([load_recipe("coco-1x")])
    assert (recipe.model, recipe.weights_backbone, recipe.batch_size) == ("fasterrcnn_resnet50_fpn", "DEFAULT", 16)
    assert (recipe.lr, recipe.momentum, recipe.weight_decay) == (0.02, 0.9, 1e-4)
    assert (recipe.warmup_iters, recipe.warmup_factor) == (500, 0.001)
    assert (recipe.epochs, recipe.iters, recipe.lr_schedule, recipe.lr_steps) == (12, None, "step", (8, 11))
    assert (recipe.min_size, recipe.max_size, recipe.hflip) == (800, 1333, 0.5)
    recipe.validate()


def test_coco_1x_recipe_trains_the_mmdetection_faithful_libra_arm() -> None:
    recipe = resolve([load_recipe("coco-1x")])
    assert recipe.arms == ("smooth_l1", "balanced_l1", "libra_mmdet")
    assert get_arm("libra_mmdet").name == "libra_mmdet"
    section = README.split("## Reproduce Libra R-CNN on COCO", 1)[1].split("\n## ", 1)[0]
    assert "Its arms are `smooth_l1`, `balanced_l1` and `libra_mmdet`" in " ".join(section.split())


def test_flags_override_the_recipe_and_iters_replaces_its_epochs() -> None:
    config = _printed_config(["--recipe", "coco-1x", "--iters", "200", "--amp", "--lr", "0.01"])
    assert (config.iters, config.epochs, config.amp, config.lr, config.batch_size) == (200, None, True, 0.01, 16)


def test_config_file_sits_between_recipe_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('batch_size = 4\nhflip = 0.25\narms = ["smooth_l1", "libra"]\n')
    config = _printed_config(["--recipe", "coco-1x", "--config", str(path), "--hflip", "0"])
    assert (config.batch_size, config.hflip, config.arms, config.lr) == (4, 0.0, ("smooth_l1", "libra"), 0.02)


def test_printed_config_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    config = dataclasses.replace(resolve([load_recipe("coco-1x")]), seeds=(0, 2), data="some/folder", amp=True)
    path = tmp_path / "round.toml"
    path.write_text(to_toml(config))
    assert resolve([load_config_file(path)]) == config


def test_a_layer_setting_both_iters_and_epochs_is_refused() -> None:
    with pytest.raises(ConfigError, match="give iters or epochs, not both"):
        resolve([{"iters": 10, "epochs": 2}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = 'fast'", "lr must be float, got 'fast'"),
        ("seeds = [0, 'a']", "seeds must be list of integers"),
        ("colour = 3", "unknown setting(s) colour"),
        ("lr = = 1", "not valid TOML"),
    ],
)
def test_bad_config_file_exits_2_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(tmp_path / "none.toml")])
    assert exit_info.value.code == 2 and "cannot read the config file" in capsys.readouterr().err


def test_unknown_recipe_is_refused_listing_the_shipped_ones() -> None:
    assert "coco-1x" in recipe_names()
    with pytest.raises(ConfigError, match="unknown recipe 'coco-9x'; shipped recipes: coco-1x"):
        load_recipe("coco-9x")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "d", "--train-ann", "a.json"], "give either data (a folder) or the annotation files"),
        (["--train-ann", "a.json", "--train-root", "r"], "missing --val-ann, --val-root"),
        (["--epochs", "2", "--iters", "3"], "give iters or epochs, not both"),
        (["--min-size", "400", "--max-size", "300"], "max_size 300 must be >= min_size 400"),
        (["--model", "yolo"], "invalid choice: 'yolo'"),
        (["--device", "meta"], "training needs cpu or cuda[:N], got a 'meta' device"),
        (["--device", "banana"], "--device 'banana'"),
        (["--warmup-factor", "0"], "warmup_factor must be in (0, 1], got 0.0"),
        (["--momentum", "1"], "momentum must be in [0, 1), got 1.0"),
        (["--grad-clip", "-1"], "grad_clip must be finite and >= 0"),
        (["--lr-schedule", "step", "--lr-steps", "3,2"], "lr_steps must be increasing positive integers"),
        (["--balance-every", "0"], "balance_every must be >= 1, got 0"),
        (["--arms", "smooth_l1,l2"], "unknown arm 'l2'; valid arms: smooth_l1, balanced_l1, smooth_l1_beta1, l1,"),
    ],
)
def test_bad_settings_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda:3", 1, "--device 'cuda:3': this machine has 1 CUDA device(s)"),
        ("cuda", 0, "--device 'cuda': CUDA is not available here; use --device cpu"),
    ],
)
def test_a_cuda_device_this_machine_lacks_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    gpus: int,
    message: str,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--device", device, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_setting_has_a_flag_with_the_dataclass_default_in_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for spec in dataclasses.fields(CompareConfig):
        assert "--" + spec.name.replace("_", "-") in text
    assert "(default: 0.04)" in text and "(default: smooth_l1,balanced_l1)" in text
