"""The repository stands alone: its text points at files inside it, and at sections of docs/contract.md that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "contract.md"
# Written in pieces so that this file does not match itself.
OUTSIDE = [re.compile(p) for p in (r"\.\./" + "shared", "STYLE" + r"\.md", r"\bSPEC" + r"\s+section")]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml"}


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = listed.splitlines()
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: no git
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    files = [ROOT / name for name in names if Path(name).suffix in TEXT_SUFFIXES or name.startswith(".ci/")]
    return [f for f in files if f.is_file() and f.resolve() != Path(__file__).resolve()]


def _contract_sections() -> set[str]:
    return set(re.findall(r"^## (\d+\. .+?)\s*$", CONTRACT.read_text(encoding="utf-8"), flags=re.M))


def test_nothing_points_outside_the_repository() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked_text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if any(pattern.search(line) for pattern in OUTSIDE)
    ]
    assert not offending, "references to files outside the repository:\n" + "\n".join(offending)


def test_cited_contract_sections_exist() -> None:
    sections = _contract_sections()
    assert {"1. The loss", "3. The PyTorch API", "4. Conformance values"} <= sections
    cited = {
        (path.relative_to(ROOT), title)
        for path in _tracked_text_files()
        for title in re.findall(r'contract\.md[^"\n]{0,40}?"(\d+\. [^"]+)"', path.read_text(encoding="utf-8"))
    }
    assert cited, "no file cites a section of docs/contract.md"
    missing = sorted(f"{path}: {title!r}" for path, title in cited if title not in sections)
    assert not missing, f"cited sections not in docs/contract.md {sorted(sections)}: {missing}"


@pytest.mark.parametrize("name", ["test_functional.py", "test_errors.py", "test_reference.py", "conformance.py"])
def test_contract_tests_name_their_section(name: str) -> None:
    docstring = (ROOT / "tests" / name).read_text(encoding="utf-8").split('"""')[1]
    assert "docs/contract.md" in docstring
