"""`sortednet report` as text: summary.csv, the terminal table, the headline and report.md."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from rich.table import Table

if TYPE_CHECKING:
    from .jobs import Job
    from ..tasks.base import Metric


def summary_columns(metric: Metric) -> list[str]:
    return [
        "job", "status", "label", "overrides", "pool", "pool_size", "final_loss",
        metric.column("full"), metric.column("mean"), metric.column("min"), "full_relative", "mean_relative", "min_relative",
        "median_relative", "at_96_percent", "selected", "grid_size", "steps", "total_steps", "wall_seconds", "examples_per_second", "note", "dir",
    ]


def write_summary_csv(rows: list[dict], path: Path, metric: Metric) -> None:
    columns = summary_columns(metric)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)


def shows_percent(metric: Metric) -> bool:
    """Accuracy is a fraction in [0, 1], shown as a percentage; other metrics as plain numbers."""
    return metric.name == "accuracy"


def _percent(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def _number(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def metric_text(value: Optional[float], metric: Metric) -> str:
    return _percent(value) if shows_percent(metric) else _number(value, ".4g")


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def display_columns(metric: Metric) -> list[tuple[str, Callable[[dict], str]]]:
    """(header, how one summary row shows it): shared by the terminal table and report.md."""
    full, mean, low = (metric.column(statistic) for statistic in ("full", "mean", "min"))
    return [
        ("job", lambda r: r["job"]),
        ("setting", lambda r: r["label"]),
        ("status", lambda r: r["status"]),
        ("final loss", lambda r: _number(r["final_loss"], ".4f")),
        ("full", lambda r: metric_text(r[full], metric)),
        ("mean", lambda r: metric_text(r[mean], metric)),
        ("min", lambda r: metric_text(r[low], metric)),
        ("full/base", lambda r: _percent(r["full_relative"], 1)),
        ("mean/base", lambda r: _percent(r["mean_relative"], 1)),
        ("min/base", lambda r: _percent(r["min_relative"], 1)),
        ("median/base", lambda r: _percent(r["median_relative"], 1)),
        (">=96%", lambda r: _percent(r["at_96_percent"], 0)),
        ("selected", lambda r: "" if r["selected"] is None else f"{r['selected']}/{r['grid_size']}"),
        ("steps", lambda r: "" if r["steps"] is None else f"{r['steps']}/{r['total_steps']}"),
        ("wall", lambda r: _duration(r["wall_seconds"])),
        ("examples/s", lambda r: _number(r["examples_per_second"], ".0f")),
    ]


def report_table(rows: list[dict], title: str, metric: Metric) -> Table:
    table = Table(title=title)
    columns = display_columns(metric)
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("job", "setting", "status") else "right")
    for row in rows:
        table.add_row(*(show(row) for _, show in columns))
    return table


def headline(rows: list[dict], baseline: Optional[Job], baseline_note: str, labels: dict[Path, str], metric: Metric, noise: Optional[float] = None) -> str:
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    text = f"{len(rows)} jobs (" + ", ".join(f"{n} {status}" for status, n in counts.items()) + "). "
    if baseline:
        text += f"Baseline: job {baseline.name} ({labels[baseline.run_dir]}), full model {metric_text(baseline.full_value, metric)}{baseline_note}."
        if noise is not None:
            examples = (baseline.grid_meta or {}).get("eval_examples")
            text += (f" Noise: one {metric.name} on these {examples} evaluation examples is uncertain by about "
                     f"+-{100 * noise:.1f} points (one standard error), so a difference under about {200 * noise:.1f} points can be chance.")
    else:
        text += "No pool=full job with a grid: no baseline, relative columns empty."
    return text


def _column_legend(metric: Metric) -> str:
    """What `full`, `mean`, `min` and `/base` mean for this metric."""
    if metric.higher_is_better:
        text = (
            f"`full`, `mean`, `min`: the full model's and the mean and lowest sub-model {metric.name} of the job's grid. "
            f"`/base`: the same divided by the baseline job's full-model {metric.name}"
        )
    else:
        text = (
            f"`full`, `mean`, `min`: the full model's and the mean and worst (highest) sub-model {metric.name} of the job's grid. "
            f"`/base`: the baseline job's full-model {metric.name} divided by the same (lower is better, so above 100% beats the baseline)"
        )
    # The paper's bar is stated for accuracy.
    return text + (" (the paper reports sub-models at >= 96% of it). " if metric.name == "accuracy" else ". ")


def grids_caption(metric: Metric) -> str:
    return f"Grids ({metric.name}{' %' if shows_percent(metric) else ''}, one colour scale)"


def write_markdown(rows: list[dict], path: Path, title: str, command: Optional[str], headline_text: str, images: list[str], metric: Metric) -> None:
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [headline_text, ""]
    columns = display_columns(metric)
    headers = [header for header, _ in columns]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(show(row).replace("|", "\\|") for _, show in columns) + " |" for row in rows]
    lines += [
        "",
        _column_legend(metric)
        + "`median/base`: the median sub-model's, likewise. `>=96%`: the share of the grid at or above 96% of the baseline. "
        "`selected`: sub-models at or above the job's own bar (its selected.json) out of its grid. "
        "`final loss`: the mean training loss of the last logged draws.",
    ]
    unfinished = [row for row in rows if row["status"] != "complete"]
    if unfinished:
        lines += ["", "## Jobs not complete", ""]
        lines += [f"- job {row['job']} ({row['label']}): **{row['status']}**: {row['note']} (`{row['dir']}`)" for row in unfinished]
    captions = {"loss_curves.png": "Training loss by width (moving average)", "grids.png": grids_caption(metric),
                "plateau.png": f"{metric.name} against width at full depth, one line per job (a flat top is the plateau)"}
    for image in images:
        lines += ["", f"## {captions[image]}", "", f"![{captions[image]}]({image})"]
    path.write_text("\n".join(lines) + "\n")
