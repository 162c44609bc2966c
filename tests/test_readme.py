"""The README's set-up commands, .ci/run and the quick start stay in agreement with the code."""

import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README))))
def test_every_python_example_runs(index):
    code = re.findall(r"```python\n(.*?)```", README, flags=re.S)[index]
    exec(compile(code, f"README python block {index}", "exec"), {})


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text)]


def test_bit_for_bit_claims_say_where_they_hold_and_what_varies():
    claims = [p for p in _paragraphs(README) if re.search(r"bit-for-bit", p, flags=re.I)]
    assert claims
    for paragraph in claims:
        assert "one machine with the same library versions" in paragraph, paragraph
        assert "What varies across machines" in paragraph and "another CPU gave other numbers" in paragraph


def test_the_quoted_paired_t_statistic_is_said_to_come_from_results_json():
    quoted = [p for p in _paragraphs(README) if re.search(r"paired t\b", p, flags=re.I) and not p.startswith("|")]
    assert quoted
    assert all("results.json" in p for p in quoted), [p for p in quoted if "results.json" not in p]
    assert any("ttest_1samp" in p for p in quoted)
