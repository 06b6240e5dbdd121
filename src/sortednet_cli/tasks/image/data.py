"""Data: whole datasets as uint8 tensors on the training device, augmented a batch at a time.

No per-image PIL work and no worker processes: a batch is one gather (random crop with 4-pixel
zero padding and a horizontal flip in the same index arithmetic) and one normalisation.
Every random choice comes from a generator seeded by (seed, epoch, batch), so any batch of any
epoch can be rebuilt exactly, which is what makes resuming mid-epoch exact.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ...errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR10_FOLDER = "cifar-10-batches-py"
PAD = 4


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and int64 labels, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> "ImageSet":
        return ImageSet(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass
class Splits:
    train: ImageSet
    eval: ImageSet
    eval_name: str


@dataclass(frozen=True)
class CifarSet:
    """One of torchvision's CIFAR readers, with what its folder must hold."""

    title: str  # for messages: "CIFAR-10"
    reader: str  # the torchvision.datasets class
    folder: str
    files: tuple[str, ...]
    classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR = {
    "cifar10": CifarSet("CIFAR-10", "CIFAR10", CIFAR10_FOLDER, tuple(CIFAR10_FILES), 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": CifarSet("CIFAR-100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"), 100,
                         (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_dataset_class(which: CifarSet):
    import torchvision

    verified = getattr(torchvision.datasets, which.reader)

    class Unverified(verified):
        """torchvision's reader without the md5 checks (for rebuilt copies of the data)."""

        meta = {**verified.meta, "md5": None}  # torchvision then only asks that the file exists

        def _check_integrity(self) -> bool:
            return True

    return verified, Unverified


def _read_cifar(which: CifarSet, root: str, train: bool, download: bool, verify: bool) -> ImageSet:
    verified, unverified = _cifar_dataset_class(which)
    folder = Path(root).expanduser().resolve() / which.folder
    if download:
        try:
            verified(root, train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(f"downloading {which.title} into {folder.parent} failed: {exc}") from None
    missing = [name for name in which.files if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{which.title} not found: looked for {folder}/ ({', '.join(missing)} missing); "
            f"set data.root to the folder that holds {which.folder} (or SORTEDNET_DATA), "
            "or pass data.download=true"
        )
    try:
        dataset = (verified if verify else unverified)(root, train=train, download=False)
    except RuntimeError as exc:
        if "corrupted" in str(exc):
            raise UserError(
                f"{which.title} under {folder} fails torchvision's md5 check; if it is a rebuilt copy "
                "(such as ../shared/data/cifar10), pass data.verify=false"
            ) from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, OSError) as exc:
        raise UserError(f"{which.title} under {folder} could not be read ({exc}); re-download it") from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64))


def _fake_images(n: int, num_classes: int, noise_seed: int) -> ImageSet:
    """CIFAR-shaped images whose class is learnable: a fixed low-frequency colour pattern per
    class (the same for every split), plus per-image noise and a random brightness shift."""
    patterns_gen = torch.Generator().manual_seed(1234)
    patterns = torch.randn(num_classes, 3, 4, 4, generator=patterns_gen)
    patterns = F.interpolate(patterns, size=(32, 32), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(noise_seed)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    noise = torch.randn(n, 3, 32, 32, generator=gen)
    shift = torch.randn(n, 1, 1, 1, generator=gen) * 20
    images = 128 + 70 * patterns[labels] + 30 * noise + shift
    return ImageSet(images.clamp(0, 255).round().to(torch.uint8), labels)


def load_splits(cfg, num_classes: int) -> Splits:
    """The training split and the split every evaluation measures, per the `data` config."""
    for key in ("train_subset", "test_subset", "val_size"):
        if getattr(cfg, key) < 0:
            raise UserError(f"data.{key} must be >= 0 (got {getattr(cfg, key)})")
    if cfg.name == "fake":
        train = _fake_images(cfg.fake_train_size, num_classes, noise_seed=1)
        test = _fake_images(cfg.fake_test_size, num_classes, noise_seed=2)
    else:
        which = CIFAR[cfg.name]
        train = _read_cifar(which, cfg.root, True, cfg.download, cfg.verify)
        test = _read_cifar(which, cfg.root, False, False, cfg.verify)

    if cfg.val_size >= len(train):
        raise UserError(f"data.val_size={cfg.val_size} leaves no training images (there are {len(train)})")
    val = None
    if cfg.val_size:
        cut = len(train) - cfg.val_size
        val = ImageSet(train.images[cut:], train.labels[cut:])
        train = train.first(cut)
    if cfg.train_subset:
        train = train.first(cfg.train_subset)
    if cfg.test_subset:
        test = test.first(cfg.test_subset)

    if cfg.eval_split.value == "val":
        if val is None:
            raise UserError("data.eval_split=val needs a validation split: set data.val_size > 0")
        return Splits(train, val, "val")
    return Splits(train, test, "test")


class Normalizer:
    """uint8 batch -> normalised float batch in one memory format: channels_last, or plain NCHW
    (whatever order the batch arrived in: the crop/flip gather yields channels_last order)."""

    def __init__(self, device: torch.device, channels_last: bool, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        return (images.float() - self.mean) * self.inv_std


def _batch_generator(seed: int, epoch: int, index: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)
    return gen


def crop_flip_offsets(n: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per image: crop top and left in 0..2*PAD, and whether to flip (probability one half)."""
    top = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen, device=device)
    left = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen, device=device)
    flip = torch.randint(0, 2, (n, 1), generator=gen, device=device).bool()
    return top, left, flip


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """RandomCrop(size, padding=4) + RandomHorizontalFlip of a whole uint8 batch in one gather.

    The result comes out in channels_last memory order (the gather indexes N, H, W, C)."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    rows = top + torch.arange(h, device=device)
    ascending = torch.arange(w, device=device)
    cols = left + torch.where(flip, w - 1 - ascending, ascending)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, 1, 1, c)
    out = padded[batch, channel, rows.view(n, h, 1, 1), cols.view(n, 1, w, 1)]
    return out.permute(0, 3, 1, 2)


class TrainBatches:
    """The training mini-batches of every epoch, rebuilt on demand from (seed, epoch, index)."""

    def __init__(self, data: ImageSet, batch_size: int, seed: int, augment: bool, normalize: Normalizer):
        self.data = data
        self.batch_size = min(batch_size, len(data))
        self.seed = seed
        self.augment = augment
        self.normalize = normalize
        self._order: Optional[tuple[int, torch.Tensor]] = None

    def __len__(self) -> int:
        """Full mini-batches per epoch (the remainder is dropped, differently each epoch)."""
        return len(self.data) // self.batch_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            device = self.data.labels.device
            gen = _batch_generator(self.seed, epoch, -1, device)
            self._order = (epoch, torch.randperm(len(self.data), generator=gen, device=device))
        return self._order[1]

    def get(self, epoch: int, index: int, shard: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch `index` of `epoch`, or this rank's `shard` of it: the random crops are drawn
        for the whole batch first, so the shards of all ranks make up exactly the whole batch."""
        picks = self._epoch_order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        if not self.augment:
            picks = picks[shard]
            return self.normalize(self._images(picks, epoch, index, shard)), self.data.labels[picks]
        gen = _batch_generator(self.seed, epoch, index, picks.device)
        offsets = [o[shard] for o in crop_flip_offsets(len(picks), gen, picks.device)]
        picks = picks[shard]
        return self.normalize(crop_flip(self._images(picks, epoch, index, shard), *offsets)), self.data.labels[picks]

    def _images(self, picks: torch.Tensor, epoch: int, index: int, shard: slice) -> torch.Tensor:
        """The uint8 images of `picks` (mini-batch `index` of `epoch`, this rank's shard)."""
        return self.data.images[picks]


def eval_batches(data: ImageSet, batch_size: int, normalize: Normalizer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch_size):
        yield normalize(data.images[start : start + batch_size]), data.labels[start : start + batch_size]

