"""The one Markdown table writer of the reports: padded columns, a rule under the header row."""

from __future__ import annotations


def markdown_table(rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table whose first row is the header; every column is padded to its widest cell.

    Example:
        >>> markdown_table([["arm", "AP"], ["l1", "58.6"]])
        ['| arm | AP   |', '|-----|------|', '| l1  | 58.6 |']
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines
