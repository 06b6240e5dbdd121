"""sortednet bench for the encoder families (model=bert|roberta on GLUE): the plain side and
what is the encoders' own. The driver (engine/bench.py) runs, alternating the two sides of each
comparison and reporting medians:

1. training sequences/s at the full model: the engine's real training step (texts tokenized once,
   dynamic padding, the sorted forward) against the loop most users write (a DataLoader whose
   collate tokenizes every batch, the plain `transformers` model with `labels=`), same weights;
2. the grid of the pool: shared (one forward per width gives every depth) against naive;
3. (here) a step of the all-exits update against a full-model step, both the engine's: what
   training every exit costs.
"""

from __future__ import annotations

import platform

import torch
from rich.table import Table
from torch import nn

from ...sorted.pool import Pool
from .batches import ordered_batches

GRID_BATCH = 100


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
        self.optimizer = torch.optim.AdamW(hf_model.parameters(), lr=1e-4, foreach=True)
        self.device = task.device

    def close(self) -> None:
        self.iterator = None

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


def compare_all_exits(ctx, engine) -> dict:
    """The engine's step with trainer.objective=all_exits (every exit of the pool at the full
    width, one forward) against its step at the full model alone."""
    full = ctx.one_pool("full", 1.0)
    steps = ctx.settings["steps"]
    with ctx.engine_loop(full, all_exits=ctx.pool) as exits_loop, ctx.engine_loop(full) as full_loop:
        times = ctx.alternate({"all_exits": lambda: exits_loop.steps(steps), "full": lambda: full_loop.steps(steps)})
    return {"all_exits_step_over_full": times["all_exits"]["median_s"] / times["full"]["median_s"]}


class TextBench:
    """The encoder families' bench (ModelFamily.bench); engine/bench.py's FamilyBench."""

    def check(self, cfg) -> None:
        pass  # build_task refuses data the encoder families do not pair with

    def header(self, ctx) -> str:
        config = ctx.template.config
        return (f"bench on {ctx.device} ({torch.get_num_threads()} threads), {ctx.task.describe()}, batch {ctx.batch_size}, "
                f"{ctx.cfg.model.name} {config.num_hidden_layers}x{config.hidden_size}")

    def train_title(self, ctx) -> str:
        return "training throughput at the full model: the engine's training step vs plain DataLoader + transformers loop"

    def train_pool(self, ctx) -> Pool:
        return ctx.one_pool("full", 1.0)

    def plain(self, ctx, pool: Pool) -> PlainTextLoop:
        return PlainTextLoop(ctx.fresh_model().hf, ctx.task, ctx.batch_size, ctx.cfg.seed)

    def grid_title(self, ctx) -> str:
        return f"grid evaluation of pool={ctx.pool.name} ({len(ctx.pool)} sub-models): shared vs naive"

    def grid_batches(self, ctx):
        task = ctx.task
        count = min(ctx.settings["eval_examples"], len(task.eval))
        return (lambda: ordered_batches(task.eval, GRID_BATCH, task.pad_id, ctx.device, count)), (lambda: iter(())), {"examples": count}

    def extras(self, ctx):
        return [(f"training step: all exits of pool={ctx.pool.name} at once vs the full model alone", compare_all_exits)]

    def report(self, ctx, figures: dict) -> dict:
        config, throughput, grid = ctx.template.config, figures["throughput"], figures["grid"]
        return {
            "kind": "text",
            "device": str(ctx.device),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "model": {"name": ctx.cfg.model.name, "layers": config.num_hidden_layers, "hidden": config.hidden_size},
            "batch_size": ctx.batch_size,
            "settings": ctx.settings,
            "train_sequences_per_second": throughput,
            "train_speedup": throughput["project"] / throughput["reference"],
            "grid_seconds": {name: t["median_s"] for name, t in grid.items()},
            "grid_speedup": grid["naive"]["median_s"] / grid["shared"]["median_s"],
            "grid_same_metric": figures["grid_same"],
            "grid_pool": ctx.pool.name,
            "grid_examples": figures["grid_sizes"]["examples"],
            "all_exits_step_over_full": figures["all_exits_step_over_full"],
        }

    def print_report(self, report: dict, console) -> None:
        print_text_report(report, console)


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
