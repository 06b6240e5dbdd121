"""Real CIFAR-10 images written as an image folder: PNG files in torchvision's ImageFolder
layout (train/<class>/<index>.png and, if asked, val/<class>/<index>.png), read from
torchvision's python layout (cifar-10-batches-py/data_batch_*). data=image_folder on real
images: the tests (tests/test_image_folder.py) and sweeps/image_folder_bench.sh.

    python -m sortednet_cli.tasks.image.cifar_folder CIFAR_ROOT OUT --train-per-class 500 [--val-per-class 100]

A PNG keeps CIFAR's own pixels, so the folder task decodes exactly the original images. The
command writes a tree once: a complete one at OUT is kept (the sweeps run it before every use).
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np

from .data import CIFAR10_FOLDER

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
COMPLETE = ".complete"  # written last, inside the tree; the folder task skips dot names


def read_cifar(root: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training images (N, 32, 32, 3) uint8 and their labels, from as many of the five
    batches, in order, as give every class `per_class` images."""
    images, labels = [], []
    for name in BATCHES:
        with open(Path(root) / CIFAR10_FOLDER / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch["labels"]))
        if np.bincount(np.concatenate(labels), minlength=len(CLASSES)).min() >= per_class:
            break
    return np.concatenate(images), np.concatenate(labels)


def write_cifar_folder(images: np.ndarray, labels: np.ndarray, out: Path, train_per_class: int, val_per_class: int = 0) -> np.ndarray:
    """Per class, its first `train_per_class` images into train/<class>/ and the next
    `val_per_class` into val/<class>/, each as <index>.png; returns the training images written,
    class by class, in order."""
    from PIL import Image

    written = []
    for index, name in enumerate(CLASSES):
        picks = np.flatnonzero(labels == index)
        if len(picks) < train_per_class + val_per_class:
            raise ValueError(f"class {name} has {len(picks)} images, fewer than {train_per_class} + {val_per_class}")
        for split, chosen in (("train", picks[:train_per_class]), ("val", picks[train_per_class : train_per_class + val_per_class])):
            if not len(chosen):
                continue
            folder = Path(out) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
            if split == "train":
                written.append(images[chosen])
    return np.concatenate(written)


def write_once(cifar_root: Path, out: Path, train_per_class: int, val_per_class: int) -> bool:
    """Write the tree at `out` unless a complete one is there; False when kept. It is written in a
    sibling folder and renamed when complete, so an interrupted write leaves no tree that looks
    whole, and the next call starts it again."""
    out = Path(out)
    if (out / COMPLETE).is_file():
        return False
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    images, labels = read_cifar(Path(cifar_root), train_per_class + val_per_class)
    write_cifar_folder(images, labels, partial, train_per_class, val_per_class)
    (partial / COMPLETE).touch()
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write real CIFAR-10 images as PNG files in an ImageFolder tree, once.")
    parser.add_argument("cifar_root", help="the folder holding cifar-10-batches-py/")
    parser.add_argument("out", help="the tree to write (train/<class>/, val/<class>/); a complete one there is kept")
    parser.add_argument("--train-per-class", type=int, required=True)
    parser.add_argument("--val-per-class", type=int, default=0)
    args = parser.parse_args(argv)
    if write_once(Path(args.cifar_root), Path(args.out), args.train_per_class, args.val_per_class):
        print(f"wrote {args.train_per_class * len(CLASSES)} training and {args.val_per_class * len(CLASSES)} validation PNGs under {args.out}")
    else:
        print(f"kept the complete tree at {args.out}")


if __name__ == "__main__":
    main()
