"""sortednet bench for the encoder families (model=bert|roberta on GLUE), side by side in one
process, alternating the two sides of each comparison and reporting medians:

1. training sequences/s: the project's loop (texts tokenized once, dynamic padding, the sorted
   forward at the full sub-model) against the loop most users write (a DataLoader whose collate
   tokenizes every batch, the plain `transformers` model with `labels=`), same model and size;
2. the grid of the pool: shared (one forward per width gives every depth) against naive;
3. a step of the all-exits update against a full-model step (what training every exit costs).
"""

from __future__ import annotations

import platform

import torch
from rich.table import Table
from torch import nn

from ...models import build_model
from ...sorted.exits import AllExits
from ...sorted.pool import pool_from_config
from ...sorted.prefix_eval import METHODS
from ...sorted.submodel import full_submodel
from ...sorted.update import plain_loss, sorted_update
from .. import build_task
from ..image.bench import alternate, settings
from .batches import ShuffledBatches, ordered_batches


class ProjectTextLoop:
    def __init__(self, model: nn.Module, task, batch_size: int, seed: int, all_exits: AllExits | None = None):
        self.model = model.train()
        self.task = task
        self.batches = ShuffledBatches(task.train, batch_size, seed, task.pad_id, task.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        self.full = full_submodel(model.depth_limits)
        self.all_exits = all_exits
        self.step = 0

    def run(self, steps: int) -> None:
        losses = []
        for _ in range(steps):
            epoch, index = divmod(self.step, len(self.batches))
            inputs, labels = self.batches.get(epoch, index)
            if self.all_exits is None:
                losses += sorted_update(self.model, self.optimizer, [(self.full, inputs, labels)], 1, plain_loss(self.task.loss))
            else:
                losses += sorted_update(self.model, self.optimizer, [(self.full, inputs, labels)], 1, self.all_exits.loss, forward=self.all_exits.forward)
            self.step += 1
        torch.stack([loss.mean() for loss in losses]).sum().item()


class PlainTextLoop:
    """Raw sentences through a DataLoader whose collate calls the tokenizer per batch (padding
    to the batch's longest), the library model's own forward and loss, loss.item() each step."""

    def __init__(self, hf_model: nn.Module, task, batch_size: int, seed: int):
        examples = task.train_examples
        rows = list(zip(examples.text_a, examples.text_b or [None] * len(examples.text_a), examples.labels))
        tokenizer, max_length, pair = task.tokenizer, task.max_length, task.spec.is_pair

        def collate(batch):
            first = [row[0] for row in batch]
            second = [row[1] for row in batch] if pair else None
            encoded = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            encoded["labels"] = torch.tensor([row[2] for row in batch])
            return encoded

        generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate, generator=generator)
        self.iterator = iter(self.loader)
        self.model = hf_model.train()
        self.optimizer = torch.optim.AdamW(hf_model.parameters(), lr=1e-4, foreach=True)  # the same optimizer on both sides
        self.device = task.device

    def run(self, steps: int) -> None:
        for _ in range(steps):
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.iterator = iter(self.loader)
                batch = next(self.iterator)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.model(**{k: v.to(self.device) for k, v in batch.items()}).loss
            loss.backward()
            self.optimizer.step()
            loss.item()


def run_text_bench(cfg, device: torch.device, console) -> dict:
    task = build_task(cfg.data, cfg.model, device)
    s = settings(cfg)
    fields = task.model_fields()
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model, fields)
    pool = pool_from_config(cfg.pool, template.depth_limits)

    def fresh() -> nn.Module:
        model = build_model(cfg.model, fields)
        model.load_state_dict(template.state_dict())
        return model.to(device)

    batch = min(s["batch_size"], len(task.train))
    console.print(f"bench on {device} ({torch.get_num_threads()} threads), {task.describe()}, batch {batch}, {cfg.model.name} "
                  f"{template.config.num_hidden_layers}x{template.config.hidden_size}", highlight=False)

    console.print("1/3 training throughput at the full model: project loop vs plain DataLoader + transformers loop ...")
    project = ProjectTextLoop(fresh(), task, batch, cfg.seed)
    plain = PlainTextLoop(fresh().hf, task, batch, cfg.seed)
    train_times = alternate({"project": lambda: project.run(s["steps"]), "reference": lambda: plain.run(s["steps"])}, s["rounds"], device)
    throughput = {name: s["steps"] * batch / t["median_s"] for name, t in train_times.items()}

    console.print(f"2/3 grid evaluation of pool={pool.name} ({len(pool)} sub-models): shared vs naive ...")
    model = project.model.eval()
    eval_rows = torch.arange(min(s["eval_examples"], len(task.eval)))
    results = {}

    def grid(method):
        def run():
            results[method] = METHODS[method](model, pool, lambda: ordered_batches(task.eval, 100, task.pad_id, device, len(eval_rows)),
                                              lambda: iter(()), False, task.meter)
        return run

    grid_times = alternate({"shared": grid("shared"), "naive": grid("naive")}, s["grid_rounds"], device, warm_up=False)
    same = max(abs(results["shared"][sub] - results["naive"][sub]) for sub in pool) < 1e-9

    console.print(f"3/3 training step: all exits of pool={pool.name} at once vs the full model alone ...")
    exits_loop = ProjectTextLoop(fresh(), task, batch, cfg.seed, AllExits(pool, task.loss))
    full_loop = ProjectTextLoop(fresh(), task, batch, cfg.seed)
    step_times = alternate({"all_exits": lambda: exits_loop.run(s["steps"]), "full": lambda: full_loop.run(s["steps"])}, s["rounds"], device)

    return {
        "kind": "text",
        "device": str(device),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "model": {"name": cfg.model.name, "layers": template.config.num_hidden_layers, "hidden": template.config.hidden_size},
        "batch_size": batch,
        "settings": s,
        "train_sequences_per_second": throughput,
        "train_speedup": throughput["project"] / throughput["reference"],
        "grid_seconds": {name: t["median_s"] for name, t in grid_times.items()},
        "grid_speedup": grid_times["naive"]["median_s"] / grid_times["shared"]["median_s"],
        "grid_same_metric": same,
        "grid_pool": pool.name,
        "grid_examples": len(eval_rows),
        "all_exits_step_over_full": step_times["all_exits"]["median_s"] / step_times["full"]["median_s"],
    }
    print_text_report(report, console)
    return report


def print_text_report(report: dict, console) -> None:
    model = report["model"]
    table = Table(title=f"sortednet bench, {model['name']} {model['layers']}x{model['hidden']}, batch {report['batch_size']}, on {report['device']} ({report['threads']} threads)")
    for column in ("comparison", "this project", "baseline", "ratio"):
        table.add_column(column)
    seqs = report["train_sequences_per_second"]
    table.add_row("1. training sequences/s, full model", f"{seqs['project']:.0f} (tokenized once, dynamic padding)", f"{seqs['reference']:.0f} (DataLoader tokenizing per batch, plain transformers)", f"{report['train_speedup']:.2f}x")
    grid = report["grid_seconds"]
    table.add_row(f"2. grid of pool={report['grid_pool']} (s)", f"{grid['shared']:.2f} shared", f"{grid['naive']:.2f} naive", f"{report['grid_speedup']:.2f}x, same metric: {report['grid_same_metric']}")
    table.add_row("3. training step (all exits / full model)", "all exits at once", "full model alone", f"{report['all_exits_step_over_full']:.2f}")
    console.print(table)
