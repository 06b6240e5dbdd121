"""The train jobs a report compares: found in a sweep (or given as run directories), read from
their run directories, labelled by what sets them apart, and summarised against a baseline job.

Every job is read from its run directory alone, so a sweep that is still running, or has failed
jobs, is reported as far as it got.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..errors import UserError
from .grid_report import read_grid
from .loggers import METRICS_FILE
from ..tasks.base import Metric
from ..jsonfiles import read_json
from ..renames import upgrade_config, upgrade_record

# The column names of a report none of whose jobs has a grid yet: image classification's.
NO_GRID_METRIC = Metric("accuracy", True, 0.0, 1.0)

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
    grid_meta: Optional[dict]
    selected: Optional[dict]
    status: str
    note: str

    @property
    def pool(self) -> Optional[str]:
        """The pool trained (train runs) or evaluated (eval-grid runs)."""
        if "trainer" not in self.config:
            return (self.grid_meta or {}).get("pool")
        return (self.summary or {}).get("pool") or self.config.get("pool", {}).get("name")

    @property
    def metric(self) -> Metric:
        """The metric of the job's grid (a job has a grid only with its grid.json: read_grid)."""
        return Metric.from_dict(self.grid_meta["metric"]) if self.grid_meta else NO_GRID_METRIC

    @property
    def full_value(self) -> Optional[float]:
        """The metric of the checkpoint's full model, as grid.json names it ("full"). None without
        a grid, or when the grid lacks that sub-model (some pools leave it out)."""
        if not self.grid:
            return None
        full = self.grid_meta["full"]
        for row in self.grid:
            if row["width"] == float(full["width"]) and row["depth"] == full["depth"]:
                return row[self.metric.name]
        return None

    @property
    def full_depth(self) -> Optional[str]:
        """The full model's depth, as grid.json names it."""
        return self.grid_meta["full"]["depth"] if self.grid else None


# --- finding and reading jobs -------------------------------------------------------------------


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
    config = upgrade_config(OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"), resolve=False))
    if "trainer" not in config and not (run_dir / "grid.csv").is_file():
        raise UserError(f"{run_dir} is neither a train run directory nor an eval-grid one (no trainer in its config, no grid.csv)")
    overrides_path = hydra_dir / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.is_file() else []
    summary = upgrade_record(read_json(run_dir / "summary.json"))
    grid, grid_meta = None, None
    if (run_dir / "grid.csv").is_file():
        try:
            grid, grid_meta, _, _ = read_grid(str(run_dir))
        except UserError:  # being written right now
            pass
    selected = read_json(run_dir / "selected.json")
    if "trainer" not in config:  # an eval-grid run: a grid of some checkpoint, nothing trained here
        source = (grid_meta or {}).get("checkpoint", "a checkpoint")
        return Job(name, run_dir, overrides, config, summary, grid, grid_meta, selected, "complete", f"eval-grid of {source}")
    status, note = job_status(run_dir, summary, bool(config["trainer"].get("eval_grid", False)), grid is not None)
    return Job(name, run_dir, overrides, config, summary, grid, grid_meta, selected, status, note)


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


LABEL_OVERRIDES = 3  # a job set apart by more overrides than this is named by its directory


def job_labels(jobs: list[Job]) -> dict[Path, str]:
    """Each job named by the overrides that differ between jobs (pool=full, trainer.grad_accum=4);
    by its directory name when nothing differs, or when too much does (a grid of a checkpoint
    beside a fine-tuning run) for a label to fit over a figure."""
    settings = [dict(map(_split_override, job.overrides)) for job in jobs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differing = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    labels = {}
    for job, setting in zip(jobs, settings):
        shown = [k for k in differing if k in setting]
        # Paths (checkpoint=, data.root=) by their last part: labels title figures.
        label = " ".join(f"{k}={Path(setting[k]).name if '/' in setting[k] else setting[k]}" for k in shown)
        labels[job.run_dir] = label if 0 < len(shown) <= LABEL_OVERRIDES else job.name
    return labels


def report_metric(jobs: list[Job]) -> Metric:
    """The one metric the jobs' grids measure (accuracy when no job has a grid yet)."""
    metrics = {job.metric for job in jobs if job.grid}
    if len(metrics) > 1:
        names = ", ".join(sorted(f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)" for m in metrics))
        raise UserError(f"the jobs' grids measure different metrics: {names}; report them separately")
    return metrics.pop() if metrics else NO_GRID_METRIC


def find_baseline(jobs: list[Job]) -> tuple[Optional[Job], str]:
    """The job trained on pool=full: its full model is what every other job is compared to."""
    candidates = [job for job in jobs if job.pool == "full" and job.full_value is not None]
    if not candidates:
        return None, ""
    note = f"; {len(candidates)} pool=full jobs, the first is used" if len(candidates) > 1 else ""
    return candidates[0], note


# --- the summary --------------------------------------------------------------------------------


def summary_rows(jobs: list[Job], labels: dict[Path, str], baseline: Optional[Job], metric: Metric) -> list[dict]:
    """One row per job. full_/mean_/min_<metric>: the job's full model, the mean of its grid and
    the worst sub-model of its grid (the highest value when lower is better: min_ always means the
    worst). *_relative: each as metric.relative to the baseline's full model (above 1 is better);
    median_relative: the median sub-model's; at_96_percent: the share of the grid at or above 96%
    of the baseline (the paper's bar)."""
    base = baseline.full_value if baseline else None
    rows = []
    for job in jobs:
        summary = job.summary or {}
        values = [r[metric.name] for r in job.grid or []]
        full = job.full_value
        mean = sum(values) / len(values) if values else None
        worst = metric.worst(values) if values else None
        relatives = [r for r in (metric.relative(v, base) for v in values) if r is not None]
        rows.append({
            "job": job.name,
            "status": job.status,
            "label": labels[job.run_dir],
            "overrides": " ".join(job.overrides),
            "pool": job.pool,
            "pool_size": summary.get("pool_size"),
            "final_loss": summary.get("final_loss"),
            metric.column("full"): full,
            metric.column("mean"): mean,
            metric.column("min"): worst,
            "full_relative": metric.relative(full, base),
            "mean_relative": metric.relative(mean, base),
            "min_relative": metric.relative(worst, base),
            "median_relative": metric.relative(statistics.median(values), base) if values else None,
            "at_96_percent": sum(relative >= 0.96 for relative in relatives) / len(relatives) if relatives else None,
            "selected": len(job.selected["selected"]) if job.selected else None,
            "grid_size": len(values) or None,
            "steps": summary.get("steps"),
            "total_steps": summary.get("total_steps"),
            "wall_seconds": summary.get("wall_seconds"),
            "examples_per_second": summary.get("examples_per_second"),
            "note": job.note,
            "dir": str(job.run_dir),
        })
    return rows


def split_noise(baseline: Optional[Job], metric: Metric) -> Optional[float]:
    """The standard error of one fraction-valued metric measured on the baseline's evaluation
    set (binomial: sqrt(p (1 - p) / n)); None when it does not apply."""
    if baseline is None or not metric.is_fraction or baseline.full_value is None:
        return None
    n = (baseline.grid_meta or {}).get("eval_examples")
    p = baseline.full_value
    return math.sqrt(p * (1 - p) / n) if n and 0 <= p <= 1 else None
