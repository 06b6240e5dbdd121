"""Terminal tables."""

from __future__ import annotations

from rich.table import Table


def accuracy_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("width", justify="right")
    table.add_column("depth")
    table.add_column("accuracy", justify="right")
    for row in rows:
        table.add_row(f"{row['width']:g}", row["depth"], f"{100 * row['accuracy']:.2f}%")
    return table
