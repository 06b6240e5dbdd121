"""Where training metrics go: metrics.csv (logger=csv), Weights & Biases as well (logger=wandb),
or nowhere (logger=none). One row per draw, so losses can be plotted per sub-model."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..registry import Registry

METRIC_COLUMNS = ["epoch", "step", "width", "depth", "loss", "lr", "elapsed_s", "draw"]
METRICS_FILE = "metrics.csv"


class NullLogger:
    def log_draws(self, rows: list[dict]) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class CsvLogger(NullLogger):
    def __init__(self, run_dir: Path, resume_step: Optional[int] = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
            self.file = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.file, METRIC_COLUMNS)
        else:
            self.file = open(self.path, "w", newline="")
            self.writer = csv.DictWriter(self.file, METRIC_COLUMNS)
            self.writer.writeheader()

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint being resumed: they will be trained again."""
        with open(self.path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def log_draws(self, rows: list[dict]) -> None:
        self.writer.writerows(rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class WandbLogger(CsvLogger):
    """metrics.csv plus a wandb run (WANDB_MODE=offline or disabled work as usual)."""

    def __init__(self, run_dir: Path, cfg, config_dict: dict, resume_step: Optional[int] = None):
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs wandb: pip install 'sortednet-cli[wandb]'") from None
        super().__init__(run_dir, resume_step)
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name or Path(run_dir).name,
            dir=str(run_dir),
            config=config_dict,
        )

    def log_draws(self, rows: list[dict]) -> None:
        """One wandb step per optimizer step: the mean loss, and each draw's loss and sub-model
        under its own keys (wandb keeps one value per key and step)."""
        super().log_draws(rows)
        by_step: dict[int, list[dict]] = {}
        for row in rows:
            by_step.setdefault(row["step"], []).append(row)
        for step, draws in by_step.items():
            record = {"train/loss": sum(d["loss"] for d in draws) / len(draws), "train/lr": draws[0]["lr"], "train/epoch": draws[0]["epoch"]}
            for d in draws:
                record.update({f"train/draw{d['draw']}/loss": d["loss"], f"train/draw{d['draw']}/width": d["width"], f"train/draw{d['draw']}/depth": d["depth"]})
            self.run.log(record, step=step)

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})

    def close(self) -> None:
        super().close()
        self.run.finish()


LOGGERS = Registry("logger.name")
LOGGERS.register("none")(lambda cfg, run_dir, config_dict, resume_step: NullLogger())
LOGGERS.register("csv")(lambda cfg, run_dir, config_dict, resume_step: CsvLogger(run_dir, resume_step))
LOGGERS.register("wandb")(lambda cfg, run_dir, config_dict, resume_step: WandbLogger(run_dir, cfg, config_dict, resume_step))


def build_logger(cfg, run_dir: Path, config_dict: dict, resume_step: Optional[int] = None):
    return LOGGERS.get(cfg.name)(cfg, run_dir, config_dict, resume_step)
