"""Image folders (torchvision's ImageFolder layout): the user's own images, of any size.

    <root>/train/<class>/<image>    one folder per class (any depth below it)
    <root>/val/<class>/<image>      optional: without it, a fraction of train/ is held out

Every image is decoded as torchvision's ImageFolder does (PIL, converted to RGB; the file types
of its IMG_EXTENSIONS), its shorter side resized to `data.image_size` (antialiased bilinear, as
torchvision's Resize) and its centre cropped square (as CenterCrop): uint8 (3, S, S). The same function serves both modes:

- cached: every image decoded once (by DataLoader workers) into one uint8 tensor, on the training
  device, batched exactly like CIFAR-10 (data.py);
- streamed: the files are decoded per mini-batch by DataLoader worker processes, a few batches
  ahead; the crop/flip gather and the normalisation then run as in the cached mode, so the two
  give identical batches.

The mode is picked by the images' estimated size as uint8 against `data.memory_budget_gb`
(`data.cache=auto`), or forced (`memory`, `stream`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ...errors import UserError
from .data import ImageSet, Normalizer, TrainBatches

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's IMG_EXTENSIONS
LAYOUT = "<root>/train/<class>/<image>, and optionally <root>/val/<class>/<image>"
HOLD_OUT_SEED = 0  # which images of each class a held-out validation split takes
ORDER_SEED = 1  # the fixed shuffled order of each split (so train_subset and calibration see every class)
DECODE_CHUNK = 256  # images per decoding task in the cached mode's one pass

log = logging.getLogger("sortednet")


@dataclass
class FileSet:
    """A split as files: paths and int64 labels (labels on the training device)."""

    files: list[Path]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> "FileSet":
        return FileSet(self.files[:n], self.labels[:n])

    def to(self, device: torch.device) -> "FileSet":
        return FileSet(self.files, self.labels.to(device))


@dataclass
class Layout:
    root: Path
    classes: list[str]
    train: FileSet
    val: FileSet
    val_source: str  # "val/", or how much of train/ was held out


# --- reading the folders --------------------------------------------------------------------


def _class_files(class_dir: Path) -> list[Path]:
    """Every image under one class folder, sorted; hidden files are skipped, anything else that
    is not an image is refused by name."""
    files = []
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                raise UserError(f"{path} is not an image (data=image_folder reads {', '.join(IMAGE_EXTENSIONS)} files): "
                                "move it out of the class folder")
            files.append(path)
    if not files:
        raise UserError(f"class folder {class_dir} holds no images: remove it, or add images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _scan_split(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        found = f" ({', '.join(classes)})" if classes else ""
        raise UserError(f"{folder} has {len(classes)} class folder{'' if len(classes) == 1 else 's'}{found}: "
                        f"classification needs at least two (the layout: {LAYOUT})")
    return {name: _class_files(folder / name) for name in classes}


def _ordered(per_class: dict[str, list[Path]], classes: list[str], seed: int) -> FileSet:
    files = [(path, index) for index, name in enumerate(classes) for path in per_class.get(name, [])]
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    return FileSet([files[i][0] for i in order], torch.tensor([files[i][1] for i in order], dtype=torch.int64))


def held_out_count(images: int, fraction: float) -> int:
    """How many of a class's images a held-out validation split takes: round(fraction x images),
    at least one and never all (a class of one image keeps it for training)."""
    if images < 2:
        return 0
    return min(images - 1, max(1, math.floor(fraction * images + 0.5)))


def scan(cfg) -> Layout:
    """The classes and files of `data.root` (no image is opened here)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root}: no such folder (data=image_folder reads {LAYOUT})")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"no train/ folder under {root} (data=image_folder reads {LAYOUT})")
    train = _scan_split(train_dir)
    classes = list(train)
    val_dir = root / "val"
    if val_dir.is_dir():
        val = _scan_split(val_dir)
        if list(val) != classes:
            missing = [c for c in classes if c not in val]
            extra = [c for c in val if c not in train]
            parts = ([f"missing from val/: {', '.join(missing)}"] if missing else []) + ([f"not in train/: {', '.join(extra)}"] if extra else [])
            raise UserError(f"the classes of {val_dir} differ from those of {train_dir} ({'; '.join(parts)}): "
                            "both must hold the same class folders")
        source = "val/"
    else:
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"{root} has no val/ folder, so data.val_fraction must be in (0, 1) to hold out part of train/ "
                            f"(got {cfg.val_fraction})")
        gen = torch.Generator().manual_seed(HOLD_OUT_SEED)
        val = {}
        for name in classes:
            files = train[name]
            picks = torch.randperm(len(files), generator=gen).tolist()
            held = set(picks[: held_out_count(len(files), cfg.val_fraction)])
            val[name] = [f for i, f in enumerate(files) if i in held]
            train[name] = [f for i, f in enumerate(files) if i not in held]
        source = f"{cfg.val_fraction:g} of train/ held out"
    return Layout(root, classes, _ordered(train, classes, ORDER_SEED), _ordered(val, classes, ORDER_SEED + 1), source)


