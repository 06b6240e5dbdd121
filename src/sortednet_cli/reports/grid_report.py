"""The grid as files (grid.csv, grid.json), a heatmap (grid.png) and a terminal table."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

from rich.table import Table

from ..errors import UserError
from ..jsonfiles import read_json, write_json
from ..renames import upgrade_record
from ..sorted.submodel import depth_order_key, parse_depth
from ..tasks.base import Metric


def grid_columns(metric_name: str, extra: Sequence[str] = ()) -> list[str]:
    """grid.csv's columns: the metric's is named by the task ("accuracy" for image tasks); a
    task's secondary figures (perplexity, F1's accuracy, ms per decoded token) follow it."""
    return ["width", "depth", "params", "mflops", metric_name, *extra, "relative", "latency_ms_bs1", "latency_ms_bs256"]


def write_grid(rows: list[dict], meta: dict, run_dir: Path) -> None:
    columns = grid_columns(meta["metric"]["name"], meta.get("extra_columns", ()))
    with open(run_dir / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    write_json(run_dir / "grid.json", {**meta, "rows": rows})


def _number(column: str, text: str):
    if text == "":
        return None
    return int(text) if column == "params" else float(text)


GRID_RECORD = ("metric", "baseline", "full")  # what every grid.json holds beside its rows


def read_grid(location: str) -> tuple[list[dict], dict, Path, Metric]:
    """Rows of a grid.csv (or of the grid.csv in a directory), the grid.json beside it (the
    metric, the baseline and the full model the grid was evaluated with) and its metric."""
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "grid.csv"
    if not path.is_file():
        raise UserError(f"no grid at {path}")
    meta_path = path.with_suffix(".json")
    meta = upgrade_record(read_json(meta_path))  # a grid of an earlier version: its fields' new names
    if not isinstance(meta, dict) or any(key not in meta for key in GRID_RECORD):
        raise UserError(f"{path} has no complete {meta_path.name} beside it (eval-grid writes both, with {', '.join(GRID_RECORD)})")
    metric = Metric.from_dict(meta["metric"])
    columns = grid_columns(metric.name, meta.get("extra_columns", ()))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} is not a grid: missing columns {', '.join(missing)}")
        try:
            rows = [{k: v if k == "depth" else _number(k, v) for k, v in row.items() if k in columns} for row in reader]
        except ValueError as exc:
            raise UserError(f"{path} has a value that is not a number: {exc}") from None
    if not rows:
        raise UserError(f"{path} has no rows")
    return rows, meta, path, metric


def _axes(rows: list[dict]):
    widths = sorted({r["width"] for r in rows})
    depths = sorted({r["depth"] for r in rows}, key=lambda d: depth_order_key(parse_depth(d)))
    return widths, depths


def grid_matrix(rows: list[dict], key: str = "accuracy"):
    widths, depths = _axes(rows)
    cell = {(r["width"], r["depth"]): r for r in rows}
    matrix = [[cell[(w, d)][key] if (w, d) in cell else math.nan for w in widths] for d in depths]
    return widths, depths, matrix


def draw_heatmap(ax, rows: list[dict], bar: Optional[float] = None, vmin=None, vmax=None, key="accuracy", show_relative=True,
                 scale: float = 100, higher_is_better: bool = True):
    """Width on x, depth settings on y; each cell shows the metric (times `scale`: percent for
    fractions) and its % of the baseline. Darker is better. Cells worse than `bar` are masked grey."""
    import numpy as np

    widths, depths, matrix = grid_matrix(rows, key)
    values = np.array(matrix, dtype=float) * scale
    masked = np.ma.masked_invalid(values)
    sign = 1 if higher_is_better else -1
    failing = (lambda v: sign * v < sign * bar * scale) if bar is not None else (lambda v: False)
    if bar is not None:
        masked = np.ma.masked_where(failing(values), masked)
    import matplotlib

    cmap = matplotlib.colormaps["Blues" if higher_is_better else "Blues_r"].with_extremes(bad="#d9d9d9")
    shown = masked.compressed() if masked.count() else np.array([0.0])
    lo = vmin if vmin is not None else float(shown.min())
    hi = vmax if vmax is not None else float(shown.max())
    image = ax.imshow(masked, cmap=cmap, aspect="auto", vmin=lo, vmax=hi, origin="lower")
    relative = {(r["width"], r["depth"]): r.get("relative") for r in rows}
    small = len(widths) > 10
    for y, depth in enumerate(depths):
        for x, width in enumerate(widths):
            v = values[y, x]
            if math.isnan(v):
                continue
            goodness = (v - lo) / (hi - lo) if hi > lo else 0.0
            dark = (goodness if higher_is_better else 1 - goodness) > 0.6 and not failing(v)
            text = f"{v:.1f}" if scale == 100 else f"{v:.3g}"
            rel = relative.get((width, depth))
            if show_relative and rel is not None:
                text += f"\n{100 * rel:.0f}%"
            ax.text(x, y, text, ha="center", va="center", fontsize=6.5 if small else 9, color="white" if dark else "black")
    ax.set_xticks(range(len(widths)), [f"{w:g}" for w in widths], fontsize=8)
    ax.set_yticks(range(len(depths)), depths, fontsize=8)
    ax.set_xlabel("width")
    ax.set_ylabel("depth (blocks per stage)")
    return image


def heatmap_style(metric: Metric) -> dict:
    """draw_heatmap's arguments for a metric: percent for fractions, direction for the colours."""
    return {"key": metric.name, "scale": 100 if metric.is_fraction else 1, "higher_is_better": metric.higher_is_better}


def save_heatmap(rows: list[dict], title: str, path: Path, metric: Metric) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths, depths = _axes(rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(widths) + 2.5), max(3.0, 0.6 * len(depths) + 1.6)))
    image = draw_heatmap(ax, rows, **heatmap_style(metric))
    fig.colorbar(image, ax=ax, label=f"{metric.name} (%)" if metric.is_fraction else metric.name, fraction=0.03, pad=0.02)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def grid_table(rows: list[dict], title: str, metric: Metric) -> Table:
    """Rows = depth settings, columns = widths, cells = the metric (% for fractions)."""
    widths, depths, matrix = grid_matrix(rows, metric.name)
    table = Table(title=title, padding=(0, 0), show_edge=False)
    table.add_column("depth")
    for w in widths:
        table.add_column(f"{w:g}", justify="right")
    for depth, values in zip(depths, matrix):
        table.add_row(depth, *("" if math.isnan(v) else f"{100 * v:.1f}" if metric.is_fraction else f"{v:.3g}" for v in values))
    return table
