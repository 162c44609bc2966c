"""The documentation site: it builds in strict mode, its examples run, and nothing in docs/ is unreachable.

Python examples of the README and of every page run as written. An example that needs the network or a
GPU is marked by an HTML comment on the line before its fence, ``<!-- not run: needs the network -->``,
and is reported as skipped with that reason; no other example is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".svg", ".gif"}
_FENCE = re.compile(r"(?:^<!--\s*not run:\s*(?P<reason>.+?)\s*-->\n)?^```python\n(?P<code>.*?)^```", flags=re.S | re.M)


def python_examples(text: str) -> list[tuple[str, str | None]]:
    """Every fenced Python block of a Markdown text: its code, and why it is not run (None: it runs)."""
    return [(m.group("code"), m.group("reason")) for m in _FENCE.finditer(text)]


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


NAV = _nav_pages(_config()["nav"])
EXAMPLES = [
    pytest.param(
        code, reason, id=f"{path.relative_to(ROOT)}:{index}", marks=[pytest.mark.skip(reason)] if reason else []
    )
    for path in _doc_pages()
    for index, (code, reason) in enumerate(python_examples(path.read_text(encoding="utf-8")))
]


def test_site_builds_in_strict_mode_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = list(site.rglob("*.html"))
    assert len(pages) >= len(NAV)
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page
        assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", html), page
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Changelog" in changelog and "unreleased" in changelog  # CHANGELOG.md itself, through the snippet


@pytest.mark.parametrize(("code", "reason"), EXAMPLES)
def test_every_docs_python_example_runs(code: str, reason: str | None) -> None:
    exec(compile(code, "docs example", "exec"), {})


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists() -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in _doc_pages()}
    assert not pages - set(NAV), f"pages in docs/ missing from mkdocs.yml's nav: {sorted(pages - set(NAV))}"
    assert not set(NAV) - pages, f"nav entries without a page: {sorted(set(NAV) - pages)}"


def test_every_figure_in_docs_is_shown_by_a_page_in_the_navigation() -> None:
    shown = set()
    for name in NAV:
        page = DOCS / name
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", page.read_text(encoding="utf-8")):
            shown.add((page.parent / target).resolve())
    figures = {p.resolve() for p in DOCS.rglob("*") if p.suffix.lower() in FIGURE_SUFFIXES}
    assert not figures - shown, f"figures no page shows: {sorted(str(f.relative_to(DOCS)) for f in figures - shown)}"
    assert not {f for f in shown if not f.exists()}, "pages show figures that do not exist"


def test_where_things_are_names_every_module_and_only_modules_that_exist() -> None:
    contract = (DOCS / "contract.md").read_text(encoding="utf-8")
    section = contract.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `balanced_l1/([^`]+)` \|", section, flags=re.M))
    package = ROOT / "src" / "balanced_l1"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    modules |= {p.relative_to(package).as_posix() + "/" for p in package.rglob("recipes") if p.is_dir()}
    assert not modules - listed, f"modules missing from docs/contract.md's map: {sorted(modules - listed)}"
    assert not listed - modules, f"the map names modules that do not exist: {sorted(listed - modules)}"


def test_readme_links_every_guide_page_and_says_how_to_build_the_site() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    guides = [p for p in NAV if not p.startswith("api/") and p != "changelog.md"]
    missing = [p for p in guides if f"](docs/{p}" not in readme]
    assert not missing, f"README links no docs page {missing}"
    assert ".venv/bin/mkdocs serve" in readme


def test_getting_started_lists_every_extra_and_what_all_installs() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    table: dict[str, str] = {}
    for line in (DOCS / "index.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            table.update(dict.fromkeys(re.findall(r"`([a-z]+)`", cells[0]), cells[1]))
    assert set(extras) <= set(table), f"extras missing from docs/index.md: {sorted(set(extras) - set(table))}"
    (listed,) = re.findall(r"\[([a-z,]+)\]", extras["all"][0])
    assert sorted(re.findall(r"`([a-z]+)`", table["all"])) == sorted(listed.split(","))


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text)]


def _all_text() -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *_doc_pages()])


def test_bit_for_bit_claims_say_where_they_hold_and_what_varies() -> None:
    claims = [p for p in _paragraphs(_all_text()) if re.search(r"bit-for-bit", p, flags=re.I)]
    assert claims
    for paragraph in claims:
        assert "one machine with the same library versions" in paragraph, paragraph
        assert "What varies across machines" in paragraph and "another CPU gave other numbers" in paragraph


def test_paired_t_statistics_say_where_they_come_from() -> None:
    """From a run's ``results.json``, or recomputed from a table's mean ± std by the tool that does it."""
    quoted = [p for p in _paragraphs(_all_text()) if re.search(r"paired t\b|t statistic", p, flags=re.I)]
    quoted = [p for p in quoted if not p.startswith("|")]
    sources = ("results.json", "tools/paired_from_summary.py")
    assert quoted
    assert all(any(source in p for source in sources) for p in quoted), [
        p for p in quoted if not any(source in p for source in sources)
    ]
