"""The pool as a table and pool.csv: one row per sub-model with its units, parameters and MFLOPs."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.table import Table

from ..sorted.pool import Pool

POOL_COLUMNS = ["index", "width", "depth", "channels", "params", "mflops"]


def write_pool_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, POOL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def pool_table(rows: list[dict], model, pool: Pool) -> tuple[Table, str]:
    table = Table(title=f"pool {pool.name}: {len(rows)} sub-models")
    for column in POOL_COLUMNS:
        table.add_column(column, justify="left" if column in ("depth", "channels") else "right")
    for row in rows:
        table.add_row(str(row["index"]), f"{row['width']:g}", row["depth"], row["channels"], f"{row['params']:,}", f"{row['mflops']:.2f}")
    shared = sum(p.numel() for p in model.parameters())
    mflops = [row["mflops"] for row in rows]
    full = max(mflops)
    mean = sum(mflops) / len(mflops)
    totals = (
        f"total: {len(rows)} sub-models sharing {shared:,} parameters; "
        f"MFLOPs per example {min(mflops):.2f} to {full:.2f}, mean {mean:.2f} "
        f"({mean / full:.2f} of the largest: the cost of an average uniform draw)"
    )
    return table, totals
