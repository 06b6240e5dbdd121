"""sortednet describe"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..engine.describe import describe, describe_memory
from ..errors import UserError
from ..reports.console import make_console
from ..reports.memory_table import memory_table, write_memory_json
from ..reports.pool_table import pool_table, write_pool_csv


@hydra_command("describe")
def main(cfg: DictConfig) -> None:
    estimate = describe_memory(cfg)  # from the config alone: a bad setting fails before any model is built
    if estimate is None and cfg.memory.only:
        raise UserError(f"memory.only=true: model={cfg.model.name} has no memory estimate (its family declares no memory shape)")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    console = make_console()
    if not cfg.memory.only:
        rows, model, pool = describe(cfg)
        path = write_pool_csv(rows, run_dir / "pool.csv")
        table, totals = pool_table(rows, model, pool)
        console.print(table)
        console.print(totals, highlight=False)
        console.print(f"wrote {path}")
    if estimate is None:
        console.print(f"memory per rank: not estimated for model={cfg.model.name} (its family declares no memory shape)", highlight=False)
        return
    table, total = memory_table(estimate)
    console.print(table)
    console.print(total, highlight=False)
    console.print(f"wrote {write_memory_json(estimate, run_dir / 'memory.json')}")
