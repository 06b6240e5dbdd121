"""sortednet describe"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..engine.describe import describe
from ..reports.console import make_console
from ..reports.pool_table import pool_table, write_pool_csv


@hydra_command("describe")
def main(cfg: DictConfig) -> None:
    rows, model, pool = describe(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = write_pool_csv(rows, run_dir / "pool.csv")
    console = make_console()
    table, totals = pool_table(rows, model, pool)
    console.print(table)
    console.print(totals, highlight=False)
    console.print(f"wrote {path}")
