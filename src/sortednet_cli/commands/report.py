"""sortednet report"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..reports.jobs import find_baseline, job_labels, load_job, read_metrics, report_metric, split_noise, summary_rows, sweep_command, sweep_job_dirs
from ..engine.runs import newest_sweep
from ..errors import UserError
from ..reports.console import make_console
from ..reports.report_figures import plot_grids, plot_loss_curves, plot_plateau
from ..reports.report_table import headline, report_table, write_markdown, write_summary_csv


@hydra_command("report")
def main(cfg: DictConfig) -> None:
    console = make_console()
    if cfg.width_buckets < 1 or (cfg.smooth is not None and cfg.smooth < 1):
        raise UserError(f"width_buckets and smooth must be >= 1 (got {cfg.width_buckets} and {cfg.smooth})")
    if cfg.runs is not None and cfg.sweep_dir is not None:
        raise UserError("give sweep_dir=<multirun dir> or runs=[<run dir>,...], not both")
    if cfg.runs is not None:
        if not cfg.runs:
            raise UserError("runs=[] is empty; list train run directories: runs=[<run dir>,<run dir>]")
        jobs = [load_job(Path(run), name=run) for run in cfg.runs]
        out_dir, title, command = Path(HydraConfig.get().runtime.output_dir), f"Report on {len(jobs)} train runs", None
    else:
        sweep_dir = Path(cfg.sweep_dir) if cfg.sweep_dir is not None else newest_sweep()
        if cfg.sweep_dir is None:
            console.print(f"sweep_dir not given: using the newest sweep, {sweep_dir}", highlight=False)
        jobs = [load_job(job_dir, name=job_dir.name) for job_dir in sweep_job_dirs(sweep_dir)]
        out_dir, title, command = sweep_dir, f"Sweep report: {sweep_dir}", sweep_command(sweep_dir)

    labels = job_labels(jobs)
    metric = report_metric(jobs)
    baseline, baseline_note = find_baseline(jobs)
    rows = summary_rows(jobs, labels, baseline, metric)
    noise = split_noise(baseline, metric)
    summary_text = headline(rows, baseline, baseline_note, labels, metric, noise)
    images = []
    metrics = {job.run_dir: read_metrics(job.run_dir) for job in jobs}
    if plot_loss_curves(jobs, metrics, labels, out_dir / "loss_curves.png", cfg.width_buckets, cfg.smooth):
        images.append("loss_curves.png")
    if plot_grids(jobs, labels, baseline, out_dir / "grids.png", metric):
        images.append("grids.png")
    if plot_plateau(jobs, labels, baseline, out_dir / "plateau.png", metric, noise):
        images.append("plateau.png")
    write_summary_csv(rows, out_dir / "summary.csv", metric)
    write_markdown(rows, out_dir / "report.md", title, command, summary_text, images, metric)

    console.print(report_table(rows, title, metric))
    console.print(summary_text, highlight=False)
    for row in rows:
        if row["status"] != "complete":
            console.print(f"job {row['job']} ({row['label']}) {row['status']}: {row['note']}", highlight=False)
    missing = {"loss_curves.png": "no job has logged a draw yet", "grids.png": "no job has a grid yet", "plateau.png": "no job has a grid yet"}
    for image, why in missing.items():
        if image not in images:
            console.print(f"no {image}: {why}", highlight=False)
    written = ", ".join(["summary.csv", "report.md", *images])
    console.print(f"wrote {written} to {out_dir}", highlight=False)