# --- decoding -------------------------------------------------------------------------------


def decode(path: Path, size: int) -> torch.Tensor:
    """One image as uint8 (3, size, size): decoded as torchvision's ImageFolder does (PIL, RGB),
    shorter side resized to `size` (antialiased bilinear), centre crop."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as picture:
            image = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ValueError, ...
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not an image that can be decoded ({reason[:160]})") from None
    return fit(image, size)


def fit(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, h, w) -> (3, size, size): the shorter side resized to `size` (bilinear with
    antialiasing, as torchvision's Resize(size)), then the centre crop (as CenterCrop(size))."""
    _, h, w = image.shape
    if (h, w) != (size, size):
        short, long = (h, w) if h <= w else (w, h)
        other = int(size * long / short)
        shape = (size, other) if h <= w else (other, size)
        if shape != (h, w):
            image = F.interpolate(image[None].float(), size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
            image = image.round_().clamp_(0, 255).to(torch.uint8)
        top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
        image = image[:, top : top + size, left : left + size]
    return image.contiguous()


class _Decoded(torch.utils.data.Dataset):
    """Keys -> stacked uint8 images. A key is (tag, indices into `files`); a file that cannot be
    decoded comes back as its message (raised in the main process as one line)."""

    def __init__(self, files: Sequence[Path], size: int):
        self.files = files
        self.size = size

    def __getitem__(self, key):
        tag, indices = key
        try:
            return tag, torch.stack([decode(self.files[i], self.size) for i in indices])
        except UserError as exc:
            return tag, str(exc)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def _as_is(item):
    return item


def _loader(files: Sequence[Path], size: int, keys, workers: int):
    from PIL import Image  # noqa: F401  (imported here, once, not by every worker it forks)

    loader = torch.utils.data.DataLoader(_Decoded(files, size), sampler=keys, batch_size=None, num_workers=workers,
                                         worker_init_fn=_one_thread if workers else None,
                                         prefetch_factor=4 if workers else None, collate_fn=_as_is)
    for tag, images in loader:
        if isinstance(images, str):
            raise UserError(images)
        yield tag, images


def decode_chunks(files: Sequence[Path], size: int, chunk: int, workers: int) -> Iterator[torch.Tensor]:
    """files in order, `chunk` at a time, as uint8 (n, 3, size, size) batches."""
    keys = [(start, range(start, min(start + chunk, len(files)))) for start in range(0, len(files), chunk)]
    for _, images in _loader(files, size, keys, workers):
        yield images


def decode_all(files: Sequence[Path], size: int, workers: int) -> torch.Tensor:
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    start = 0
    for images in decode_chunks(files, size, DECODE_CHUNK, workers):
        out[start : start + len(images)] = images
        start += len(images)
    return out


# --- normalisation --------------------------------------------------------------------------


def channel_stats(batches: Iterator[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (population) of uint8 images, in [0, 1] units."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images in batches:
        pixels = images.to(torch.float64).div_(255).transpose(0, 1).reshape(3, -1)
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def given_stats(cfg) -> Optional[tuple[list[float], list[float]]]:
    """data.mean and data.std from the config (both or neither), checked."""
    if cfg.mean is None and cfg.std is None:
        return None
    if cfg.mean is None or cfg.std is None:
        raise UserError("data.mean and data.std go together: give both (three numbers each, in [0, 1] units) or neither")
    mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"data.mean and data.std need one number per colour channel, three each (got {len(mean)} and {len(std)})")
    if min(std) <= 0:
        raise UserError(f"data.std must be positive (got {std})")
    return mean, std


# --- the two modes --------------------------------------------------------------------------


def estimated_bytes(images: int, size: int) -> int:
    return images * 3 * size * size


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def choose_mode(cfg, images: int) -> tuple[str, str]:
    """("memory" or "stream", the one log line saying which and why)."""
    size = cfg.image_size
    need = estimated_bytes(images, size)
    budget = cfg.memory_budget_gb * 1e9
    what = f"{images:,} images at {size}x{size} are {format_bytes(need)} as uint8"
    mode = cfg.cache.value
    if mode == "auto":
        mode = "memory" if need <= budget else "stream"
        why = f"{'within' if mode == 'memory' else 'over'} data.memory_budget_gb={cfg.memory_budget_gb:g}"
    else:
        why = f"data.cache={mode}"
    how = ("decoded once and kept in memory as uint8" if mode == "memory"
           else f"streamed: decoded per mini-batch by {cfg.workers} DataLoader worker{'s' if cfg.workers != 1 else ''}"
           + (" (data.workers=0: in the main process)" if cfg.workers == 0 else ""))
    return mode, f"image_folder {cfg.root}: {what}, {why}: {how}"


class StreamTrainBatches(TrainBatches):
    """TrainBatches over files: the same epoch orders, crops and flips as the cached mode; the
    images of each mini-batch are decoded by DataLoader workers a few mini-batches ahead."""

    def __init__(self, data: FileSet, size: int, workers: int, batch_size: int, seed: int, augment: bool, normalize: Normalizer):
        super().__init__(data, batch_size, seed, augment, normalize)
        self.size = size
        self.workers = workers
        self._stream = None  # (the key it yields next, the iterator)

    def _keys(self, epoch: int, index: int, shard: slice):
        """(epoch, index, shard) -> this rank's picks, from mini-batch `index` of `epoch` on."""
        orders = TrainBatches(self.data, self.batch_size, self.seed, False, self.normalize)  # its own order cache
        while True:
            order = orders._epoch_order(epoch)
            for i in range(index, len(self)):
                picks = order[i * self.batch_size : (i + 1) * self.batch_size][shard]
                yield (epoch, i), picks.cpu().tolist()
            epoch, index = epoch + 1, 0

    def _images(self, picks: torch.Tensor, epoch: int, index: int, shard: slice) -> torch.Tensor:
        key = (epoch, index, shard.start, shard.stop, shard.step)
        if self._stream is None or self._stream[0] != key:  # the first batch, a resume, or a jump
            self._stream = (key, iter(_loader(self.data.files, self.size, self._keys(epoch, index, shard), self.workers)))
        (got_epoch, got_index), images = next(self._stream[1])
        assert (got_epoch, got_index) == (epoch, index)
        following = (epoch, index + 1) if index + 1 < len(self) else (epoch + 1, 0)
        self._stream = ((*following, *key[2:]), self._stream[1])
        return images.to(picks.device)

    def close(self) -> None:
        self._stream = None


def stream_eval_batches(data: FileSet, size: int, workers: int, batch_size: int, normalize: Normalizer):
    device = data.labels.device
    start = 0
    for images in decode_chunks(data.files, size, batch_size, workers):
        yield normalize(images.to(device)), data.labels[start : start + len(images)]
        start += len(images)


def cached(data: FileSet, size: int, workers: int, device: torch.device) -> ImageSet:
    return ImageSet(decode_all(data.files, size, workers).to(device), data.labels.to(device))
