"""The README's set-up commands, .ci/run and the quick start stay in agreement with the code.

The README's Python examples run as tests/test_docs.py runs the site's: every one, unless an HTML comment
before it says why not (``<!-- not run: needs a GPU -->``).
"""

import re
from pathlib import Path

import pytest

from tests.test_docs import python_examples

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_setup_section_holds_exactly_two_commands_that_create_the_venv():
    commands = _bash_blocks(_section("Set-up on a fresh machine"))
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _bash_blocks(_section("Set-up on a fresh machine"))[1]
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert test_command in ci_lines
    assert "pytest" in test_command


def test_main_job_command_runs_a_balanced_l1_subcommand():
    main_command = _bash_blocks(_section("Set-up on a fresh machine"))[0]
    assert re.search(r"\.venv/bin/balanced-l1 \w+", main_command)


def test_quick_start_runs():
    code = re.search(r"## Quick start\n.*?```python\n(.*?)```", README, flags=re.S)
    assert code
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README quick start", "exec"), namespace)
    assert namespace["loss"].item() > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        pytest.param(code, reason, id=f"README:{i}", marks=[pytest.mark.skip(reason)] if reason else [])
        for i, (code, reason) in enumerate(python_examples(README))
    ],
)
def test_every_python_example_runs(code: str, reason: str | None) -> None:
    exec(compile(code, "README python example", "exec"), {})


def test_the_default_run_section_is_there() -> None:
    """The lead engineer fills it with the default run's table (the ``default-table`` marker until then)."""
    section = README.split("### The default run\n", 1)
    assert len(section) == 2
