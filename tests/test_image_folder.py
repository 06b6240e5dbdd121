"""data=image_folder: the user's own images in torchvision's ImageFolder layout. Real CIFAR-10
images written as PNG (and some as 48x40 JPEG) where ../shared/data/cifar10 is present; small
synthetic PNG/JPEG trees otherwise (the bad inputs, the streamed mode, the command line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sortednet_cli.engine.checkpoint import load_checkpoint
from sortednet_cli.errors import UserError
from sortednet_cli.tasks import build_task
from sortednet_cli.tasks.image.cifar_folder import CLASSES as CIFAR_CLASSES, read_cifar, write_cifar_folder, write_once
from sortednet_cli.tasks.image.folder import held_out_count

from conftest import SHARED_CIFAR10, compose_config, run_cli

CIFAR_BATCH = SHARED_CIFAR10 / "cifar-10-batches-py" / "data_batch_1"
TRAIN_PER_CLASS, VAL_PER_CLASS = 20, 5
JPEG_CLASSES = ("bird", "ship")  # two 48x40 JPEGs each, in train/
QUICK = ["data.workers=0", "trainer.device=cpu"]


def folder_task(root, *overrides, state=None, model=()):
    cfg = compose_config("train", ["data=image_folder", f"data.root={root}", *model, *overrides])
    return build_task(cfg.data, cfg.model, torch.device("cpu"), state=state)


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory):
    """250 real CIFAR-10 images (20 + 5 per class) as PNG in train/ and val/, and four 48x40 JPEGs."""
    if not CIFAR_BATCH.is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR10} (set SORTEDNET_TEST_CIFAR10)")
    images, labels = read_cifar(SHARED_CIFAR10, TRAIN_PER_CLASS + VAL_PER_CLASS)
    root = tmp_path_factory.mktemp("cifar_tree")
    train_pngs = write_cifar_folder(images, labels, root, TRAIN_PER_CLASS, VAL_PER_CLASS)
    for name in JPEG_CLASSES:
        for i in np.flatnonzero(labels == CIFAR_CLASSES.index(name))[-2:]:
            Image.fromarray(images[i]).resize((48, 40), Image.BICUBIC).save(root / "train" / name / f"wide_{i:05d}.jpg", quality=90)
    return root, train_pngs


def test_the_cifar_tree_is_written_once_and_an_interrupted_one_again(tmp_path):
    if not CIFAR_BATCH.is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR10} (set SORTEDNET_TEST_CIFAR10)")
    out = tmp_path / "tree"
    out.mkdir()
    (out / "train").mkdir()  # what an interrupted write of the old scripts left: no marker
    assert write_once(SHARED_CIFAR10, out, 2, 1)
    assert len(list((out / "train").rglob("*.png"))) == 20 and len(list((out / "val").rglob("*.png"))) == 10
    assert not (tmp_path / "tree.partial").exists()
    stamp = (out / ".complete").stat().st_mtime_ns
    assert not write_once(SHARED_CIFAR10, out, 2, 1)  # kept, not rewritten
    assert (out / ".complete").stat().st_mtime_ns == stamp


def write_tree(root: Path, classes=("cat", "dog", "owl"), train=12, val=4, size=(40, 48), jpeg_every: int | None = 3) -> Path:
    """A small synthetic tree: each class a colour of its own, PNGs with a JPEG every few (none if jpeg_every is None)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        if not count:
            continue
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 50 * c, 25, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.{'jpg' if jpeg_every and i % jpeg_every == 0 else 'png'}")
    return root


# --- real images ----------------------------------------------------------------------------


def test_real_cifar_images_counts_per_split_classes_and_statistics(cifar_tree):
    root, train_pngs = cifar_tree
    task = folder_task(root, *QUICK)
    assert task.classes == CIFAR_CLASSES and task.model_fields() == {"num_classes": 10, "image_size": 32}
    extra = {CIFAR_CLASSES.index(c): 2 for c in JPEG_CLASSES}
    assert torch.bincount(task.train.labels, minlength=10).tolist() == [TRAIN_PER_CLASS + extra.get(i, 0) for i in range(10)]
    assert torch.bincount(task.eval.labels, minlength=10).tolist() == [VAL_PER_CLASS] * 10
    assert (len(task.train), len(task.eval), task.eval_name) == (204, 50, "val")
    assert task.train.images.shape == (204, 3, 32, 32) and task.train.images.dtype == torch.uint8
    # a 32x32 PNG is CIFAR's own pixels: the first training images in order are those PNGs
    pngs_in_task = {bytes(img.permute(1, 2, 0).numpy()) for img in task.train.images}
    assert all(bytes(img) in pngs_in_task for img in train_pngs)
    # normalisation statistics by hand: the 200 PNGs (exact pixels) plus the 4 decoded JPEGs
    jpegs = [img for img in task.train.images if bytes(img.permute(1, 2, 0).numpy()) not in {bytes(p) for p in train_pngs}]
    assert len(jpegs) == 4
    pixels = np.concatenate([train_pngs.reshape(-1, 3), torch.stack(jpegs).permute(0, 2, 3, 1).reshape(-1, 3).numpy()]).astype(np.float64) / 255
    mean, std = task.state()["mean"], task.state()["std"]
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-6)
    x, _ = next(task.eval_batches(50))
    assert x.shape == (50, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)


