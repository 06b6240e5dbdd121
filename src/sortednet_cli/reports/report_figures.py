"""`sortednet report`'s figures: training-loss curves by width (paper Fig. 5), the jobs' grids
on one colour scale (paper Fig. 2a), and the metric against width at full depth (the plateau)."""

from __future__ import annotations

import textwrap

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .grid_report import draw_heatmap, grid_matrix
from .report_table import metric_text, shows_percent

if TYPE_CHECKING:
    from .jobs import Job
    from ..tasks.base import Metric


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_per_epoch(rows: list[dict], summary: Optional[dict], epochs: int) -> float:
    """From the summary when the job got that far; otherwise from the first complete epoch, or,
    while the first epoch is still running, the steps so far (the x axis is then approximate)."""
    if summary and summary.get("total_steps"):
        return summary["total_steps"] / epochs
    first_epoch = [row["step"] for row in rows if row["epoch"] == 0]
    if any(row["epoch"] > 0 for row in rows):
        return max(first_epoch)
    return max(row["step"] for row in rows)


def width_buckets(widths: list[float], count: int) -> list[list[float]]:
    """The sorted widths cut into `count` contiguous groups of (nearly) equal size."""
    widths = sorted(set(widths))
    count = min(count, len(widths))
    size, extra = divmod(len(widths), count)
    buckets, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        buckets.append(widths[start:end])
        start = end
    return buckets


