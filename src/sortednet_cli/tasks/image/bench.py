"""sortednet bench for image classification: the plain-PyTorch side and what is the image
families' own. The driver (engine/bench.py) times the engine's real training step against the
plain loop here, and the grid of the pool shared against naive; this bench adds the epoch cost
of sorted against ordinary training and the memory formats.

The plain side is the loop most users (and the LCS code) write: torchvision transforms per PIL
image (random crop with 4 pixels of padding, horizontal flip, ToTensor, Normalize), a DataLoader
with workers, NCHW float32, loss.item() every step; same model class, sampler and weights. On
CIFAR-10/100 and fake data it reads the training images as torchvision's CIFAR10 does (a PIL
image per item); on an image folder (data=image_folder) it is torchvision's ImageFolder on the
same training files, resized and centre-cropped to data.image_size as the task does.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from ...errors import UserError
from ...sorted.pool import Pool
from ...sorted.sampler import Sampler
from .data import CIFAR, ImageSet
from .folder_task import ImageFolderClassification

DATA = (*CIFAR, "fake", "image_folder")
GRID_BATCH = 500


class PilImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image through the transforms."""

    def __init__(self, data: ImageSet, transform):
        self.images = data.images.cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def plain_transform(task, size: int, resize: bool):
    """torchvision's transforms for what the task does on the device: (resize the shorter side and
    centre-crop,) then the augmentation data.augment asks for, then the task's normalisation."""
    from torchvision import transforms

    steps = [transforms.Resize(size), transforms.CenterCrop(size)] if resize else []
    if task.cfg.augment:
        steps += [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip()]
    mean, std = task.stats
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def plain_folder_dataset(task: ImageFolderClassification):
    """torchvision's ImageFolder on data.root/train, kept to the task's training files (those not
    held out for validation, data.train_subset applied)."""
    from torchvision import datasets

    files = {os.path.realpath(path) for path in task.train_files.files}
    dataset = datasets.ImageFolder(str(task.layout.root / "train"), plain_transform(task, task.cfg.image_size, resize=True),
                                   is_valid_file=lambda path: os.path.realpath(path) in files, allow_empty=True)
    if dataset.classes != task.classes:
        raise UserError(f"torchvision's ImageFolder finds other classes under {task.layout.root / 'train'} than data=image_folder does")
    return dataset


class ReferenceLoop:
    """The plain loop: a DataLoader with workers over PIL images, NCHW float32, plain SGD,
    loss.item() every step. Same model class and sampler as the engine's side."""

    def __init__(self, model: nn.Module, sampler: Sampler, dataset, batch_size: int, workers: int, device: torch.device):
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )
        self.iterator = iter(self.loader)
        self.model = model
        self.sampler = sampler
        self.device = device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.step = 0

    def close(self) -> None:
        """Stop the DataLoader workers so they take no CPU from the later comparisons: the
        persistent iterator, held by the loader too, shuts them down when it is dropped."""
        self.iterator = None
        self.loader = None

    def _next(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            images, labels = self._next()
            images, labels = images.to(self.device), labels.to(self.device)
            sub = self.sampler.draw(self.step, 0, 1)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(images, sub), labels)
            loss.backward()
            self.optimizer.step()
            loss.item()
            self.step += 1


# --- the family's own comparisons -----------------------------------------------------------


def compare_epochs(ctx, engine) -> dict:
    """Sorted training (the pool, comparison 1's loop) against the full model alone, both on the
    engine's step: the cost of an epoch."""
    steps = ctx.settings["steps"]
    with ctx.engine_loop(ctx.one_pool("full", 1.0)) as full:
        times = ctx.alternate({"pool": lambda: engine.steps(steps), "full": lambda: full.steps(steps)})
    return {"epoch": times, "steps_per_epoch": engine.steps_per_epoch}


def compare_memory_formats(ctx, engine) -> dict:
    """One fixed sub-model at a time, the widest and the narrowest width of the pool: the
    engine's step in channels_last against NCHW (the task's same images in each format)."""
    steps, out = ctx.settings["steps"], {}
    for width in (ctx.pool.widths[-1], ctx.pool.widths[0]):
        one = ctx.one_pool(f"w{width:g}", width)
        with contextlib.ExitStack() as stack:
            loops = {fmt: stack.enter_context(ctx.engine_loop(one, task=ctx.task.in_memory_format(fmt == "channels_last")))
                     for fmt in ("channels_last", "nchw")}
            times = ctx.alternate({fmt: (lambda loop=loop: loop.steps(steps)) for fmt, loop in loops.items()})
        out[f"{width:g}"] = {
            **{f"{fmt}_step_s": t["median_s"] / steps for fmt, t in times.items()},
            "channels_last_speedup": times["nchw"]["median_s"] / times["channels_last"]["median_s"],
        }
    return {"memory_format": out}


