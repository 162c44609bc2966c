"""The one Markdown table writer of the reports: padded columns, a rule under the header row; and its number cell."""

from __future__ import annotations

import math


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


def statistic_cell(value: float | None) -> str:
    """A gradient-balance statistic as a table cell: three decimals, or ``n/a`` where it is undefined.

    Example:
        >>> statistic_cell(0.8843), statistic_cell(None), statistic_cell(float("nan"))
        ('0.884', 'n/a', 'n/a')
    """
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
