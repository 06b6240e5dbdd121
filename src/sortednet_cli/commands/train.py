"""sortednet train"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..engine.train import train


@hydra_command("train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    result = train(cfg, Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task))
    if result.interrupted:
        raise SystemExit(130)
