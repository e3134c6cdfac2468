"""The one format of benchmark result rows: {figure, value, baseline, ratio, command}."""

from __future__ import annotations


def markdown(rows: list[dict]) -> str:
    """Rows as a markdown table."""
    lines = ["| figure | value | baseline | ratio | command |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['figure']} | {row['value']} | {row['baseline']} | {row['ratio']} | `{row['command']}` |")
    return "\n".join(lines)
