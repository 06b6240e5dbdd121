"""sortednet export"""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from ..reports.console import make_console
from ..cli import hydra_command
from ..engine.data import Normalizer, load_splits
from ..engine.evaluate import EvalData, recalibrates
from ..engine.export import export_one, full_model_bytes, requested_submodels
from ..engine.grid import load_trained, newest_train_run
from ..engine.overrides import overlay, override_keys
from ..engine.runtime import select_device


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    console = make_console()
    location = cfg.checkpoint
    if location is None:
        location = newest_train_run()
        console.print(f"checkpoint not given: using the newest train run, {location}", highlight=False)
    device = select_device(cfg.device.value)
    trained, model, _, path = load_trained(location, device)
    subs = requested_submodels(cfg.sub, path, model.depth_limits)
    recalibrate_bn = recalibrates(model, cfg.eval)
    calib_batches = None
    if recalibrate_bn:
        data_keys = [k for k in override_keys(hydra_cfg.overrides.task) if k == "data" or k.startswith("data.")]
        splits = load_splits(overlay(trained, cfg, data_keys).data, trained.model.num_classes)
        calib_batches = EvalData.from_splits(splits, cfg.eval, device, Normalizer(device, trained.trainer.channels_last)).calib_batches
    out_dir = Path(hydra_cfg.runtime.output_dir)
    rows = [export_one(model, sub, calib_batches, recalibrate_bn, path, out_dir) for sub in subs]

    full_bytes = full_model_bytes(model, out_dir)
    checkpoint_bytes = os.path.getsize(path)
    full_params = sum(p.numel() for p in model.parameters())
    table = Table(title=f"exported from {path}")
    for column in ("width", "depth", "params", "size", "vs full weights", "file"):
        table.add_column(column)
    for row in rows:
        table.add_row(f"{row['width']:g}", row["depth"], f"{row['params']:,} ({row['params'] / full_params:.0%})", f"{row['bytes'] / 1024:.1f} KiB", f"{row['bytes'] / full_bytes:.0%}", row["path"])
    console.print(table)
    console.print(
        f"full model: {full_params:,} parameters, weights {full_bytes / 1024:.1f} KiB; training checkpoint {checkpoint_bytes / 1024:.1f} KiB "
        f"(with optimizer state). BN {'recalibrated per sub-model' if recalibrate_bn else 'not recalibrated'}. "
        "Load with sortednet_cli.load_exported(path).",
        highlight=False,
    )