def test_real_cifar_images_cached_and_streamed_batches_are_identical(cifar_tree):
    root, _ = cifar_tree
    cached = folder_task(root, "data.workers=0", "data.image_size=24", "data.cache=memory")
    streamed = folder_task(root, "data.workers=2", "data.image_size=24", "data.cache=stream")
    assert not cached.streamed and streamed.streamed
    assert "data.cache=stream: streamed: decoded per mini-batch by 2 DataLoader workers" in streamed.mode_line
    assert cached.state() == streamed.state()
    for mine, theirs in zip(cached.eval_batches(16), streamed.eval_batches(16), strict=True):
        assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    for mine, theirs in zip(cached.calib_batches(32, 70), streamed.calib_batches(32, 70), strict=True):
        assert torch.equal(mine[0], theirs[0])
    a, b = cached.train_batches(32, seed=3), streamed.train_batches(32, seed=3)
    for epoch, index in ((0, 0), (0, 1), (1, 4), (0, 2)):  # in order, across an epoch, and a jump back
        (xa, ya), (xb, yb) = a.get(epoch, index), b.get(epoch, index)
        assert xa.shape == (32, 3, 24, 24) and torch.equal(xa, xb) and torch.equal(ya, yb)


# --- held-out validation, streamed mode, configured statistics ------------------------------


def test_without_val_a_fraction_of_each_class_is_held_out(tmp_path):
    root = write_tree(tmp_path / "tree", train=10, val=0)
    task = folder_task(root, *QUICK, "data.val_fraction=0.25")
    per_class = held_out_count(10, 0.25)
    assert per_class == 3  # round(2.5) upwards
    assert torch.bincount(task.eval.labels).tolist() == [3, 3, 3] and torch.bincount(task.train.labels).tolist() == [7, 7, 7]
    assert set(map(str, task.train.images.shape)) and "0.25 of train/ held out" in task.describe()
    again = folder_task(root, *QUICK, "data.val_fraction=0.25")
    assert torch.equal(task.eval.images, again.eval.images)  # the same images every time
    assert held_out_count(1, 0.5) == 0 and held_out_count(2, 0.01) == 1 and held_out_count(4, 0.99) == 3


def test_over_the_memory_budget_the_images_are_streamed(tmp_path):
    root = write_tree(tmp_path / "tree")
    task = folder_task(root, "data.workers=0", "data.image_size=40", "data.memory_budget_gb=0.0001")
    assert task.streamed
    assert task.mode_line.endswith("48 images at 40x40 are 230.4 KB as uint8, over data.memory_budget_gb=0.0001: "
                                   "streamed: decoded per mini-batch by 0 DataLoader workers (data.workers=0: in the main process)")
    assert "streamed" in task.describe()
    x, y = task.train_batches(8, seed=0).get(0, 0)
    assert x.shape == (8, 3, 40, 40) and y.dtype == torch.int64
    within = folder_task(root, "data.workers=0", "data.image_size=40")
    assert not within.streamed and "within data.memory_budget_gb=4: decoded once and kept in memory" in within.mode_line


