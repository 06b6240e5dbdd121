"""sortednet describe"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..reports.console import make_console
from ..cli import hydra_command
from ..models import build_model
from ..sorted.pool import pool_from_config
from ..reports.pool_table import describe_pool, pool_table, write_pool_csv


@hydra_command("describe")
def main(cfg: DictConfig) -> None:
    model = build_model(cfg.model)
    pool = pool_from_config(cfg.pool, model.depth_limits)
    rows = describe_pool(model, pool)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = write_pool_csv(rows, run_dir / "pool.csv")
    console = make_console()
    table, totals = pool_table(rows, model, pool)
    console.print(table)
    console.print(totals, highlight=False)
    console.print(f"wrote {path}")
