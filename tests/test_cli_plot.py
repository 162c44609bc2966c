"""`balanced-l1 plot`: a PNG for good arguments, a clear message and exit code 2 for bad ones."""

import os
from pathlib import Path

import pytest

from balanced_l1.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "fig" / "loss.png"
    assert main(["plot", "--beta", "0.11", "--formulation", "mmdet", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert str(out) in capsys.readouterr().out
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--beta", "-1"], "beta must be finite and > 0, got -1.0"),
        (["--alpha", "nan"], "alpha must be finite and > 0, got nan"),
        (["--gamma", "abc"], "argument --gamma: invalid float value: 'abc'"),
        (["--formulation", "paper"], "argument --formulation: invalid choice: 'paper'"),
        (["--out", "loss.pdf"], "--out must name a .png file, got 'loss.pdf'"),
    ],
)
def test_bad_plot_arguments_exit_2_with_a_clear_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_plot_out_that_is_a_folder_exits_2(tmp_path, capsys):
    (tmp_path / "fig.png").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--out", str(tmp_path / "fig.png")])
    assert exit_info.value.code == 2
    assert "is a folder; name a .png file" in capsys.readouterr().err


def test_plot_out_under_a_file_exits_2_naming_the_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--out", str(tmp_path / "file" / "fig.png")])
    assert exit_info.value.code == 2
    assert f"cannot create the folder {str(tmp_path / 'file')!r}" in capsys.readouterr().err


def test_plot_out_with_a_name_too_long_for_the_file_system_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--out", str(tmp_path / ("x" * 300 + ".png"))])
    assert exit_info.value.code == 2
    assert "the file name is longer than this file system allows" in capsys.readouterr().err


def test_plot_out_with_a_long_but_valid_name_is_written(tmp_path):
    out = tmp_path / ("x" * 240 + ".png")  # 244 bytes: valid, though a temporary name beside it must be shorter
    assert main(["plot", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def _read_only(folder, monkeypatch):
    """Make ``folder`` read-only; as root (who writes anywhere) make the permission check see it as a user would."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, **kwargs):
            if Path(path) == folder and mode & os.W_OK:
                return False
            return real_access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)


def test_plot_out_in_a_read_only_folder_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    _read_only(folder, monkeypatch)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["plot", "--out", str(folder / "fig.png")])
    finally:
        folder.chmod(0o755)
    assert exit_info.value.code == 2
    assert f"the folder {str(folder)!r} is not writable" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_plot_out_with_a_missing_parent_creates_it(tmp_path):
    out = tmp_path / "a" / "b" / "fig.png"
    assert main(["plot", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_defaults_are_the_loss_defaults():
    import dataclasses

    from balanced_l1.cli import build_parser
    from balanced_l1.params import BalancedL1Params

    args = build_parser().parse_args(["plot"])
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(BalancedL1Params)} == dataclasses.asdict(
        BalancedL1Params()
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--beta", "1e300"],
        ["--beta", "1e-300", "--formulation", "mmdet"],
        ["--alpha", "1e-300", "--gamma", "1e-300"],
        ["--alpha", "1", "--gamma", "80", "--beta", "1e300", "--formulation", "mmdet"],
    ],
)
def test_plot_of_extreme_parameters_writes_a_png_without_warnings(argv, tmp_path, capsys):
    import warnings

    out = tmp_path / "loss.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning was the symptom of a blank curve
        assert main(["plot", *argv, "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().err == ""


def test_plot_of_parameters_whose_curves_exceed_float64_exits_2_naming_the_bound(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--alpha", "1e308", "--gamma", "1e308", "--out", str(tmp_path / "loss.png")])
    assert exit_info.value.code == 2
    assert "the largest gradient 1e+308 must be at most 4.49423e+307" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