class ImageBench:
    """The image families' bench (ModelFamily.bench); engine/bench.py's FamilyBench."""

    def check(self, cfg) -> None:
        if cfg.data.name not in DATA:
            raise UserError(f"sortednet bench reads data={', '.join(DATA)} (not data={cfg.data.name})")

    def header(self, ctx) -> str:
        task, device = ctx.task, ctx.device
        where = f", {task.describe()}" if isinstance(task, ImageFolderClassification) else ""
        return f"bench on {device} ({torch.get_num_threads()} threads), {ctx.cfg.data.name} data, {len(task.train)} training images{where}"

    def train_title(self, ctx) -> str:
        plain = "plain ImageFolder + DataLoader loop" if self.folder(ctx) else "plain DataLoader loop"
        return f"training throughput, pool={ctx.cfg.pool.name}: the engine's training step vs {plain}"

    def folder(self, ctx) -> bool:
        return isinstance(ctx.task, ImageFolderClassification)

    def train_pool(self, ctx) -> Pool:
        return ctx.pool

    def plain(self, ctx, pool: Pool) -> ReferenceLoop:
        task = ctx.task
        if self.folder(ctx):
            dataset = plain_folder_dataset(task)
        else:
            dataset = PilImages(task.train, plain_transform(task, task.train.images.shape[-1], resize=False))
        return ReferenceLoop(ctx.fresh_model(), Sampler(pool, ctx.cfg.seed), dataset, ctx.batch_size, ctx.settings["workers"], ctx.device)

    def grid_title(self, ctx) -> str:
        return f"grid evaluation of pool={ctx.cfg.pool.name} with BN recalibration: shared vs naive"

    def grid_batches(self, ctx):
        task, s = ctx.task, ctx.settings
        eval_set, calib_set = task.eval.first(s["eval_examples"]), task.train.first(s["calib_examples"])
        return (lambda: task.batches_of(eval_set, GRID_BATCH)), (lambda: task.batches_of(calib_set, GRID_BATCH)), {"eval": len(eval_set), "calib": len(calib_set)}

    def extras(self, ctx):
        return [(f"epoch cost: pool={ctx.cfg.pool.name} vs the full model alone", compare_epochs),
                ("training step by memory format: channels_last vs NCHW, widest and narrowest width", compare_memory_formats)]

    def report(self, ctx, figures: dict) -> dict:
        return image_report(ctx, figures)

    def print_report(self, report: dict, console) -> None:
        print_image_report(report, console)


def folder_figures(ctx) -> dict:
    """What data=image_folder ran on: the folder, its images, their size, cached or streamed."""
    task = ctx.task
    return {"root": str(task.layout.root), "train_images": len(task.train), "eval_images": len(task.eval),
            "classes": len(task.classes), "image_size": int(task.cfg.image_size), "mode": "streamed" if task.streamed else "cached",
            "reference": "torchvision.datasets.ImageFolder + DataLoader"}


def image_report(ctx, figures: dict) -> dict:
    s, device, throughput = ctx.settings, ctx.device, figures["throughput"]
    epoch = figures["epoch"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "data": ctx.cfg.data.name,
        "pool": ctx.cfg.pool.name,
        "settings": s,
        "train_images_per_second": throughput,
        "train_speedup": throughput["project"] / throughput["reference"],
        "train_peak_mib": {k: v["peak_mib"] for k, v in figures["train"].items()},
        "epoch_seconds_estimate": {k: v["median_s"] / s["steps"] * figures["steps_per_epoch"] for k, v in epoch.items()},
        "sorted_over_full_epoch": epoch["pool"]["median_s"] / epoch["full"]["median_s"],
        "epoch_peak_mib": {k: v["peak_mib"] for k, v in epoch.items()},
        "grid_seconds": {k: v["median_s"] for k, v in figures["grid"].items()},
        "grid_speedup": figures["grid"]["naive"]["median_s"] / figures["grid"]["shared"]["median_s"],
        "grid_same_accuracy": figures["grid_same"],
        "grid_images": figures["grid_sizes"],
        "memory_format": figures["memory_format"],
        "raw": {"train": figures["train"], "epoch": epoch, "grid": figures["grid"]},
    }
    if isinstance(ctx.task, ImageFolderClassification):
        report["image_folder"] = folder_figures(ctx)
    return report


TARGETS = {"train_speedup": ">= 2", "grid_speedup": ">= 2.5", "sorted_over_full_epoch": "<= 0.6"}


def print_image_report(report: dict, console) -> None:
    table = Table(title=f"sortednet bench on {report['device']}, torch {report['torch']}")
    for column in ("comparison", "this project", "baseline", "ratio", "target"):
        table.add_column(column)
    ips, peak = report["train_images_per_second"], report["train_peak_mib"]
    folder = report.get("image_folder")
    plain = "plain ImageFolder loop" if folder else "plain loop"
    ours = f" ({folder['mode']})" if folder else ""
    pool = f"pool={report['pool']}"
    table.add_row(f"1. training images/s, {pool}", f"{ips['project']:.0f}{ours} (peak {peak['project'] or 0:.0f} MiB)",
                  f"{ips['reference']:.0f} {plain} (peak {peak['reference'] or 0:.0f} MiB)", f"{report['train_speedup']:.2f}x", TARGETS["train_speedup"])
    grid = report["grid_seconds"]
    table.add_row(f"2. grid eval of {pool} (s)", f"{grid['shared']:.1f} shared", f"{grid['naive']:.1f} naive",
                  f"{report['grid_speedup']:.2f}x, same accuracy: {report['grid_same_accuracy']}", TARGETS["grid_speedup"])
    epoch, epeak = report["epoch_seconds_estimate"], report["epoch_peak_mib"]
    table.add_row("3. epoch time (s)", f"{epoch['pool']:.1f} {pool} (peak {epeak['pool'] or 0:.0f} MiB)",
                  f"{epoch['full']:.1f} full model (peak {epeak['full'] or 0:.0f} MiB)", f"{report['sorted_over_full_epoch']:.2f}", TARGETS["sorted_over_full_epoch"])
    for width, step in report["memory_format"].items():
        table.add_row(f"4. training step at w={width} (ms)", f"{1000 * step['channels_last_step_s']:.0f} channels_last",
                      f"{1000 * step['nchw_step_s']:.0f} NCHW", f"{step['channels_last_speedup']:.2f}x", "")
    console.print(table)
