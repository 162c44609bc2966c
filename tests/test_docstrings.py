"""Every docstring's Args:, Returns:, Yields: and Raises: sections render as the API reference shows them.

The reference is rendered by mkdocstrings, which parses docstrings with griffe's Google-style parser (through
this site's extension, ``docs/hooks/griffe_docstrings.py``). A continuation line that is not indented past its
item starts a new item: in Returns: a second row, in Args: and Raises: a warning and a lost line. The package
describes what a function returns as one item, so a Returns: or Yields: section with two items is a split one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[1]
_EXTENSION = f"{ROOT / 'docs' / 'hooks' / 'griffe_docstrings.py'}:SphinxDocstrings"


def _objects(obj: griffe.Object, seen: set[str]) -> Iterator[griffe.Object]:
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member, seen)  # type: ignore[arg-type]


def rendering_problems(package: griffe.Object, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What griffe warns about, and every Returns:/Yields: section that parses into more than one item."""
    problems = []
    for obj in _objects(package, set()):
        if obj.docstring is None:
            continue
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="griffe"):
            sections = obj.docstring.parse(griffe.Parser.google, warn_missing_types=False)
        problems += [f"{obj.path}: {record.getMessage()}" for record in caplog.records]
        for section in sections:
            if section.kind.value in ("returns", "yields") and len(section.value) > 1:
                problems.append(f"{obj.path}: its {section.kind.value} section splits into {len(section.value)} items")
    return problems


def _load(search_path: Path, name: str) -> griffe.Object:
    extensions = griffe.load_extensions(_EXTENSION)
    return griffe.load(name, search_paths=[search_path], docstring_parser=griffe.Parser.google, extensions=extensions)


def test_every_docstring_section_of_the_package_renders_whole(caplog: pytest.LogCaptureFixture) -> None:
    assert rendering_problems(_load(ROOT / "src", "balanced_l1"), caplog) == []


def test_unindented_continuation_lines_are_found(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "split_sections.py").write_text(
        '''
def split_returns(x):
    """Do it.

    Args:
        x: the input.

    Returns:
        The first line of one description,
        and its continuation at the item's indentation.
    """


def split_args(x):
    """Do it.

    Args:
        x: the input, described over
        two lines at the same indentation.
    """


def whole(x):
    """Do it.

    Args:
        x: the input, described over
            two lines, the second indented.

    Returns:
        One description over
            two lines.
    """
''',
        encoding="utf-8",
    )
    problems = rendering_problems(_load(tmp_path, "split_sections"), caplog)
    assert len(problems) == 2, problems
    assert problems[0].startswith("split_sections.split_returns: its returns section splits into 2 items")
    assert problems[1].startswith("split_sections.split_args:") and "two lines at the same indentation" in problems[1]
