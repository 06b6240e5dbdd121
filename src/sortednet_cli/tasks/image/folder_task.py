"""data=image_folder: image classification on the user's own folders (folder.py reads them).

The class names (sorted folder names), the normalisation and the image size are the task's
state: a checkpoint keeps them, eval-grid and resume check the folders against them, and an
export records them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Iterator, List, Optional

import torch

from ...errors import UserError
from ..base import Batch
from ..registry import TASKS
from . import folder
from .data import ImageSet, Normalizer, TrainBatches, eval_batches
from .task import ImageClassification, check_classes, model_classes


class CacheMode(str, Enum):
    auto = "auto"  # memory when the images fit data.memory_budget_gb as uint8, else stream
    memory = "memory"
    stream = "stream"


@dataclass
class ImageFolderConfig:
    name: str = "image_folder"
    root: str = "data/images"  # holds train/<class>/... and optionally val/<class>/...
    image_size: int = 32  # shorter side resized to this, centre crop: S x S
    val_fraction: float = 0.1  # without val/: per class, this share of train/ is held out
    train_subset: int = 0  # the first N training images (of a fixed shuffled order), 0 = all
    val_subset: int = 0
    augment: bool = True  # random crop (padding 4) + horizontal flip, as for CIFAR-10
    channels_last: bool = True  # the memory format of images and model: a runtime choice (may change on resume)
    # Per-channel normalisation in [0, 1] units; null: computed from the training images.
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    stats_images: int = 10000  # how many training images (the first of the fixed order) the statistics use
    cache: CacheMode = CacheMode.auto
    memory_budget_gb: float = 4.0  # auto: cache when the decoded uint8 images fit this
    workers: int = 2  # DataLoader worker processes that decode (the cache's one pass, or every batch streamed)


def check_settings(cfg) -> None:
    for key, least in (("image_size", 1), ("train_subset", 0), ("val_subset", 0), ("stats_images", 1), ("workers", 0)):
        if getattr(cfg, key) < least:
            raise UserError(f"data.{key} must be >= {least} (got {getattr(cfg, key)})")
    if cfg.memory_budget_gb < 0:
        raise UserError(f"data.memory_budget_gb must be >= 0 (got {cfg.memory_budget_gb})")


@TASKS.register("image_folder", schema=ImageFolderConfig)
class ImageFolderClassification(ImageClassification):
    """Image classification on `data.root` in torchvision's ImageFolder layout, cached as uint8
    or streamed (folder.py), with CIFAR-10's augmentation and the data's own normalisation."""

    def __init__(self, data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None):
        check_settings(data_cfg)
        self.cfg = data_cfg
        self.model_cfg = model_cfg
        self.device = device
        self.channels_last = data_cfg.channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.saved = state or {}
        self.mode_line = ""

    @functools.cached_property
    def layout(self) -> folder.Layout:
        layout = folder.scan(self.cfg)
        saved = self.saved.get("classes")
        if saved is not None and list(saved) != layout.classes:
            only_saved = [c for c in saved if c not in layout.classes]
            only_here = [c for c in layout.classes if c not in saved]
            detail = "; ".join(([f"trained on but not here: {', '.join(only_saved)}"] if only_saved else [])
                               + ([f"here but not trained on: {', '.join(only_here)}"] if only_here else [])) or "the same names in another order"
            raise UserError(f"the classes under {layout.root} differ from those the model was trained on ({detail})")
        return layout

    @property
    def classes(self) -> list[str]:
        return self.layout.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_files(self) -> folder.FileSet:
        """The training split's files and labels (data.train_subset applied), before any decoding."""
        train = self.layout.train
        return train.first(self.cfg.train_subset) if self.cfg.train_subset else train

    @functools.cached_property
    def _splits(self):
        train, val = self.train_files, self.layout.val
        if self.cfg.val_subset:
            val = val.first(self.cfg.val_subset)
        mode, self.mode_line = folder.choose_mode(self.cfg, len(train) + len(val))
        folder.log.info("%s", self.mode_line)
        if mode == "memory":
            size, workers = self.cfg.image_size, self.cfg.workers
            return folder.cached(train, size, workers, self.device), folder.cached(val, size, workers, self.device), "val"
        return train.to(self.device), val.to(self.device), "val"

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, folder.FileSet)

    @functools.cached_property
    def stats(self) -> tuple[list[float], list[float]]:
        """The normalisation: the checkpoint's, else the config's, else the training images'."""
        if "mean" in self.saved:
            return list(self.saved["mean"]), list(self.saved["std"])
        given = folder.given_stats(self.cfg)
        if given is not None:
            return given
        sample = self.train.first(self.cfg.stats_images)
        if isinstance(sample, ImageSet):
            chunks = (sample.images[i : i + folder.DECODE_CHUNK].cpu() for i in range(0, len(sample), folder.DECODE_CHUNK))
        else:
            chunks = folder.decode_chunks(sample.files, self.cfg.image_size, folder.DECODE_CHUNK, self.cfg.workers)
        return folder.channel_stats(chunks)

    @functools.cached_property
    def normalize(self) -> Normalizer:
        mean, std = self.stats
        return Normalizer(self.device, self.channels_last, mean, std)

    def describe(self) -> str:
        layout = self.layout
        size = self.cfg.image_size
        return (f"{len(self.train)} image_folder images ({len(layout.classes)} classes, {size}x{size}, "
                f"validation: {len(self.eval)} from {layout.val_source}; {'streamed' if self.streamed else 'cached in memory'})")

    def state(self) -> dict:
        mean, std = self.stats
        return {"classes": list(self.classes), "mean": mean, "std": std, "image_size": int(self.cfg.image_size)}

    def model_fields(self) -> dict:
        where = f" (the class folders of {self.layout.root / 'train'})"
        return {"num_classes": check_classes(self.cfg.name, self.num_classes, self.model_cfg, where), "image_size": int(self.cfg.image_size)}

    def model_fields_without_data(self) -> dict:
        """The class folders' count where data.root lists them (folder names only, no image is
        opened), else model.num_classes or 10: describe counts parameters without the data."""
        try:
            return self.model_fields()
        except UserError:
            return {"num_classes": model_classes(self.model_cfg) or 10, "image_size": int(self.cfg.image_size)}

    def train_batches(self, batch_size: int, seed: int) -> TrainBatches:
        if self.streamed:
            return folder.StreamTrainBatches(self.train, self.cfg.image_size, self.cfg.workers, batch_size, seed, self.cfg.augment, self.normalize)
        return TrainBatches(self.train, batch_size, seed, self.cfg.augment, self.normalize)

    def batches_of(self, data, batch_size: int) -> Iterator[Batch]:
        if isinstance(data, folder.FileSet):
            return folder.stream_eval_batches(data, self.cfg.image_size, self.cfg.workers, batch_size, self.normalize)
        return eval_batches(data, batch_size, self.normalize)

    def example_input(self, batch_size: int) -> torch.Tensor:
        size = self.cfg.image_size
        return torch.randn(batch_size, 3, size, size, device=self.device).contiguous(memory_format=self.memory_format)