def test_given_statistics_are_used_and_checked(tmp_path):
    root = write_tree(tmp_path / "tree")
    task = folder_task(root, *QUICK, "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]")
    assert (task.state()["mean"], task.state()["std"]) == ([0.5] * 3, [0.25] * 3)
    x, _ = next(task.eval_batches(4))
    assert torch.allclose(x, (task.eval.images[:4].float() / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(UserError, match="data.mean and data.std go together"):
        folder_task(root, *QUICK, "data.mean=[0.5,0.5,0.5]").state()


# --- bad input: one line each ---------------------------------------------------------------


def one_line_error(args, capsys) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sortednet: error: "), err
    return lines[0]


def train_args(root, tmp_path, *extra):
    return ["train", "data=image_folder", f"data.root={root}", *QUICK, "pool=tiny", f"hydra.run.dir={tmp_path / 'run'}", *extra]


def test_bad_folders_are_one_line_each(tmp_path, capsys):
    empty = write_tree(tmp_path / "empty")
    (empty / "train" / "emu").mkdir()
    (empty / "val" / "emu").mkdir()
    assert f"class folder {empty / 'train' / 'emu'} holds no images" in one_line_error(train_args(empty, tmp_path), capsys)

    notes = write_tree(tmp_path / "notes")
    (notes / "train" / "dog" / "notes.txt").write_text("not a picture")
    (notes / "train" / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    assert f"{notes / 'train' / 'dog' / 'notes.txt'} is not an image" in one_line_error(train_args(notes, tmp_path), capsys)

    broken = write_tree(tmp_path / "broken")
    (broken / "val" / "owl" / "zz.png").write_bytes(b"this is no PNG")
    assert f"{broken / 'val' / 'owl' / 'zz.png'} is not an image that can be decoded" in one_line_error(train_args(broken, tmp_path), capsys)

    lonely = write_tree(tmp_path / "lonely", classes=("cat",))
    assert "has 1 class folder (cat): classification needs at least two" in one_line_error(train_args(lonely, tmp_path), capsys)

    differ = write_tree(tmp_path / "differ")
    (differ / "val" / "owl").rename(differ / "val" / "bat")
    line = one_line_error(train_args(differ, tmp_path), capsys)
    assert "differ from those of" in line and "missing from val/: owl; not in train/: bat" in line

    assert "no train/ folder under" in one_line_error(train_args(tmp_path / "notes" / "train", tmp_path), capsys)


def test_settings_the_model_or_data_cannot_take_are_one_line_each(tmp_path, capsys):
    root = write_tree(tmp_path / "tree")
    line = one_line_error(train_args(root, tmp_path, "model=mobilenetv2", "pool=mbv2_tiny", "data.image_size=4"), capsys)
    assert "data.image_size=4 is too small for model=mobilenetv2: it downsamples by 8" in line
    line = one_line_error(train_args(root, tmp_path, "model.num_classes=10"), capsys)
    assert "data=image_folder has 3 classes (the class folders of" in line and "model.num_classes=10" in line
    assert "data.image_size must be >= 1" in one_line_error(train_args(root, tmp_path, "data.image_size=0"), capsys)


def test_describe_counts_the_class_folders_and_needs_no_images(tmp_path, capsys):
    root = write_tree(tmp_path / "tree", classes=("a", "b", "c", "d", "e"), train=1, val=0)
    for data_root, classes in ((root, 5), (tmp_path / "none", 10)):
        out_dir = tmp_path / f"describe_{classes}"
        code, _, err = run_cli(["describe", "data=image_folder", f"data.root={data_root}", "data.image_size=16", "pool=full",
                                f"hydra.run.dir={out_dir}"], capsys)
        assert code == 0, err
        full = (out_dir / "pool.csv").read_text().splitlines()[1].split(",")
        # cPreResNet20's head: 256 x classes weights + classes biases
        assert int(full[4]) == 219482 - 10 * 257 + classes * 257


# --- the command line, end to end -----------------------------------------------------------


def test_train_then_eval_grid_and_export_keep_the_class_names(tmp_path, capsys):
    root = write_tree(tmp_path / "tree", classes=("ant", "bee", "cow", "dog"), train=8, val=2)
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "data=image_folder", f"data.root={root}", "data.image_size=20", *QUICK, "pool=tiny",
                              "trainer.epochs=1", "trainer.batch_size=16", "sched.warmup_epochs=0", "trainer.eval_grid=false",
                              "eval.latency=false", f"hydra.run.dir={run}"], capsys)
    assert code == 0, err
    assert "32 image_folder images (4 classes, 20x20, validation: 8 from val/; cached in memory)" in out
    assert "decoded once and kept in memory as uint8" in (run / "train.log").read_text()
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["task"]["classes"] == ["ant", "bee", "cow", "dog"] and checkpoint["task"]["image_size"] == 20
    assert checkpoint["arch"]["num_classes"] == 4

    grid_dir = tmp_path / "grid"
    code, out, err = run_cli(["eval-grid", f"checkpoint={run}", "eval.latency=false", f"hydra.run.dir={grid_dir}"], capsys)
    assert code == 0, err
    rows = json.loads((grid_dir / "grid.json").read_text())["rows"]
    assert len(rows) == 4 and all(0 <= r["accuracy"] <= 1 for r in rows)

    export_dir = tmp_path / "export"
    code, out, err = run_cli(["export", f"checkpoint={run}", "sub.width=0.5", "sub.depth=1", f"hydra.run.dir={export_dir}"], capsys)
    assert code == 0, err
    task_file = json.loads((export_dir / "task.json").read_text())
    assert task_file["classes"] == ["ant", "bee", "cow", "dog"] and task_file == {k: checkpoint["task"][k] for k in task_file}
    import sortednet_cli

    model = sortednet_cli.load_exported(export_dir / "w0.5_d1-1-1.pt")
    assert model.task["classes"] == ["ant", "bee", "cow", "dog"]
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 4)

    # the checkpoint's classes are checked against the folder it is evaluated on
    other = write_tree(tmp_path / "other", classes=("ant", "bee", "cow", "elk"), train=1, val=1)
    with pytest.raises(UserError, match=r"differ from those the model was trained on \(trained on but not here: dog; here but not trained on: elk\)"):
        folder_task(other, *QUICK, state=checkpoint["task"]).model_fields()
