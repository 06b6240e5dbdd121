"""sortednet bench"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from ..cli import hydra_command
from ..jsonfiles import write_json
from ..tasks.image.bench import run_bench
from ..engine.runtime import select_device
from ..reports.console import make_console

TARGETS = {"train_speedup": ">= 2", "grid_speedup": ">= 2.5", "sorted_over_full_epoch": "<= 0.6"}


@hydra_command("bench")
def main(cfg: DictConfig) -> None:
    console = make_console()
    device = select_device(cfg.device.value)
    report = run_bench(cfg, device, console)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_json(run_dir / "bench.json", report)

    table = Table(title=f"sortednet bench on {report['device']}, torch {report['torch']}")
    for column in ("comparison", "this project", "baseline", "ratio", "target"):
        table.add_column(column)
    ips = report["train_images_per_second"]
    peak = report["train_peak_mib"]
    table.add_row("1. training images/s, pool=160", f"{ips['project']:.0f} (peak {peak['project'] or 0:.0f} MiB)", f"{ips['reference']:.0f} plain loop (peak {peak['reference'] or 0:.0f} MiB)", f"{report['train_speedup']:.2f}x", TARGETS["train_speedup"])
    grid = report["grid_seconds"]
    table.add_row("2. grid eval of pool=160 (s)", f"{grid['shared']:.1f} shared", f"{grid['naive']:.1f} naive", f"{report['grid_speedup']:.2f}x, same accuracy: {report['grid_same_accuracy']}", TARGETS["grid_speedup"])
    epoch = report["epoch_seconds_estimate"]
    epeak = report["epoch_peak_mib"]
    table.add_row("3. epoch time (s)", f"{epoch['pool160']:.1f} pool=160 (peak {epeak['pool160'] or 0:.0f} MiB)", f"{epoch['full']:.1f} full model (peak {epeak['full'] or 0:.0f} MiB)", f"{report['sorted_over_full_epoch']:.2f}", TARGETS["sorted_over_full_epoch"])
    for width, step in report["memory_format"].items():
        table.add_row(f"4. training step at w={width} (ms)", f"{1000 * step['channels_last_step_s']:.0f} channels_last", f"{1000 * step['nchw_step_s']:.0f} NCHW", f"{step['channels_last_speedup']:.2f}x", "")
    console.print(table)
    console.print(f"wrote {run_dir / 'bench.json'}", highlight=False)
