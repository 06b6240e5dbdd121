"""sortednet select"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..reports.console import make_console
from ..cli import hydra_command
from ..engine.eval_grid import select_and_report
from ..engine.runs import newest_grid
from ..errors import UserError
from ..reports.grid_report import read_grid


@hydra_command("select")
def main(cfg: DictConfig) -> None:
    console = make_console()
    location = cfg.grid
    if location is None:
        location = newest_grid()
        console.print(f"grid not given: using the newest, {location}", highlight=False)
    rows, meta, path, metric = read_grid(str(location))
    baseline = meta["baseline"].get(metric.name)
    if baseline is None:
        raise UserError(f"{path.with_suffix('.json')} records no {metric.name} baseline")
    title = f"selection from {path}"
    select_and_report(rows, metric, baseline, cfg.select, title, Path(HydraConfig.get().runtime.output_dir), console)
