"""sortednet eval-grid"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..engine.eval_grid import open_trained_run, run_grid, task_for
from ..engine.evaluate import EvalData
from ..reports.console import make_console
from ..sorted.pool import pool_from_config


@hydra_command("eval_grid")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    console = make_console()
    run = open_trained_run(cfg.checkpoint, cfg.device.value, console)
    pool = run.pool if cfg.pool is None else pool_from_config(cfg.pool, run.model.depth_limits)
    eval_data = EvalData.from_task(task_for(run, cfg, hydra_cfg.overrides.task), cfg.eval)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_grid(run.model, pool, eval_data, cfg.eval, cfg.select, run_dir, str(run.path), console, run.device)
