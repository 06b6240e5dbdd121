"""sortednet bench"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from ..cli import hydra_command
from ..jsonfiles import write_json
from ..errors import UserError
from ..tasks import build_task
from ..tasks.image.bench import run_bench
from ..tasks.text.bench import run_text_bench
from ..engine.runtime import select_device
from ..reports.console import make_console

TARGETS = {"train_speedup": ">= 2", "grid_speedup": ">= 2.5", "sorted_over_full_epoch": "<= 0.6"}


def print_text_report(report: dict, console) -> None:
    model = report["model"]
    table = Table(title=f"sortednet bench, {model['name']} {model['layers']}x{model['hidden']}, batch {report['batch_size']}, on {report['device']} ({report['threads']} threads)")
    for column in ("comparison", "this project", "baseline", "ratio"):
        table.add_column(column)
    seqs = report["train_sequences_per_second"]
    table.add_row("1. training sequences/s, full model", f"{seqs['project']:.0f} (tokenized once, dynamic padding)", f"{seqs['reference']:.0f} (DataLoader tokenizing per batch, plain transformers)", f"{report['train_speedup']:.2f}x")
    grid = report["grid_seconds"]
    table.add_row(f"2. grid of pool={report['grid_pool']} (s)", f"{grid['shared']:.2f} shared", f"{grid['naive']:.2f} naive", f"{report['grid_speedup']:.2f}x, same metric: {report['grid_same_metric']}")
    table.add_row("3. training step (all exits / full model)", "all exits at once", "full model alone", f"{report['all_exits_step_over_full']:.2f}")
    console.print(table)


@hydra_command("bench")
def main(cfg: DictConfig) -> None:
    console = make_console()
    device = select_device(cfg.device.value)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.data.name == "text":
        raise UserError("bench measures training and the grid of classifiers; for a decoder (model=llama) use sortednet bench-decode checkpoint=<run>")
    if cfg.data.name == "glue":
        report = run_text_bench(cfg, build_task(cfg.data, cfg.model, device, False), device, console)
        write_json(run_dir / "bench.json", report)
        print_text_report(report, console)
        console.print(f"wrote {run_dir / 'bench.json'}", highlight=False)
        return
    report = run_bench(cfg, device, console)
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
