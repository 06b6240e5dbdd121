"""Typed config schemas, registered in Hydra's ConfigStore.

The YAML files in conf/ sit on top of these dataclasses, so a misspelled key or a value of the
wrong type fails while the config is composed, with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# "in" is a Python keyword, so this one enum is built from a mapping.
Norm = Enum("Norm", {"bn": "bn", "in": "in", "gn": "gn"}, type=str)


class SamplerName(str, Enum):
    uniform = "uniform"
    sandwich = "sandwich"
    weighted = "weighted"
    full = "full"


class DataName(str, Enum):
    cifar10 = "cifar10"
    fake = "fake"


class EvalSplit(str, Enum):
    test = "test"
    val = "val"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoggerName(str, Enum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


class BnMode(str, Enum):
    recalibrate = "recalibrate"
    running = "running"


@dataclass
class ModelConfig:
    name: str = "cpreresnet20"
    norm: Norm = Norm["bn"]
    blocks_per_stage: int = 2
    num_classes: int = 10
    gn_groups: int = 8


@dataclass
class PoolConfig:
    name: str = MISSING
    widths: List[float] = MISSING
    # "all" (every per-stage combination), or a list whose entries are an int k (k blocks in
    # every stage), a per-stage list like [1, 2, 2], or "max" (every stage at full depth).
    depths: Any = MISSING


@dataclass
class SamplerConfig:
    name: SamplerName = SamplerName.uniform
    weights: Optional[List[float]] = None
    alpha: Optional[float] = None


@dataclass
class DataConfig:
    name: DataName = DataName.cifar10
    root: str = "data"
    download: bool = False
    verify: bool = True
    train_subset: int = 0
    test_subset: int = 0
    val_size: int = 0
    eval_split: EvalSplit = EvalSplit.test
    augment: bool = True
    # data=fake only: how many synthetic images to make.
    fake_train_size: int = 2048
    fake_test_size: int = 512


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class SchedConfig:
    name: str = "cosine"
    warmup_epochs: float = 5.0


@dataclass
class TrainerConfig:
    epochs: int = 200
    batch_size: int = 128
    grad_accum: int = 1
    accum_same_batch: bool = False
    seed: int = 0
    device: Device = Device.auto
    amp: bool = True
    threads: int = 0
    channels_last: bool = True
    checkpoint_every: int = 1
    log_every: int = 20


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.csv
    project: str = "sortednet"
    entity: Optional[str] = None
    run_name: Optional[str] = None


@dataclass
class EvalConfig:
    bn: BnMode = BnMode.recalibrate
    calib_images: int = 2000
    batch_size: int = 500


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    pool: PoolConfig = MISSING
    sampler: SamplerConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    sched: SchedConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    # A train run directory or a last.pt to continue from.
    resume: Optional[str] = None


@dataclass
class DescribeConfig:
    model: ModelConfig = MISSING
    pool: PoolConfig = MISSING


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="describe_schema", node=DescribeConfig)
