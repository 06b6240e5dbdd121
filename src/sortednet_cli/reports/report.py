"""`sortednet report`: the train jobs of a sweep (or any train runs) side by side: a summary table,
training-loss curves by width (paper Fig. 5) and the grids on one colour scale (paper Fig. 2a).

Every job is read from its run directory alone, so a sweep that is still running, or has failed
jobs, is reported as far as it got.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from rich.table import Table

from ..errors import UserError
from .grid_report import draw_heatmap, grid_matrix, read_grid
from .loggers import METRICS_FILE

SUMMARY_COLUMNS = [
    "job", "status", "label", "overrides", "pool", "pool_size", "final_loss",
    "full_accuracy", "mean_accuracy", "min_accuracy", "full_relative", "mean_relative", "min_relative",
    "selected", "grid_size", "steps", "total_steps", "wall_seconds", "images_per_second", "note", "dir",
]
# Hydra's file log format is "[time][logger][LEVEL] - message".
LOGGED_ERROR = re.compile(r"\]\[(?:ERROR|CRITICAL)\] - (.*)")


@dataclass
class Job:
    name: str
    run_dir: Path
    overrides: list[str]
    config: dict
    summary: Optional[dict]
    grid: Optional[list[dict]]
    selected: Optional[dict]
    status: str
    note: str

    @property
    def pool(self) -> Optional[str]:
        return (self.summary or {}).get("pool") or self.config.get("pool", {}).get("name")

    @property
    def full_accuracy(self) -> Optional[float]:
        """The grid's full model: width 1 with every stage at full depth (absent from some pools)."""
        blocks = self.config.get("model", {}).get("blocks_per_stage")
        for row in self.grid or []:
            if row["width"] == 1.0 and all(int(part) == blocks for part in row["depth"].split("-")):
                return row["accuracy"]
        return None


# --- finding and reading jobs -------------------------------------------------------------------


def newest_sweep(root: Path = Path("outputs/multirun/train")) -> Path:
    sweeps = [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []
    if not sweeps:
        raise UserError(f"no train sweep under {root.resolve()}; pass sweep_dir=<multirun dir> or runs=[<run dir>,...]")
    return max(sweeps, key=lambda p: p.stat().st_mtime)


def _natural_key(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def sweep_job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a multirun: Hydra writes .hydra/ into each as the job starts."""
    if not sweep_dir.is_dir():
        raise UserError(f"no sweep directory at {sweep_dir}")
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_natural_key)
    if not jobs:
        raise UserError(f"{sweep_dir} holds no jobs (no <job>/.hydra/overrides.yaml); pass the directory of a -m run")
    return jobs


def sweep_command(sweep_dir: Path) -> Optional[str]:
    """The command line that started the sweep, from the multirun.yaml Hydra leaves in it."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).get("hydra", {})
    return f"sortednet {hydra.job.name} -m " + " ".join(hydra.overrides.task)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:  # being written right now
        return None


def logged_error(run_dir: Path) -> Optional[str]:
    """The last error the job logged (the CLI logs every failure to the job's log file)."""
    errors = []
    for log in run_dir.glob("*.log"):
        errors += [m.group(1).strip() for m in map(LOGGED_ERROR.search, log.read_text(errors="replace").splitlines()) if m]
    return errors[-1] if errors else None


def job_status(run_dir: Path, summary: Optional[dict], expects_grid: bool, has_grid: bool) -> tuple[str, str]:
    """complete / interrupted / failed / incomplete, and a note saying why."""
    error = logged_error(run_dir)
    if summary is None:
        if error:
            return "failed", error
        return "incomplete", "no summary.json: still training, or stopped without logging an error"
    if summary.get("interrupted"):
        return "interrupted", f"stopped at step {summary['steps']} of {summary['total_steps']}; continue with: sortednet train resume={run_dir}"
    if expects_grid and not has_grid:
        if error:
            return "failed", error
        return "incomplete", "trained; the grid is still being evaluated, or that was stopped"
    return "complete", ""


def load_job(run_dir: Path, name: str) -> Job:
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a train run directory (no .hydra/config.yaml)")
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False)
    if "trainer" not in config:
        raise UserError(f"{run_dir} is not a train run directory (its config has no trainer)")
    overrides_path = hydra_dir / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.is_file() else []
    summary = _read_json(run_dir / "summary.json")
    try:
        grid = read_grid(str(run_dir))[0] if (run_dir / "grid.csv").is_file() else None
    except UserError:  # being written right now
        grid = None
    selected = _read_json(run_dir / "selected.json")
    status, note = job_status(run_dir, summary, bool(config["trainer"].get("eval_grid", False)), grid is not None)
    return Job(name, run_dir, overrides, config, summary, grid, selected, status, note)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv as numbers; a half-written last line of a running job is skipped."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({"epoch": int(row["epoch"]), "step": int(row["step"]), "draw": int(row["draw"]), "width": float(row["width"]), "loss": float(row["loss"])})
            except (TypeError, ValueError):
                continue
    return rows


# --- what sets jobs apart, and the baseline -----------------------------------------------------


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value.strip("'\"")


def job_labels(jobs: list[Job]) -> dict[Path, str]:
    """Each job named by the overrides that differ between jobs (pool=full, trainer.grad_accum=4);
    by its directory name when nothing differs."""
    settings = [dict(map(_split_override, job.overrides)) for job in jobs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    labels = {}
    for job, setting in zip(jobs, settings):
        label = " ".join(f"{k}={setting[k]}" for k in differing if k in setting)
        labels[job.run_dir] = label or job.name
    return labels


def find_baseline(jobs: list[Job]) -> tuple[Optional[Job], str]:
    """The job trained on pool=full: its full model is the accuracy every other job is compared to."""
    candidates = [job for job in jobs if job.pool == "full" and job.full_accuracy is not None]
    if not candidates:
        return None, ""
    note = f"; {len(candidates)} pool=full jobs, the first is used" if len(candidates) > 1 else ""
    return candidates[0], note


# --- the summary table --------------------------------------------------------------------------


def summary_rows(jobs: list[Job], labels: dict[Path, str], baseline: Optional[Job]) -> list[dict]:
    base = baseline.full_accuracy if baseline else None
    rows = []
    for job in jobs:
        summary = job.summary or {}
        accuracies = [r["accuracy"] for r in job.grid or []]
        full = job.full_accuracy
        mean = sum(accuracies) / len(accuracies) if accuracies else None
        low = min(accuracies) if accuracies else None
        rows.append({
            "job": job.name,
            "status": job.status,
            "label": labels[job.run_dir],
            "overrides": " ".join(job.overrides),
            "pool": job.pool,
            "pool_size": summary.get("pool_size"),
            "final_loss": summary.get("final_loss"),
            "full_accuracy": full,
            "mean_accuracy": mean,
            "min_accuracy": low,
            "full_relative": full / base if base and full is not None else None,
            "mean_relative": mean / base if base and mean is not None else None,
            "min_relative": low / base if base and low is not None else None,
            "selected": len(job.selected["selected"]) if job.selected else None,
            "grid_size": len(accuracies) or None,
            "steps": summary.get("steps"),
            "total_steps": summary.get("total_steps"),
            "wall_seconds": summary.get("wall_seconds"),
            "images_per_second": summary.get("images_per_second"),
            "note": job.note,
            "dir": str(job.run_dir),
        })
    return rows


def write_summary_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in SUMMARY_COLUMNS} for row in rows)


