"""Image classification (CIFAR-10, CIFAR-100 and synthetic CIFAR-shaped images): the first task;
image folders (folder_task.py) build on it."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from enum import Enum
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..base import Batch, Metric
from ...sorted.distill import kl_soft_loss
from ..registry import TASKS
from ...errors import UserError
from .data import CIFAR, CIFAR10_MEAN, CIFAR10_STD, Normalizer, TrainBatches, eval_batches, load_splits

ACCURACY = Metric("accuracy", higher_is_better=True, lower=0.0, upper=1.0)
IMAGE_SHAPE = (3, 32, 32)


class EvalSplit(str, Enum):
    test = "test"
    val = "val"


@dataclass
class TorchvisionImagesConfig:
    """What the CIFAR readers share: torchvision's files, the splits, augmentation, memory format."""

    name: str = "cifar10"
    root: str = "data"  # the folder holding torchvision's files (conf/data/: or $SORTEDNET_DATA)
    download: bool = False
    verify: bool = True  # false skips torchvision's md5 check (rebuilt copies)
    train_subset: int = 0  # the first N training images, 0 = all
    test_subset: int = 0  # the first N test images, 0 = all
    val_size: int = 0  # hold out the last N training images as a validation split
    eval_split: EvalSplit = EvalSplit.test  # what every evaluation measures
    augment: bool = True  # random crop (padding 4) + horizontal flip
    channels_last: bool = True  # the memory format of images and model: a runtime choice (may change on resume)


@dataclass
class ImageDataConfig(TorchvisionImagesConfig):
    # data=fake only: how many synthetic images to make.
    fake_train_size: int = 2048
    fake_test_size: int = 512


@dataclass
class Cifar100Config(TorchvisionImagesConfig):
    name: str = "cifar100"


def model_classes(model_cfg) -> Optional[int]:
    """The class count the model config asks for (null: whatever the data has)."""
    return model_cfg.get("num_classes") if hasattr(model_cfg, "get") else getattr(model_cfg, "num_classes", None)


def check_classes(data_name: str, count: int, model_cfg, where: str = "") -> int:
    """The data's class count, which the model's head takes; a model.num_classes that says
    otherwise is refused (a head of the wrong size would train without complaint)."""
    asked = model_classes(model_cfg)
    if asked is not None and asked != count:
        raise UserError(f"data={data_name} has {count} classes{where} but model.num_classes={asked}; "
                        "leave model.num_classes unset (null) and the data's count is used")
    return count


class AccuracyMeter:
    """Correct predictions counted on the device; read back once, at the end."""

    def __init__(self):
        self.correct = 0
        self.total = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (logits.argmax(1) == labels).sum()
        self.total += len(labels)

    def value(self) -> float:
        return int(self.correct) / max(1, self.total)


@TASKS.register("cifar10", schema=ImageDataConfig)
@TASKS.register("cifar100", schema=Cifar100Config)
@TASKS.register("fake", schema=ImageDataConfig)
class ImageClassification:
    """uint8 images kept whole on the training device, augmented a batch at a time, in the
    memory format data.channels_last asks for (faster convolutions on CPU and GPU)."""

    name = "image_classification"
    kind = "image_classification"
    metric = ACCURACY
    tokenizer = None

    def __init__(self, data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None):
        self.cfg = data_cfg
        self.device = device
        channels_last = data_cfg.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if data_cfg.name in CIFAR:
            which = CIFAR[data_cfg.name]
            self.num_classes = check_classes(data_cfg.name, which.classes, model_cfg)
            self.normalize = Normalizer(device, channels_last, which.mean, which.std)
        else:  # fake: as many classes as the model asks for
            self.num_classes = model_classes(model_cfg) or 10
            self.normalize = Normalizer(device, channels_last)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        """The per-channel normalisation, mean and std in [0, 1] units (CIFAR-10's for data=fake)."""
        which = CIFAR.get(self.cfg.name)
        return (list(which.mean), list(which.std)) if which else (list(CIFAR10_MEAN), list(CIFAR10_STD))

    def in_memory_format(self, channels_last: bool) -> "ImageClassification":
        """This task (the same images, read once) with batches and model in the other memory
        format: the bench's channels_last against NCHW."""
        other = copy.copy(self)
        other.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        other.normalize = Normalizer(self.device, channels_last, *self.stats)
        return other

    # The images are read on first use: describe and the FLOPs count need none.
    @functools.cached_property
    def _splits(self):
        splits = load_splits(self.cfg, self.num_classes)
        return splits.train.to(self.device), splits.eval.to(self.device), splits.eval_name

    @property
    def train(self):
        return self._splits[0]

    @property
    def eval(self):
        return self._splits[1]

    @property
    def eval_name(self) -> str:
        return self._splits[2]

    def describe(self) -> str:
        return f"{len(self.train)} {self.cfg.name} images"

    def state(self) -> dict:
        return {}

    def model_fields(self) -> dict:
        """The head's class count and the image size come from the data."""
        return {"num_classes": self.num_classes, "image_size": IMAGE_SHAPE[-1]}

    def model_fields_without_data(self) -> dict:
        return self.model_fields()  # read from the config, not the images

    def train_batches(self, batch_size: int, seed: int) -> TrainBatches:
        return TrainBatches(self.train, batch_size, seed, self.cfg.augment, self.normalize)

    def batches_of(self, data, batch_size: int) -> Iterator[Batch]:
        """Un-augmented batches of `data` (a split, or its first images), in order."""
        return eval_batches(data, batch_size, self.normalize)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        return self.batches_of(self.eval, batch_size)

    def calib_batches(self, batch_size: int, count: int) -> Iterator[Batch]:
        return self.batches_of(self.train.first(count), batch_size)

    def calib_size(self, count: int) -> int:
        return min(count, len(self.train))

    def eval_size(self) -> int:
        return len(self.eval)

    def eval_fingerprint(self) -> str:
        return f"{len(self.eval)} images|{float(self.eval.labels.float().sum())}"

    def example_input(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, *IMAGE_SHAPE, device=self.device).contiguous(memory_format=self.memory_format)

    def example_input_without_data(self, batch_size: int) -> torch.Tensor:
        return self.example_input(batch_size)  # random images of the data's shape

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def soft_loss(self, logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return kl_soft_loss(logits, teacher, temperature)

    def meter(self) -> AccuracyMeter:
        return AccuracyMeter()
