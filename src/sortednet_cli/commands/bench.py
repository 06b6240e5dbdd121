"""sortednet bench"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..jsonfiles import write_json
from ..errors import UserError
from ..models import family_named
from ..engine.bench import run_bench
from ..engine.runtime import select_device, set_threads
from ..reports.console import make_console


@hydra_command("bench")
def main(cfg: DictConfig) -> None:
    console = make_console()
    set_threads(cfg.threads, "threads")
    device = select_device(cfg.device.value)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    family = family_named(cfg.model.name)
    if family.bench is None:
        raise UserError(family.bench_hint or f"model={cfg.model.name} has no bench")
    report = run_bench(cfg, device, console, run_dir, family.bench())  # it prints the table
    write_json(run_dir / "bench.json", report)
    console.print(f"wrote {run_dir / 'bench.json'}", highlight=False)
