"""Terminal tables."""

from __future__ import annotations

from rich.table import Table

from ..tasks.base import Metric


def metric_table(rows: list[dict], metric: Metric, title: str) -> Table:
    table = Table(title=title)
    table.add_column("width", justify="right")
    table.add_column("depth")
    table.add_column(metric.name, justify="right")
    for row in rows:
        table.add_row(f"{row['width']:g}", row["depth"], metric.format(row[metric.name]))
    return table
