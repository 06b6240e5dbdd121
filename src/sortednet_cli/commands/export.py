"""sortednet export"""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from ..reports.console import make_console
from ..cli import hydra_command
from ..engine.eval_grid import open_trained_run, task_for
from ..engine.evaluate import EvalData, recalibrates
from ..models import family_of
from ..engine.export import TASK_FILE, export_hf_dir, export_one, exported_task, full_model_bytes, requested_submodels
from ..jsonfiles import write_json


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    console = make_console()
    run = open_trained_run(cfg.checkpoint, cfg.device.value, console)
    model, path = run.model, run.path
    subs = requested_submodels(cfg.sub, path, model.depth_limits)
    recalibrate_bn = recalibrates(model, cfg.eval)
    # Models with norm statistics need the calibration examples; library models, the tokenizer.
    auto_class = family_of(model).hf_auto_class
    task = task_for(run, cfg, hydra_cfg.overrides.task) if recalibrate_bn or auto_class else None
    calib_batches = EvalData.from_task(task, cfg.eval).calib_batches if recalibrate_bn else None
    out_dir = Path(hydra_cfg.runtime.output_dir)
    task_info = exported_task(run.task_state)
    rows = [export_one(model, sub, calib_batches, recalibrate_bn, path, out_dir, task_info) for sub in subs]
    if task_info:  # beside the .pt files too, readable without torch
        write_json(out_dir / TASK_FILE, task_info)
    if auto_class:
        for row, sub in zip(rows, subs):
            row["hf_dir"] = str(export_hf_dir(model, sub, task.tokenizer, out_dir))

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
        "(with optimizer state)."
        + ("" if auto_class else f" BN {'recalibrated per sub-model' if recalibrate_bn else 'not recalibrated'}. Load with sortednet_cli.load_exported(path).")
        + (f" Its {len(task_info['classes'])} class names, normalisation and image size: {out_dir / TASK_FILE} (and model.task)." if "classes" in task_info else ""),
        highlight=False,
    )
    if auto_class:
        console.print(f"Hugging Face directories (config.json, safetensors, tokenizer): {', '.join(r['hf_dir'] for r in rows)}; "
                      f"load with transformers.{auto_class}.from_pretrained(dir), no sortednet needed.", highlight=False)
