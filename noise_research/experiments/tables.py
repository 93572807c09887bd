"""The experiments' one table: mean ± std over seeds, per row (a variant, an injection…) and
column, as a dict (the JSON) and as markdown rows (the value alone where one seed ran)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Table = dict[str, dict[str, dict[str, float]]]
"""``{row: {column: {"mean", "std", "n"}}}``."""


def mean_std_over_seeds(
    results: Sequence[Mapping[str, Any]], key: str, rows: Sequence[str], columns: Sequence[str]
) -> Table:
    """Per row (``result[key]``, in the order of ``rows``; rows without results left out) and
    column: the mean, the std (ddof 1 over seeds; 0 for one seed) and n."""
    table: Table = {}
    for row in rows:
        runs = [r for r in results if r[key] == row]
        if not runs:
            continue
        table[row] = {}
        for column in columns:
            values = np.array([r[column] for r in runs], np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            table[row][column] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return table


def cell(values: Mapping[str, float], mean_format: str, std_format: str | None = None) -> str:
    """One table cell: ``mean ± std`` (formatted with ``mean_format`` / ``std_format``, which
    defaults to ``mean_format``) over several seeds, the value alone for one seed (n = 1: no
    spread was measured)."""
    text = f"{values['mean']:{mean_format}}"
    if values["n"] > 1:
        text += f" ± {values['std']:{std_format or mean_format}}"
    return text


def markdown_rows(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    row_header: str,
    headers: Mapping[str, str],
    columns: Sequence[str],
    mean_format: str,
    std_format: str | None = None,
) -> list[str]:
    """The markdown lines of ``table``: a header (``row_header``, then each column's header),
    the separator, and one line per row with a `cell` per column."""
    lines = [
        f"| {row_header} | " + " | ".join(headers[c] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row, values in table.items():
        cells = [cell(values[c], mean_format, std_format) for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines
