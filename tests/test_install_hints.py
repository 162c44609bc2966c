"""Install hints name what works while version 0.1.0 is unreleased: ``pip install -e '.[EXTRA]'`` in a clone.

No package index has a release of balanced-l1, so a hint such as ``pip install "balanced-l1[mmdet]"`` fails
for whoever follows it: no message, help text or page may give one.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_FROM_AN_INDEX = re.compile(r"pip install\s+(?:-[-\w]+\s+)*[\"']?balanced-l1\b")


def _texts() -> list[Path]:
    sources = sorted((ROOT / "src").rglob("*.py"))
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sources]


def test_no_text_installs_balanced_l1_from_a_package_index() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in _texts()
        for match in _FROM_AN_INDEX.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders


def test_the_pattern_catches_the_hints_it_is_for() -> None:
    for hint in (
        'pip install "balanced-l1[mmdet]"',
        "pip install 'balanced-l1[tensorboard]'",
        "pip install -q balanced-l1",
    ):
        assert _FROM_AN_INDEX.search(hint), hint
    assert not _FROM_AN_INDEX.search("pip install -e '.[mmdet]'")


def test_the_mmdet_plugin_without_mmdetection_says_to_install_the_extra_from_a_clone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("mmdet", "mmdet.registry"):  # the import fails as it does without the package, even after an
        monkeypatch.setitem(sys.modules, name, None)  # earlier test imported mmdetection in this process
    monkeypatch.delitem(sys.modules, "balanced_l1.mmdet", raising=False)
    with pytest.raises(ImportError) as error:
        importlib.import_module("balanced_l1.mmdet")
    message = str(error.value)
    assert "balanced_l1.mmdet needs mmdetection 3.x and mmengine" in message
    assert "pip install -e '.[mmdet]'" in message and "clone" in message


def test_compare_help_says_how_to_install_tensorboard_from_a_clone(capsys: pytest.CaptureFixture[str]) -> None:
    from balanced_l1.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "pip install -e '.[tensorboard]' in the repository's clone" in help_text
