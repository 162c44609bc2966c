"""Hostile command lines (issue 22, second pass; issue 20; issue 27): every bad argument exits 2 and writes nothing.

Each case runs ``balanced-l1 compare`` (or ``balance``) in this process and checks the exit status, that the message
names the setting and its value, that no traceback is printed, and that ``--out`` was not created (so no lock file
either).
No case trains: each is refused before any training starts.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import urllib.error
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balanced_l1.cli import main
from balanced_l1.experiments.arms import Arm, register_arm
from balanced_l1.experiments.config import DEFAULTS, FIELDS, CompareConfig, resolve
from balanced_l1.experiments.config.checks import INT_BOUNDS, MAX_ITERS, MAX_WEIGHTS_FILE_BYTES, ConfigError
from balanced_l1.experiments.config.toml_files import load_config_file, to_toml
from balanced_l1.experiments.run.runner import train_config

TINY_DATA = ["--train-images", "2", "--val-images", "2"]
FLOAT_FIELDS = [name for name, spec in FIELDS.items() if str(spec.type) == "float"]
STRING_FIELDS = [name for name, spec in FIELDS.items() if str(spec.type) in ("str", "str | None")]
STRING_LIST_FIELDS = [name for name, spec in FIELDS.items() if str(spec.type) == "tuple[str, ...]"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _int_cases() -> list[tuple[list[str], list[str]]]:
    """Below, above, far above, fractional and empty values of every bounded integer flag."""
    cases = []
    for name, (low, high, _why) in INT_BOUNDS.items():
        flag = _flag(name)
        cases += [
            ([f"{flag}={low - 1}"], [name, str(low - 1)]),
            ([f"{flag}={high + 1}"], [name, str(high + 1), str(high)]),
            ([f"{flag}=99999999999999999999999"], [name, "99999999999999999999999"]),
            ([f"{flag}=1.5"], [flag, "expected an integer, got '1.5'"]),
            ([f"{flag}="], [flag, "expected an integer, got ''"]),
        ]
    return cases


def _float_cases() -> list[tuple[list[str], list[str]]]:
    cases = []
    for name in FLOAT_FIELDS:
        flag = _flag(name)
        cases += [([f"{flag}={value}"], [name, value]) for value in ("nan", "inf", "-inf")]
        cases += [([f"{flag}="], [flag, "expected a number, got ''"]), ([f"{flag}=fast"], [flag, "'fast'"])]
    return cases


def _file_cases(tmp: Path) -> list[tuple[list[str], list[str]]]:
    """Cases that need files: a config file with a NUL in --out, a weights folder, over-long --out names."""
    nul = tmp / "nul.toml"
    nul.write_text('out = "a\\u0000b"\n')
    big = tmp / "big.pth"
    with big.open("wb") as handle:  # sparse: takes no disk space
        handle.truncate(MAX_WEIGHTS_FILE_BYTES + 1)
    huge = tmp / "huge.toml"
    huge.write_text("iters = " + "9" * 5000 + "\n")
    huge_seeds = tmp / "huge_seeds.toml"
    huge_seeds.write_text("seeds = [0, " + "1_" * 4400 + "1]\n")
    long_name = str(tmp / ("x" * 300))
    long_path = str(tmp / "/".join(["d" * 200] * 25))
    return [
        (["--config", str(nul)], ["out 'a\\x00b'", "cannot hold a NUL character"]),  # its own --out
        (
            ["--data", str(tmp / "d"), "--out", str(tmp / "d" / "o")],
            [f"out {tmp / 'd' / 'o'} is inside the data folder"],
        ),
        (
            ["--train-ann", "a", "--train-root", str(tmp), "--val-ann", "b", "--val-root", "c"],
            ["inside the data folder"],
        ),
        (["--config", str(huge)], [f"{huge}: iters holds an integer of 5000 digits, more than Python converts (4300)"]),
        (["--config", str(huge_seeds)], [f"{huge_seeds}: seeds holds an integer of 4401 digits"]),
        (["--model", "fasterrcnn_resnet50_fpn", "--weights-backbone", str(tmp)], ["weights_backbone", "is a folder"]),
        (["--model", "fasterrcnn_resnet50_fpn", "--weights-backbone", str(big)], ["2147483649 bytes), over the limit"]),
        (["--out", long_name], ["out", "is 300 bytes, longer than this file system allows (255 bytes"]),
        (["--out", long_path], ["out", "PC_PATH_MAX"]),
    ]


_GRID_OF_1000 = "balanced_l1(alpha=" + "|".join(f"{0.1 + 0.0001 * i:.4f}" for i in range(1000)) + ")"
_GRID_OF_600 = "balanced_l1(alpha=" + "|".join(f"{0.1 + 0.0001 * i:.4f}" for i in range(600)) + ")"
_GAMMA_GRID_OF_600 = "balanced_l1(gamma=" + "|".join(f"{1 + 0.001 * i:.3f}" for i in range(600)) + ")"
_SEEDS_1000 = ",".join(map(str, range(1000)))

EXAMPLES: list[tuple[list[str], list[str]]] = [
    # the probe's examples
    (["--batch-size", "99999999999999999999999"], ["batch_size must be <= 4096, got 99999999999999999999999"]),
    (["--workers", "1000"], ["workers must be <= 64, got 1000", "separate process"]),
    (["--threads", "100000"], ["threads must be <= 1024, got 100000"]),
    (["--threads", "2147483648"], ["threads must be <= 1024, got 2147483648"]),
    (["--seeds", "4294967296"], ["seeds must be <= 4294967295, got 4294967296", "below 2**32"]),
    (["--seeds", ",".join(map(str, range(1001)))], ["seeds: at most 1000 seeds, got 1001"]),
    (["--seeds", ""], ["seeds must be non-negative integers without repeats, got []"]),
    (["--seeds", "1,1"], ["--seeds", "must not repeat"]),
    (["--seeds", "-1"], ["--seeds", "non-negative integers"]),
    (["--lr", "1e300"], ["lr must be <= 1000, got 1e+300", "float32"]),
    (["--lr-schedule", "step", "--lr-steps", "10001"], ["lr_steps must be <= 10000 (epochs), got 10001"]),
    (["--train-images", "1000000"], ["train_images 1000000", "over the limit of 4 GiB"]),
    (["--weights-backbone", "DEFAULT"], ["weights_backbone 'DEFAULT': the small model", "fasterrcnn_resnet50_fpn"]),
    (["--model", "fasterrcnn_resnet50_fpn", "--weights-backbone", "no/such.pth"], ["'no/such.pth': no such file"]),
    # one bound on the number of runs, arms (grids expanded, over all specs) x seeds
    (
        ["--arms", ",".join([_GRID_OF_1000] * 20), "--seeds", _SEEDS_1000],
        ["more than 1000 runs, the limit", "for the whole comparison"],
    ),
    (
        ["--arms", _GRID_OF_1000, "--seeds", "0,1,2,3,4,5,6,7,8,9,10"],
        ["more than 90 arms (grids expanded) x 11 seed(s)", "more than 1000 runs"],
    ),
    (["--print-config", "--arms", _GRID_OF_1000, "--seeds", "0,1,2,3,4,5,6,7,8,9,10"], ["more than 1000 runs"]),
    (["--arms", f"{_GRID_OF_600},{_GAMMA_GRID_OF_600}", "--seeds", "0"], ["more than 1000 arms", "1000 runs"]),
    # --print-config validates as a run does
    (["--print-config", "--lr", "nan", "--iters", "-5", "--arms", "foo,foo"], ["iters must be >= 1, got -5"]),
    (["--print-config", "--lr", "nan"], ["lr must be finite and > 0, got nan"]),
    (["--print-config", "--iters=-5"], ["iters must be >= 1, got -5"]),
    (["--print-config", "--device", "banana"], ["--device 'banana'"]),
    (["--print-config", "--out", "x\udcff"], ["out 'x\\udcff'", "cannot be written in TOML"]),
    (["--out", "x\udcff"], ["out 'x\\udcff'", "cannot be written in TOML"]),
    # arms, recipes, config files, devices, data
    (["--arms", "smooth_l1,huber"], ["unknown arm 'huber'"]),
    (["--arms", "balanced_l1(alpha=0.3"], ["--arms", "a '(' without its ')'"]),
    (["--arms", "balanced_l1 alpha=0.3)"], ["--arms", "a ')' without its '('"]),
    (["--recipe", "coco-9x"], ["--recipe", "invalid choice: 'coco-9x'"]),
    (["--config", "no_such_config.toml"], ["no_such_config.toml: cannot read the config file (no such file)"]),
    (["--device", "cuda"], ["--device 'cuda': CUDA is not available here"]),
    (["--data", "d", "--train-ann", "a.json"], ["give either data (a folder) or the annotation files", "--train-ann"]),
    (["--iters", "5", "--epochs", "5"], ["give iters or epochs, not both"]),
]


# evaluate: (OUT/config.toml, arguments, what the message says); {OUT} and {TMP} stand for the folders
EVALUATE_EXAMPLES: list[tuple[str, list[str], list[str]]] = [
    # compare's bounds, and OUT/config.toml checked as a --config file is
    ("", ["--threads", "2147483648"], ["--threads must be <= 1024, got 2147483648", "torch starts that many"]),
    ("", ["--threads", "100000"], ["--threads must be <= 1024, got 100000"]),
    ("", ["--threads", "0"], ["--threads must be >= 1, got 0"]),
    ("workers = 65\n", [], ["{OUT}/config.toml: workers must be <= 64, got 65", "separate process"]),
    ("lr = nan\n", [], ["{OUT}/config.toml: lr must be finite and > 0, got nan"]),
    ("iters = " + "9" * 5000 + "\n", [], ["{OUT}/config.toml: iters holds an integer of 5000 digits"]),
    ("arms = ['" + _GRID_OF_1000 + "']\nseeds = [0, 1]\n", [], ["{OUT}/config.toml: arms x seeds", "1000 runs"]),
    # --out: never over what the comparison keeps, never in a data folder, a folder that can be made
    ("", ["--out", "{OUT}"], ["--out {OUT}: it would write over what the comparison keeps in {OUT}"]),
    ("", ["--out", "{OUT}/runs"], ["--out {OUT}/runs: it would write over"]),
    ("", ["--out", "{OUT}/checkpoints/x"], ["--out {OUT}/checkpoints/x: it would write over"]),
    ('data = "{TMP}/data"\n', ["--out", "{TMP}/data/scores"], ["--out {TMP}/data/scores is inside the data folder"]),
    ("", ["--val-ann", "{TMP}/v.json", "--val-root", "{TMP}/img", "--out", "{TMP}/img"], ["inside the data folder"]),
    ("", ["--out", "{TMP}/file"], ["--out {TMP}/file exists and is not a folder"]),
    ("", ["--out", "{TMP}/file/sub"], ["--out {TMP}/file/sub lies under the file {TMP}/file"]),
    ("", ["--out", "{TMP}/" + "x" * 300], ["bytes, longer than this file system allows"]),
]


@pytest.mark.parametrize(("config", "args", "expected"), EVALUATE_EXAMPLES, ids=lambda v: repr(v)[:50])
def test_every_hostile_evaluate_argument_exits_2_naming_it_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, args: list[str], expected: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.toml").write_text(config.replace("{TMP}", str(tmp_path)))
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    argv = [a.replace("{OUT}", str(out)).replace("{TMP}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(out), *argv])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    assert "Traceback" not in captured.err and "usage: balanced-l1 evaluate" in captured.err
    for text in expected:
        assert text.replace("{OUT}", str(out)).replace("{TMP}", str(tmp_path)) in captured.err, captured.err
    assert captured.out == "" and sorted(tmp_path.rglob("*")) == before  # no lock, no results, nothing


def _run(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *args, "--out", str(out)] if "--out" not in args else ["compare", *args])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_cuda_and_no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """No case may get past the lock on --out: one that does fails at once instead of training for minutes."""
    import torch

    from balanced_l1.experiments import compare

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hostile case reached training")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compare, "_compare", refuse)  # what runs once --out is locked


@pytest.mark.parametrize(("args", "expected"), EXAMPLES + _int_cases() + _float_cases(), ids=lambda v: repr(v)[:60])
def test_every_hostile_argument_exits_2_naming_it_without_a_traceback_or_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: list[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(args, out, capsys)
    assert code == 2, err
    assert "Traceback" not in err and "usage: balanced-l1 compare" in err
    for text in expected:
        assert text in err, (text, err)
    assert stdout == ""  # --print-config printed nothing
    assert not out.exists()
    assert not list(tmp_path.rglob(".balanced-l1.lock"))


_GRID_2000 = "|".join(str(0.1 + i / 1000) for i in range(2000))
_GRID_300 = "|".join(str(0.5 + i / 100) for i in range(300))
BALANCE_EXAMPLES: list[tuple[list[str], list[str]]] = [
    # every grid and every solve is bounded: the limit and the reason
    (["--alpha", _GRID_2000, "--gamma", _GRID_2000], ["the grid has 4000000 losses; at most 1000"]),
    (["--target-ratio", "0.5", "--gamma", _GRID_300, "--beta", _GRID_300],
     ["300 gammas x 300 betas are 90000 solves for alpha; at most 100"]),
    # values the loss derives something from that float64 cannot hold
    (["--beta", "5e-324"], ["alpha * beta / b = 0 cannot be represented in float64"]),
    (["--gamma", "1e-320"], ["alpha * beta / b = inf cannot be represented in float64"]),
    (["--target-ratio", "0.5", "--beta", "5e-324"],
     ["gamma=1.5, beta=5e-324: the search for alpha from 0.01875 to 1500 reaches alpha=0.01875",
      "cannot be represented in float64"]),
    (["--target-ratio", "0.5", "--gamma", "1e-320"],
     ["gamma=1e-320, beta=1.0: the search for alpha from", "gamma / alpha must be at most 80"]),
    (["--loss", "smooth_l1", "--beta", "1e-330"], ["beta must be finite and > 0, got 0.0"]),
    (["--loss-weight", "1e300"], ["loss_weight must be <= 10000, got 1e+300"]),
    (["--loss", "giou", "--alpha", "0.3"], ["the giou loss takes loss_weight; got alpha"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), BALANCE_EXAMPLES, ids=lambda v: repr(v)[:60])
def test_every_hostile_balance_argument_exits_2_naming_it_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["balance", str(tmp_path), *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    assert "Traceback" not in captured.err and "usage: balanced-l1 balance" in captured.err
    for text in expected:
        assert text in captured.err, (text, captured.err)
    assert captured.out == "" and not list(tmp_path.iterdir())


def test_hostile_files_and_paths_exit_2_without_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, expected in _file_cases(tmp_path):
        before = sorted(tmp_path.rglob("*"))
        out_args = args if "--out" in args or "--config" in args else [*args, "--out", str(tmp_path / "out")]
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *out_args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert "Traceback" not in err and all(text in err for text in expected), (expected, err)
        assert sorted(tmp_path.rglob("*")) == before


def test_every_integer_setting_has_a_bound_and_accepts_its_limit() -> None:
    integers = {name for name, spec in FIELDS.items() if str(spec.type) in ("int", "int | None")}
    assert integers == set(INT_BOUNDS)
    for name, (_low, high, why) in INT_BOUNDS.items():
        changes: dict[str, object] = {name: high, "data": "some/folder"}  # not synthetic: no memory bound
        if name == "epochs":
            changes["iters"] = None
        if name == "min_size":
            changes["max_size"] = high
        dataclasses.replace(DEFAULTS, **changes).validate()  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=f"{name} must be (<= {high}|between .* and {high} pixels)"):
            dataclasses.replace(DEFAULTS, **{**changes, name: high + 1}).validate()  # type: ignore[arg-type]
        assert why


def test_epochs_that_come_to_more_than_the_iteration_bound_are_refused() -> None:
    config = dataclasses.replace(DEFAULTS, iters=None, epochs=10_000, batch_size=1)
    assert train_config(config, MAX_ITERS // 10_000).iters == MAX_ITERS
    with pytest.raises(ConfigError, match="are 100010000 iterations, over the limit of 100000000"):
        train_config(config, MAX_ITERS // 10_000 + 1)


def test_an_arm_that_does_not_fit_the_model_exits_2_before_out_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(model: object) -> None:
        raise ValueError("this model has no head this arm can use")

    register_arm(Arm("unfit_arm_for_test", "never fits", refuse))
    try:
        out = tmp_path / "out"
        code = main(["compare", *TINY_DATA, "--jobs", "1", "--arms", "smooth_l1,unfit_arm_for_test", "--out", str(out)])
    finally:
        from balanced_l1.experiments import arms

        del arms._REGISTRY["unfit_arm_for_test"]
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "arm 'unfit_arm_for_test' cannot be used with model 'small': this model has no head" in err
    assert not out.exists()


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned_by_backbone_weights",))


@pytest.mark.parametrize("kind", ["pickle payload", "text file", "other state_dict", "DEFAULT offline"])
def test_backbone_weights_that_cannot_be_had_exit_1_before_out_is_touched_without_torchs_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    import torch
    import torchvision.models._api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "backbone.pth"
    if kind == "pickle payload":
        torch.save({"conv.weight": _Payload()}, weights)
    elif kind == "text file":
        weights.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "other state_dict":
        torch.save({"fc.weight": torch.zeros(2, 2), "x": torch.zeros(1)}, weights)
    source = "DEFAULT" if kind == "DEFAULT offline" else str(weights)
    out = tmp_path / "out"
    argv = ["compare", *TINY_DATA, "--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights-backbone", source]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("backbone" in err or str(weights) in err), err
    assert "weights_only=False" not in err and "weights_only` set to `False`" not in err and "likely succeed" not in err
    assert not out.exists() and not (tmp_path / "pwned_by_backbone_weights").exists()


def test_bad_data_exits_1_before_out_is_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (tmp_path / "data").mkdir()
    assert main(["compare", "--data", str(tmp_path / "data"), "--out", str(out)]) == 1
    assert "annotation file not found" in capsys.readouterr().err
    assert not out.exists()


def test_plot_errors_show_the_plot_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--out", str(tmp_path / "curve.txt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: balanced-l1 plot" in err and "must name a .png file" in err


_TEXT = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    strings=st.fixed_dictionaries({name: _TEXT for name in STRING_FIELDS}),
    lists=st.fixed_dictionaries({name: st.lists(_TEXT, max_size=3).map(tuple) for name in STRING_LIST_FIELDS}),
)
def test_any_string_setting_reads_back_equal_from_to_toml(
    strings: dict[str, str], lists: dict[str, tuple[str, ...]]
) -> None:
    config = dataclasses.replace(DEFAULTS, **strings, **lists)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "settings.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        loaded = load_config_file(path)
    assert resolve([loaded]) == config
    assert {name: loaded[name] for name in (*strings, *lists)} == {**strings, **lists}


def test_control_characters_and_quotes_in_out_are_escaped_in_the_printed_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / 'a\nb"c\\d\te\x7f\x1b')
    assert main(["compare", "--out", out, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'a\\nb\\"c\\\\d\\te\\u007F\\u001B"' in printed
    (tmp_path / "printed.toml").write_text(printed)
    assert resolve([load_config_file(tmp_path / "printed.toml")]) == CompareConfig(out=out)
    assert not Path(out).exists()
