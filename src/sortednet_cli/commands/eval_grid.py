"""sortednet eval-grid"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..reports.console import make_console
from ..cli import hydra_command
from ..engine.data import Normalizer, load_splits
from ..engine.evaluate import EvalData
from ..engine.grid import load_trained, newest_train_run, run_grid
from ..engine.overrides import overlay, override_keys
from ..engine.runtime import select_device
from ..engine.train import pool_from_config


@hydra_command("eval_grid")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    console = make_console()
    location = cfg.checkpoint
    if location is None:
        location = newest_train_run()
        console.print(f"checkpoint not given: using the newest train run, {location}", highlight=False)
    device = select_device(cfg.device.value)
    trained, model, pool, path = load_trained(location, device)
    if cfg.pool is not None:
        pool = pool_from_config(cfg.pool, model.depth_limits)
    data_keys = [k for k in override_keys(hydra_cfg.overrides.task) if k == "data" or k.startswith("data.")]
    data_cfg = overlay(trained, cfg, data_keys).data
    splits = load_splits(data_cfg, trained.model.num_classes)
    normalize = Normalizer(device, trained.trainer.channels_last)
    eval_data = EvalData.from_splits(splits, cfg.eval, device, normalize)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_grid(model, pool, eval_data, cfg.eval, cfg.select, run_dir, str(path), console, device, trained.trainer.channels_last)
