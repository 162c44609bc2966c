"""The ``--help`` of each subcommand says what each flag does, its choices and its one default, from the code."""

from __future__ import annotations

import argparse
import re

import pytest

from balanced_l1.cli import build_parser
from balanced_l1.experiments.config import FIELDS, LR_SCHEDULES, MODELS
from balanced_l1.params import FORMULATIONS


def _subcommand(name: str) -> argparse.ArgumentParser:
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[name]


def _help(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _subcommand(name).parse_args(["--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _option_help(parser: argparse.ArgumentParser, flag: str) -> str:
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    assert action.help, f"{flag} has no help text"
    return " ".join((action.help % {"default": action.default}).split())


def test_every_compare_flag_shows_exactly_one_default() -> None:
    compare = _subcommand("compare")
    for name in FIELDS:
        text = _option_help(compare, "--" + name.replace("_", "-"))
        assert text.count("default") == 1, (name, text)


def test_the_resize_flags_name_their_default_in_words() -> None:
    compare = _subcommand("compare")
    assert _option_help(compare, "--min-size").endswith("(default: --image-size for small, else 800)")
    assert _option_help(compare, "--max-size").endswith("(default: --image-size for small, else 1333)")


@pytest.mark.parametrize(("flag", "choices"), [("--model", MODELS), ("--lr-schedule", LR_SCHEDULES)])
def test_a_flag_with_choices_lists_every_one_of_them(flag: str, choices: tuple[str, ...]) -> None:
    assert f"one of {', '.join(choices)} (default:" in _option_help(_subcommand("compare"), flag)


def test_follow_symlinks_says_it_allows_links_wherever_they_lead() -> None:
    text = _option_help(_subcommand("compare"), "--follow-symlinks")
    assert "symbolic links" in text and "wherever the link leads" in text
    assert "inside the image folder" not in text


def test_balance_help_states_the_default_loss_and_arm(capsys: pytest.CaptureFixture[str]) -> None:
    balance = _subcommand("balance")
    loss_default = balance.get_default("loss")
    assert isinstance(loss_default, str) and loss_default
    assert f"the loss to predict for (default {loss_default})" in _help("balance", capsys)
    assert f"(default {balance.get_default('arm')})" in _option_help(balance, "--arm")


def test_plot_help_describes_the_command_and_each_formulation(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("plot", capsys)
    assert re.search(r"Draw Balanced L1's loss and gradient .* write them to a PNG file", text)
    formulation = _option_help(_subcommand("plot"), "--formulation")
    assert all(name in formulation for name in FORMULATIONS)
    assert f"(default {_subcommand('plot').get_default('formulation')})" in formulation