def moving_average(values: list[float], window: Optional[int]) -> list[float]:
    """Trailing mean over `window` values (fewer at the start); None: a twentieth of the series."""
    window = window or max(1, len(values) // 20)
    smoothed, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        smoothed.append(total / min(i + 1, window))
    return smoothed


def plot_loss_curves(jobs: list[Job], metrics: dict[Path, list[dict]], labels: dict[Path, str], path: Path, bucket_count: int, smooth: Optional[int]) -> bool:
    """One panel per width group and one for all draws; in each, every job's smoothed training loss
    against epochs (so jobs with different grad_accum, hence different step counts, line up).
    `metrics`: each job's metrics.csv rows by run directory. Returns False when no job has logged
    a draw yet."""
    series = []
    for job in jobs:
        rows = metrics[job.run_dir]
        if rows:
            spe = steps_per_epoch(rows, job.summary, job.config["trainer"]["epochs"])
            # The draws of one step are consecutive mini-batches: spread them over the step.
            draws_in_step = Counter(row["step"] for row in rows)
            series.append((job, [((row["step"] - 1 + (row["draw"] + 1) / draws_in_step[row["step"]]) / spe, row["width"], row["loss"]) for row in rows]))
    if not series:
        return False
    buckets = width_buckets([w for _, points in series for _, w, _ in points], bucket_count)
    panels = [(f"width {b[0]:g}" if len(b) == 1 else f"widths {b[0]:g}-{b[-1]:g}", set(b)) for b in buckets]
    panels.append(("all draws (every width)", None))

    plt = _pyplot()
    columns = min(3, len(panels))
    rows_of_panels = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.6 * columns, 3.4 * rows_of_panels), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (title, widths) in zip(axes.flat, panels):
        for index, (job, points) in enumerate(series):
            chosen = [(x, loss) for x, w, loss in points if widths is None or w in widths]
            if chosen:
                xs, losses = zip(*chosen)
                ax.plot(xs, moving_average(list(losses), smooth), color=colours(index % 10), lw=1.2, label=labels[job.run_dir])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    axes.flat[len(panels) - 1].legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    window = f"{smooth} draws" if smooth else "a twentieth of each curve"
    fig.suptitle(f"training loss by width (moving average over {window})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _relative_to(rows: list[dict], baseline: float, metric: Metric) -> list[dict]:
    return [{**row, "relative": metric.relative(row[metric.name], baseline)} for row in rows]


def draw_difference(ax, rows: list[dict], baseline: float, limit: float, metric: Metric):
    """Each cell's value minus the baseline (accuracy in percentage points), on a diverging scale
    at 0 with blue for better than the baseline."""
    import numpy as np

    widths, depths, matrix = grid_matrix(rows, metric.name)
    percent = shows_percent(metric)
    values = (np.array(matrix, dtype=float) - baseline) * (100 if percent else 1)
    colours = "RdBu" if metric.higher_is_better else "RdBu_r"
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    small = len(widths) > 10
    for y in range(len(depths)):
        for x in range(len(widths)):
            if not math.isnan(values[y, x]):
                text = f"{values[y, x]:+.1f}" if percent else f"{values[y, x]:+.3g}"
                ax.text(x, y, text, ha="center", va="center", fontsize=6.5 if small else 9,
                        color="white" if abs(values[y, x]) > 0.6 * limit else "black")
    ax.set_xticks(range(len(widths)), [f"{w:g}" for w in widths], fontsize=8)
    ax.set_yticks(range(len(depths)), depths, fontsize=8)
    ax.set_xlabel("width")
    ax.set_ylabel("depth (blocks per stage)")
    return image


def _wrapped(title: str, width: int = 34) -> str:
    """Panel titles side by side must not run into each other."""
    return "\n".join(textwrap.wrap(title, width)) or title


def plot_grids(jobs: list[Job], labels: dict[Path, str], baseline: Optional[Job], path: Path, metric: Metric) -> bool:
    """The jobs' grids side by side on one colour scale; with a baseline job, a second row with
    each cell's difference to the baseline. Returns False when no job has a grid yet."""
    with_grid = [job for job in jobs if job.grid]
    if not with_grid:
        return False
    base = baseline.full_value if baseline else None
    compared = [job for job in with_grid if job is not baseline] if base is not None else []
    percent = shows_percent(metric)
    scale = 100 if percent else 1  # draw_heatmap shows accuracy in percent
    values = [scale * row[metric.name] for job in with_grid for row in job.grid]
    low, high = min(values), max(values)
    cell_widths = [len({row["width"] for row in job.grid}) for job in with_grid]
    depth_rows = max(len({row["depth"] for row in job.grid}) for job in with_grid)
    unit = f"{metric.name} (%)" if percent else metric.name

    plt = _pyplot()
    panel_rows = 2 if compared else 1
    fig = plt.figure(figsize=(0.45 * sum(cell_widths) + 1.6 * len(with_grid) + 1.5, panel_rows * (0.5 * depth_rows + 2.2)), layout="constrained")
    grid_spec = fig.add_gridspec(panel_rows, len(with_grid), width_ratios=[max(2, n) for n in cell_widths])
    top = [fig.add_subplot(grid_spec[0, i]) for i in range(len(with_grid))]
    for ax, job in zip(top, with_grid):
        rows = _relative_to(job.grid, base, metric) if base is not None else job.grid
        image = draw_heatmap(ax, rows, vmin=low, vmax=high, key=metric.name, scale=scale, higher_is_better=metric.higher_is_better)
        ax.set_title(_wrapped(labels[job.run_dir] + (" (baseline)" if job is baseline else "")), fontsize=9)
    fig.colorbar(image, ax=top, label=unit, shrink=0.9)
    if compared:
        differences = [abs(row[metric.name] - base) * scale for job in compared for row in job.grid]
        # A floor (0.1 points of accuracy, 0.001 of another metric) keeps the scale open when every cell equals the baseline.
        limit = max(max(differences), 0.1 if percent else 0.001)
        bottom = [fig.add_subplot(grid_spec[1, i]) for i in range(len(with_grid))]
        for ax, job in zip(bottom, with_grid):
            if job is baseline:
                ax.axis("off")
                ax.text(0.5, 0.5, f"baseline\n{metric_text(base, metric)}", ha="center", va="center", transform=ax.transAxes)
                continue
            difference = draw_difference(ax, job.grid, base, limit, metric)
            ax.set_title(_wrapped(f"{labels[job.run_dir]} minus baseline{' (points)' if percent else ''}"), fontsize=9)
        fig.colorbar(difference, ax=bottom, label=f"{metric.name} - baseline{' (points)' if percent else ''}", shrink=0.9)
    shown = f"{metric.name} %" if percent else metric.name
    note = f"cells: {shown} and % of the baseline" if base is not None else f"cells: {shown} and % of each job's own full model"
    fig.suptitle(f"grids on one colour scale ({note})", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_plateau(jobs: list[Job], labels: dict[Path, str], baseline: Optional[Job], path: Path, metric: Metric, noise: Optional[float]) -> bool:
    """The metric of each job's sub-models at full depth against width, one line per job: a top
    that stops rising before width 1 is the plateau. The baseline's full model is a dashed line,
    with a band of +-2 standard errors of the split where that applies. False without grids."""
    with_grid = [job for job in jobs if job.grid and job.full_depth]
    if not with_grid:
        return False
    plt = _pyplot()
    scale = 100 if shows_percent(metric) else 1
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for job in with_grid:
        points = sorted((row["width"], row[metric.name]) for row in job.grid if row["depth"] == job.full_depth)
        if len(points) > 1:
            ax.plot([w for w, _ in points], [scale * v for _, v in points], "-o", ms=3, label=labels[job.run_dir])
        elif points:
            ax.plot([points[0][0]], [scale * points[0][1]], "s", ms=6, label=labels[job.run_dir])
    if baseline is not None and baseline.full_value is not None:
        base = scale * baseline.full_value
        ax.axhline(base, color="black", ls="--", lw=1, label=f"baseline {metric_text(baseline.full_value, metric)}")
        if noise is not None:
            ax.axhspan(base - 2 * scale * noise, base + 2 * scale * noise, color="grey", alpha=0.15, label="+-2 standard errors")
    ax.set_xlabel("width")
    ax.set_ylabel(f"{metric.name} (%)" if shows_percent(metric) else metric.name)
    ax.set_title(f"{metric.name} at full depth against width", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True
