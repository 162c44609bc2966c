"""MkDocs hook: a link from a page to a file of the repository outside docs/ becomes the file's path.

On GitHub such a link (``[train_tiny.py](../examples/mmdet/train_tiny.py)``) opens the file; the built
site does not hold it, so there the link is replaced by the path in code. A link whose target exists
nowhere is left alone, so that ``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def _rewrite(text: str, page_dir: Path, docs_dir: Path, root: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)
        path = (page_dir / target).resolve()
        if path.is_relative_to(docs_dir) or not path.is_relative_to(root) or not path.exists():
            return match.group(0)
        shown = path.relative_to(root).as_posix()
        return label if shown in label else f"{label} (`{shown}`)"

    return _LINK.sub(replace, text)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    page_dir = (docs_dir / page.file.src_path).parent
    pieces, last = [], 0
    for fence in _FENCE.finditer(markdown):
        pieces.append(_rewrite(markdown[last : fence.start()], page_dir, docs_dir, root))
        pieces.append(fence.group(0))
        last = fence.end()
    pieces.append(_rewrite(markdown[last:], page_dir, docs_dir, root))
    return "".join(pieces)