def _percent(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def _number(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# (header, how one summary row shows it): shared by the terminal table and report.md.
DISPLAY_COLUMNS = [
    ("job", lambda r: r["job"]),
    ("setting", lambda r: r["label"]),
    ("status", lambda r: r["status"]),
    ("final loss", lambda r: _number(r["final_loss"], ".4f")),
    ("full", lambda r: _percent(r["full_accuracy"])),
    ("mean", lambda r: _percent(r["mean_accuracy"])),
    ("min", lambda r: _percent(r["min_accuracy"])),
    ("full/base", lambda r: _percent(r["full_relative"], 1)),
    ("mean/base", lambda r: _percent(r["mean_relative"], 1)),
    ("min/base", lambda r: _percent(r["min_relative"], 1)),
    ("selected", lambda r: "" if r["selected"] is None else f"{r['selected']}/{r['grid_size']}"),
    ("steps", lambda r: "" if r["steps"] is None else f"{r['steps']}/{r['total_steps']}"),
    ("wall", lambda r: _duration(r["wall_seconds"])),
    ("images/s", lambda r: _number(r["images_per_second"], ".0f")),
]


def report_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for header, _ in DISPLAY_COLUMNS:
        table.add_column(header, justify="left" if header in ("job", "setting", "status") else "right")
    for row in rows:
        table.add_row(*(show(row) for _, show in DISPLAY_COLUMNS))
    return table


def headline(rows: list[dict], baseline: Optional[Job], baseline_note: str, labels: dict[Path, str]) -> str:
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    text = f"{len(rows)} jobs (" + ", ".join(f"{n} {status}" for status, n in counts.items()) + "). "
    if baseline:
        text += f"Baseline: job {baseline.name} ({labels[baseline.run_dir]}), full model {_percent(baseline.full_accuracy)}{baseline_note}."
    else:
        text += "No pool=full job with a grid: no baseline, relative columns empty."
    return text


def write_markdown(rows: list[dict], path: Path, title: str, command: Optional[str], headline_text: str, images: list[str]) -> None:
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [headline_text, ""]
    headers = [header for header, _ in DISPLAY_COLUMNS]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(show(row).replace("|", "\\|") for _, show in DISPLAY_COLUMNS) + " |" for row in rows]
    lines += [
        "",
        "`full`, `mean`, `min`: the full model's and the mean and lowest sub-model accuracy of the job's grid. "
        "`/base`: the same divided by the baseline job's full-model accuracy (the paper reports sub-models at >= 96% of it). "
        "`selected`: sub-models at or above the job's own bar (its selected.json) out of its grid. "
        "`final loss`: the mean training loss of the last logged draws.",
    ]
    unfinished = [row for row in rows if row["status"] != "complete"]
    if unfinished:
        lines += ["", "## Jobs not complete", ""]
        lines += [f"- job {row['job']} ({row['label']}): **{row['status']}**: {row['note']} (`{row['dir']}`)" for row in unfinished]
    captions = {"loss_curves.png": "Training loss by width (moving average)", "grids.png": "Grids (accuracy %, one colour scale)"}
    for image in images:
        lines += ["", f"## {captions[image]}", "", f"![{captions[image]}]({image})"]
    path.write_text("\n".join(lines) + "\n")


# --- figures ------------------------------------------------------------------------------------


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


def plot_loss_curves(jobs: list[Job], labels: dict[Path, str], path: Path, bucket_count: int, smooth: Optional[int]) -> bool:
    """One panel per width group and one for all draws; in each, every job's smoothed training loss
    against epochs (so jobs with different grad_accum, hence different step counts, line up).
    Returns False when no job has logged a draw yet."""
    series = []
    for job in jobs:
        rows = read_metrics(job.run_dir)
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


def _relative_to(rows: list[dict], baseline: float) -> list[dict]:
    return [{**row, "relative": row["accuracy"] / baseline} for row in rows]


def draw_difference(ax, rows: list[dict], baseline: float, limit: float):
    """Each cell's accuracy minus the baseline in percentage points, on a diverging scale at 0."""
    import numpy as np

    widths, depths, matrix = grid_matrix(rows)
    values = (np.array(matrix, dtype=float) - baseline) * 100
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    small = len(widths) > 10
    for y in range(len(depths)):
        for x in range(len(widths)):
            if not math.isnan(values[y, x]):
                ax.text(x, y, f"{values[y, x]:+.1f}", ha="center", va="center", fontsize=6.5 if small else 9,
                        color="white" if abs(values[y, x]) > 0.6 * limit else "black")
    ax.set_xticks(range(len(widths)), [f"{w:g}" for w in widths], fontsize=8)
    ax.set_yticks(range(len(depths)), depths, fontsize=8)
    ax.set_xlabel("width")
    ax.set_ylabel("depth (blocks per stage)")
    return image


def plot_grids(jobs: list[Job], labels: dict[Path, str], baseline: Optional[Job], path: Path) -> bool:
    """The jobs' grids side by side on one colour scale; with a baseline job, a second row with
    each cell's difference to the baseline. Returns False when no job has a grid yet."""
    with_grid = [job for job in jobs if job.grid]
    if not with_grid:
        return False
    base = baseline.full_accuracy if baseline else None
    compared = [job for job in with_grid if job is not baseline] if base is not None else []
    accuracies = [100 * row["accuracy"] for job in with_grid for row in job.grid]
    low, high = min(accuracies), max(accuracies)
    cell_widths = [len({row["width"] for row in job.grid}) for job in with_grid]
    depth_rows = max(len({row["depth"] for row in job.grid}) for job in with_grid)

    plt = _pyplot()
    panel_rows = 2 if compared else 1
    fig = plt.figure(figsize=(0.45 * sum(cell_widths) + 1.6 * len(with_grid) + 1.5, panel_rows * (0.5 * depth_rows + 2.2)), layout="constrained")
    grid_spec = fig.add_gridspec(panel_rows, len(with_grid), width_ratios=[max(2, n) for n in cell_widths])
    top = [fig.add_subplot(grid_spec[0, i]) for i in range(len(with_grid))]
    for ax, job in zip(top, with_grid):
        rows = _relative_to(job.grid, base) if base is not None else job.grid
        image = draw_heatmap(ax, rows, vmin=low, vmax=high)
        ax.set_title(labels[job.run_dir] + (" (baseline)" if job is baseline else ""), fontsize=9)
    fig.colorbar(image, ax=top, label="accuracy (%)", shrink=0.9)
    if compared:
        differences = [abs(row["accuracy"] - base) * 100 for job in compared for row in job.grid]
        limit = max(max(differences), 0.1)
        bottom = [fig.add_subplot(grid_spec[1, i]) for i in range(len(with_grid))]
        for ax, job in zip(bottom, with_grid):
            if job is baseline:
                ax.axis("off")
                ax.text(0.5, 0.5, f"baseline\n{100 * base:.2f}%", ha="center", va="center", transform=ax.transAxes)
                continue
            difference = draw_difference(ax, job.grid, base, limit)
            ax.set_title(f"{labels[job.run_dir]} minus baseline (points)", fontsize=9)
        fig.colorbar(difference, ax=bottom, label="accuracy - baseline (points)", shrink=0.9)
    note = "cells: accuracy % and % of the baseline" if base is not None else "cells: accuracy % and % of each job's own full model"
    fig.suptitle(f"grids on one colour scale ({note})", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

