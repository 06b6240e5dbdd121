"""sortednet bench for image classification: the project's fast paths measured against plain
PyTorch, side by side.

Every comparison runs both sides in this one process, on the same device, data, model class
and sampler, alternating them `rounds` times and reporting medians, so background load or
clock changes hit both sides alike.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from ...config import BenchSettings
from ...errors import UserError
from ...models import build_model
from ...sorted.pool import build_pool, pool_from_config
from ...sorted.prefix_eval import METHODS
from ...sorted.sampler import Sampler
from ...sorted.update import plain_loss, sorted_update
from .data import CIFAR, CIFAR10_MEAN, CIFAR10_STD, ImageSet, Normalizer, TrainBatches, eval_batches, load_splits
from .task import AccuracyMeter, ImageClassification

QUICK = {"rounds": 5, "steps": 6, "eval_examples": 64, "calib_examples": 64, "grid_rounds": 3}


def settings(cfg) -> dict:
    """The bench.* counts; bench.quick shrinks those left at their defaults."""
    defaults = BenchSettings()
    values = {k: getattr(cfg.bench, k) for k in ("rounds", "steps", "batch_size", "workers", "eval_examples", "calib_examples", "grid_rounds")}
    if cfg.bench.quick:
        values.update({k: v for k, v in QUICK.items() if values[k] == getattr(defaults, k)})
    for key, value in values.items():
        if value < (0 if key == "workers" else 1):
            raise UserError(f"bench.{key} must be >= {0 if key == 'workers' else 1} (got {value})")
    return values


class PeakMemory:
    """Peak resident memory (CPU, from /proc) or peak allocated memory (CUDA) over a block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak RSS
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            with contextlib.suppress(OSError):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mib = int(line.split()[1]) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class ProjectLoop:
    """The training loop's own pieces: device-resident uint8 data augmented a batch at a time,
    channels_last (unless asked otherwise), bf16 autocast on CUDA, foreach SGD, losses read back
    only at the end."""

    def __init__(self, model: nn.Module, sampler: Sampler, data: ImageSet, batch_size: int, seed: int, device: torch.device, channels_last: bool = True):
        self.model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.sampler = sampler
        self.batches = TrainBatches(data.to(device), batch_size, seed, True, Normalizer(device, channels_last))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
        self.step = 0

    def run(self, steps: int) -> None:
        losses = []
        for _ in range(steps):
            epoch, index = divmod(self.step, len(self.batches))
            sub = self.sampler.draw(self.step, 0, 1)
            images, labels = self.batches.get(epoch, index)
            losses += sorted_update(self.model, self.optimizer, [(sub, images, labels)], 1, plain_loss(F.cross_entropy), self.autocast)
            self.step += 1
        torch.stack(losses).sum().item()


class PilImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image through the transforms."""

    def __init__(self, data: ImageSet, transform):
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class ReferenceLoop:
    """The loop most users (and the LCS code) write: torchvision transforms per PIL image, a
    DataLoader with workers, NCHW float32, loss.item() every step. Same model class and sampler."""

    def __init__(self, model: nn.Module, sampler: Sampler, data: ImageSet, batch_size: int, workers: int, device: torch.device):
        from torchvision import transforms

        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ])
        loader = torch.utils.data.DataLoader(
            PilImages(data, transform), batch_size=batch_size, shuffle=True, drop_last=True,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )
        self.loader = loader
        self.iterator = iter(loader)
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


def alternate(sides: dict[str, Callable[[], None]], rounds: int, device: torch.device, warm_up: bool = True) -> dict[str, dict]:
    """Run each side once to warm up (and take its peak memory), then `rounds` times in turn;
    seconds per run. Without warm-up the peak memory is taken over the first timed round."""
    times = {name: [] for name in sides}
    peaks = {}
    if warm_up:
        for name, run in sides.items():
            with PeakMemory(device) as peak:
                run()
                _sync(device)
            peaks[name] = peak.peak_mib
    for round_index in range(rounds):
        for name, run in sides.items():
            with PeakMemory(device) as peak:
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                times[name].append(time.perf_counter() - start)
            if round_index == 0 and not warm_up:
                peaks[name] = peak.peak_mib
    return {name: {"median_s": statistics.median(t), "runs_s": t, "peak_mib": peaks[name]} for name, t in times.items()}


def run_bench(cfg, device: torch.device, console) -> dict:
    s = settings(cfg)
    if cfg.data.name not in (*CIFAR, "fake"):
        raise UserError(f"sortednet bench reads data=fake, {', '.join(CIFAR)} (not data={cfg.data.name})")
    fields = ImageClassification(cfg.data, cfg.model, torch.device("cpu")).model_fields()
    splits = load_splits(cfg.data, fields["num_classes"])
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model, fields)
    limits = template.depth_limits
    pool160 = pool_from_config(cfg.pool, limits)
    full_pool = build_pool("full", [1.0], ["max"], limits)

    def fresh_model() -> nn.Module:
        model = build_model(cfg.model, fields)
        model.load_state_dict(template.state_dict())
        return model.to(device)

    images_per_step = min(s["batch_size"], len(splits.train))
    console.print(f"bench on {device} ({torch.get_num_threads()} threads), {cfg.data.name} data, {len(splits.train)} training images", highlight=False)

    # 1. training throughput: the project's loop against the plain loop, pool=160
    console.print("1/4 training throughput, pool=160: project loop vs plain DataLoader loop ...")
    project = ProjectLoop(fresh_model(), Sampler(pool160, cfg.seed), splits.train, s["batch_size"], cfg.seed, device)
    reference = ReferenceLoop(fresh_model(), Sampler(pool160, cfg.seed), splits.train, s["batch_size"], s["workers"], device)
    train_times = alternate({"project": lambda: project.run(s["steps"]), "reference": lambda: reference.run(s["steps"])}, s["rounds"], device)
    reference.close()
    throughput = {name: s["steps"] * images_per_step / t["median_s"] for name, t in train_times.items()}

    # 2. sorted training against ordinary training, both with the project's loop
    console.print("2/4 epoch cost: pool=160 vs the full model alone ...")
    full = ProjectLoop(fresh_model(), Sampler(full_pool, cfg.seed), splits.train, s["batch_size"], cfg.seed, device)
    epoch_times = alternate({"pool160": lambda: project.run(s["steps"]), "full": lambda: full.run(s["steps"])}, s["rounds"], device)
    steps_per_epoch = len(project.batches)

    # 3. grid evaluation with BN recalibration: shared against naive
    console.print("3/4 grid evaluation of pool=160 with BN recalibration: shared vs naive ...")
    model = project.model.eval()
    normalize = Normalizer(device, channels_last=True)
    eval_set = splits.eval.first(s["eval_examples"]).to(device)
    calib_set = splits.train.first(s["calib_examples"]).to(device)
    batch = 500
    recal = bool(model.recalibrated_norms())
    results = {}

    def grid(method):
        def run():
            results[method] = METHODS[method](model, pool160, lambda: eval_batches(eval_set, batch, normalize),
                                              lambda: eval_batches(calib_set, batch, normalize), recal, AccuracyMeter)
        return run

    # A grid evaluation is long enough to need no warm-up run of its own.
    grid_times = alternate({"shared": grid("shared"), "naive": grid("naive")}, s["grid_rounds"], device, warm_up=False)
    same = results["shared"] == results["naive"]

    # 4. memory formats, one fixed sub-model at a time: the widest and the narrowest width
    console.print("4/4 training step by memory format: channels_last vs NCHW, widest and narrowest width ...")
    memory_format = {}
    for width in (pool160.widths[-1], pool160.widths[0]):
        one = build_pool(f"w{width:g}", [width], ["max"], limits)
        loops = {fmt: ProjectLoop(fresh_model(), Sampler(one, cfg.seed), splits.train, s["batch_size"], cfg.seed, device, fmt == "channels_last")
                 for fmt in ("channels_last", "nchw")}
        times = alternate({fmt: (lambda loop=loop: loop.run(s["steps"])) for fmt, loop in loops.items()}, s["rounds"], device)
        memory_format[f"{width:g}"] = {
            **{f"{fmt}_step_s": t["median_s"] / s["steps"] for fmt, t in times.items()},
            "channels_last_speedup": times["nchw"]["median_s"] / times["channels_last"]["median_s"],
        }

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "data": cfg.data.name,
        "settings": s,
        "train_images_per_second": throughput,
        "train_speedup": throughput["project"] / throughput["reference"],
        "train_peak_mib": {k: v["peak_mib"] for k, v in train_times.items()},
        "epoch_seconds_estimate": {k: v["median_s"] / s["steps"] * steps_per_epoch for k, v in epoch_times.items()},
        "sorted_over_full_epoch": epoch_times["pool160"]["median_s"] / epoch_times["full"]["median_s"],
        "epoch_peak_mib": {k: v["peak_mib"] for k, v in epoch_times.items()},
        "grid_seconds": {k: v["median_s"] for k, v in grid_times.items()},
        "grid_speedup": grid_times["naive"]["median_s"] / grid_times["shared"]["median_s"],
        "grid_same_accuracy": same,
        "grid_images": {"eval": len(eval_set), "calib": len(calib_set)},
        "memory_format": memory_format,
        "raw": {"train": train_times, "epoch": epoch_times, "grid": grid_times},
    }
    print_image_report(report, console)
    return report


TARGETS = {"train_speedup": ">= 2", "grid_speedup": ">= 2.5", "sorted_over_full_epoch": "<= 0.6"}


def print_image_report(report: dict, console) -> None:
    table = Table(title=f"sortednet bench on {report['device']}, torch {report['torch']}")
    for column in ("comparison", "this project", "baseline", "ratio", "target"):
        table.add_column(column)
    ips = report["train_images_per_second"]
    peak = report["train_peak_mib"]
    table.add_row("1. training images/s, pool=160", f"{ips['project']:.0f} (peak {peak['project'] or 0:.0f} MiB)", f"{ips['reference']:.0f} plain loop (peak {peak['reference'] or 0:.0f} MiB)", f"{report['train_speedup']:.2f}x", TARGETS["train_speedup"])
    grid = report["grid_seconds"]
    table.add_row("2. grid eval of pool=160 (s)", f"{grid['shared']:.1f} shared", f"{grid['naive']:.1f} naive", f"{report['grid_speedup']:.2f}x, same accuracy: {report['grid_same_accuracy']}", TARGETS["grid_speedup"])
    epoch = report["epoch_seconds_estimate"]
    epeak = report["epoch_peak_mib"]
    table.add_row("3. epoch time (s)", f"{epoch['pool160']:.1f} pool=160 (peak {epeak['pool160'] or 0:.0f} MiB)", f"{epoch['full']:.1f} full model (peak {epeak['full'] or 0:.0f} MiB)", f"{report['sorted_over_full_epoch']:.2f}", TARGETS["sorted_over_full_epoch"])
    for width, step in report["memory_format"].items():
        table.add_row(f"4. training step at w={width} (ms)", f"{1000 * step['channels_last_step_s']:.0f} channels_last", f"{1000 * step['nchw_step_s']:.0f} NCHW", f"{step['channels_last_speedup']:.2f}x", "")
    console.print(table)
