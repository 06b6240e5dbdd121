"""The core is open: a model family and a task registered from inside this test (no engine
edit) train through `train` to a grid and a selection. The toy task's metric is lower-is-better
(mean squared error), so relative numbers and the bar must follow its direction."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from rich.console import Console
from torch import nn

from sortednet_cli.engine.train import train
from sortednet_cli.models import ModelFamily, SortedModel, register_family
from sortednet_cli.models.staged import StagedNetwork
from sortednet_cli.sorted.submodel import scaled
from sortednet_cli.tasks import TASKS, Metric, Task

from conftest import compose_config


@dataclass
class ToyModelConfig:
    name: str = "toy_mlp"
    dim: int = 8
    hidden: int = 32
    layers: int = 3


class ToyMLP(StagedNetwork):
    """A residual MLP: one stage of `layers` blocks; width keeps the first hidden units."""

    def __init__(self, dim: int = 8, hidden: int = 32, blocks: List[int] = (3,)):
        super().__init__()
        self.arch = {"name": "toy_mlp", "dim": dim, "hidden": hidden, "blocks": list(blocks)}
        self.stem = nn.Linear(dim, hidden)
        self.stages = nn.ModuleList([nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks[0]))])
        self.head = nn.Linear(hidden, 1)

    def units(self, width: float) -> dict:
        return {"hidden": scaled(self.arch["hidden"], width)}

    def unit_summary(self, width: float) -> str:
        return str(self.units(width)["hidden"])

    def run_stem(self, x, width):
        h = self.units(width)["hidden"]
        return F.relu(F.linear(x, self.stem.weight[:h], self.stem.bias[:h]))

    def run_block(self, stage, index, x, width):
        layer, h = self.stages[stage][index], x.shape[1]
        return x + F.relu(F.linear(x, layer.weight[:h, :h], layer.bias[:h]))

    def run_head(self, x, width):
        return F.linear(x, self.head.weight[:, : x.shape[1]], self.head.bias).squeeze(1)

    def head_module(self):
        return self.head


@dataclass
class ToyDataConfig:
    name: str = "toy_regression"
    size: int = 512
    noise: float = 0.05


class SquaredError:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, outputs, targets):
        self.total += float(((outputs - targets) ** 2).sum())
        self.count += len(targets)

    def value(self):
        return self.total / self.count


class ToyBatches:
    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def __len__(self):
        return len(self.x) // self.batch_size

    def get(self, epoch, index, shard=slice(None)):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        picks = order[index * self.batch_size : (index + 1) * self.batch_size][shard]
        return self.x[picks], self.y[picks]


class ToyRegression:
    """y = a smooth function of 8 numbers; the metric is the mean squared error."""

    name = "toy_regression"
    kind = "regression"
    tokenizer = None
    metric = Metric("mse", higher_is_better=False, lower=0.0)
    memory_format = torch.contiguous_format
    eval_name = "val"

    def __init__(self, data_cfg, model_cfg, device, state=None):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(data_cfg.size + 256, model_cfg.dim, generator=gen)
        y = torch.tanh(x[:, :4].sum(1)) + x[:, 4] * x[:, 5] + data_cfg.noise * torch.randn(len(x), generator=gen)
        self.train_x, self.train_y, self.val_x, self.val_y = x[:-256], y[:-256], x[-256:], y[-256:]

    def describe(self):
        return f"{len(self.train_x)} toy examples"

    def state(self):
        return {}

    def model_fields(self):
        return {}

    def model_fields_without_data(self):
        return {}

    def train_batches(self, batch_size, seed):
        return ToyBatches(self.train_x, self.train_y, batch_size, seed)

    def eval_batches(self, batch_size):
        return ((self.val_x[i : i + batch_size], self.val_y[i : i + batch_size]) for i in range(0, 256, batch_size))

    def calib_batches(self, batch_size, count):
        return iter([(self.train_x[:count], self.train_y[:count])])

    def calib_size(self, count):
        return min(count, len(self.train_x))

    def eval_size(self):
        return 256

    def eval_fingerprint(self):
        return "toy|256"

    def example_input(self, batch_size):
        return torch.zeros(batch_size, self.train_x.shape[1])

    def example_input_without_data(self, batch_size):
        return self.example_input(batch_size)

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def soft_loss(self, outputs, teacher, temperature):
        return F.mse_loss(outputs, teacher)

    def meter(self):
        return SquaredError()


def register_toys() -> None:
    register_family(ModelFamily("toy_mlp", ToyModelConfig, lambda cfg: ToyMLP(cfg.dim, cfg.hidden, [cfg.layers]), {"toy_mlp": ToyMLP},
                                frozenset({"regression"})))
    TASKS.register("toy_regression", schema=ToyDataConfig)(ToyRegression)
    store = ConfigStore.instance()
    store.store(group="model", name="toy_mlp", node={"defaults": ["/schemas/model/toy_mlp@_here_", "_self_"]})
    store.store(group="data", name="toy_regression", node={"defaults": ["/schemas/data/toy_regression@_here_", "_self_"]})
    store.store(group="pool", name="toy", node={"name": "toy", "widths": [0.25, 0.5, 1.0], "depths": [1, 2, "max"]})


def test_a_model_and_task_registered_here_train_to_a_grid(tmp_path):
    register_toys()
    cfg = compose_config("train", [
        "model=toy_mlp", "data=toy_regression", "pool=toy", "sampler=sandwich", "optim=adamw", "optim.lr=3e-3",
        "sched.warmup_steps=10", "trainer.epochs=12", "trainer.batch_size=32", "trainer.grad_accum=3",
        "trainer.accum_same_batch=true", "trainer.device=cpu", "trainer.clip_grad_norm=1.0",
        "eval.latency=false", "select.min_relative=0.5",
    ])
    model = ToyMLP()
    assert isinstance(model, SortedModel) and isinstance(ToyRegression(cfg.data, cfg.model, None, False), Task)
    result = train(cfg, tmp_path / "run", console=Console(file=io.StringIO(), width=120))

    with open(tmp_path / "run" / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[4] == "mse" and len(rows) == 9
    grid = {(float(r["width"]), r["depth"]): (float(r["mse"]), float(r["relative"])) for r in rows}
    full_mse, full_relative = grid[(1.0, "3")]
    assert full_relative == 1.0
    targets_variance = 1.0  # tanh(sum) + x4*x5 has a variance near 1; learning brings it well below
    assert full_mse < 0.5 * targets_variance
    for mse, relative in grid.values():  # lower is better: relative = baseline / value
        assert math.isclose(relative, full_mse / mse, rel_tol=1e-9)

    selected = json.loads((tmp_path / "run" / "selected.json").read_text())
    bar = selected["bar"]["mse"]
    assert bar == full_mse / 0.5  # the relative bar of a lower-is-better metric is a ceiling
    assert {(r["width"], r["depth"]) for r in selected["selected"]} == {k for k, (mse, _) in grid.items() if mse <= bar}
    assert [q["mse"] for q in result.summary["quick_eval"]][0] == full_mse
