from collections import Counter

import pytest
import torch

from sortednet_cli.tasks.image.data import ImageSet, Normalizer, TrainBatches, crop_flip, crop_flip_offsets, load_splits
from sortednet_cli.errors import UserError

from conftest import compose_config


def coordinate_images(n):
    """Channel 0 holds row+1, channel 1 holds column+1: zero only in the padding."""
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33).view(1, 32).expand(32, 32)
    img = torch.stack([rows, cols, torch.zeros(32, 32, dtype=torch.int64)]).to(torch.uint8)
    return img.expand(n, 3, 32, 32).contiguous()


def random_crop_flip(images, gen):
    return crop_flip(images, *crop_flip_offsets(len(images), gen, images.device))


def test_crop_offsets_are_uniform_and_flips_happen_half_the_time():
    n = 18000
    out = random_crop_flip(coordinate_images(n), torch.Generator().manual_seed(0)).long()
    assert out.shape == (n, 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)
    top = out[:, 0, 16, 16] - 1 - 16 + 4  # output row 16 shows source row top + 16 - 4
    step = out[:, 1, 16, 17] - out[:, 1, 16, 16]
    flipped = step < 0
    col16 = out[:, 1, 16, 16] - 1
    left = torch.where(flipped, col16 - 15 + 4, col16 - 16 + 4)
    assert set(step.tolist()) == {1, -1}
    for offsets in (top, left):
        counts = Counter(offsets.tolist())
        assert sorted(counts) == list(range(9))
        assert all(abs(c / n - 1 / 9) < 0.012 for c in counts.values())
    assert abs(flipped.float().mean().item() - 0.5) < 0.015


def test_a_crop_keeps_the_image_content_contiguous():
    out = random_crop_flip(coordinate_images(50), torch.Generator().manual_seed(1)).long()
    rows = out[:, 0]
    inside = rows > 0
    # wherever the crop sees the image, consecutive output rows are consecutive source rows
    diffs = rows[:, 1:, :] - rows[:, :-1, :]
    both = inside[:, 1:, :] & inside[:, :-1, :]
    assert (diffs[both] == 1).all()


def test_batches_are_reproducible_from_seed_epoch_and_index():
    data = ImageSet(torch.randint(0, 255, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300))
    norm = Normalizer(torch.device("cpu"), channels_last=True)
    a = TrainBatches(data, 64, seed=5, augment=True, normalize=norm)
    b = TrainBatches(data, 64, seed=5, augment=True, normalize=norm)
    assert len(a) == 4
    b.get(1, 2)  # asking in another order changes nothing
    for epoch, index in [(0, 0), (0, 3), (1, 2)]:
        (xa, ya), (xb, yb) = a.get(epoch, index), b.get(epoch, index)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.get(0, 0)[1], a.get(1, 0)[1])  # reshuffled every epoch
    epoch_labels = torch.cat([a.get(2, i)[1] for i in range(4)])
    assert len(set(epoch_labels.tolist())) == 256  # no image twice in an epoch


def splits(*overrides):
    return load_splits(compose_config("train", ["data=fake", *overrides]).data, 10)


def test_validation_split_is_held_out_from_the_end_of_the_training_images():
    cfg = compose_config("train", ["data=fake"]).data
    full = load_splits(cfg, 10).train
    s = splits("data.val_size=512", "data.eval_split=val", "data.train_subset=1000")
    assert s.eval_name == "val" and len(s.eval) == 512 and len(s.train) == 1000
    assert torch.equal(s.eval.images, full.images[-512:])
    assert torch.equal(s.train.images, full.images[:1000])


def test_test_subset_and_bad_split_settings():
    assert len(splits("data.test_subset=100").eval) == 100
    with pytest.raises(UserError, match="needs a validation split"):
        splits("data.eval_split=val")
    with pytest.raises(UserError, match="leaves no training images"):
        splits("data.val_size=5000")
    with pytest.raises(UserError, match="must be >= 0"):
        splits("data.train_subset=-1")


def test_missing_cifar10_says_where_it_looked(tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}"]).data
    with pytest.raises(UserError, match=f"CIFAR-10 not found: looked for {tmp_path}/cifar-10-batches-py"):
        load_splits(cfg, 10)


def test_corrupt_cifar10_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="md5 check.*data.verify=false"):
        load_splits(compose_config("train", [f"data.root={tmp_path}"]).data, 10)
    with pytest.raises(UserError, match="could not be read"):
        load_splits(compose_config("train", [f"data.root={tmp_path}", "data.verify=false"]).data, 10)


def test_real_cifar10_loads_without_md5_check(cifar10_root):
    s = load_splits(compose_config("train", [f"data.root={cifar10_root}", "data.verify=false", "data.val_size=1000", "data.eval_split=val"]).data, 10)
    assert s.train.images.shape == (49000, 3, 32, 32) and s.train.images.dtype == torch.uint8
    assert s.train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert len(s.eval) == 1000


def write_tiny_cifar100(root, train=120, test=40):
    """cifar-100-python as torchvision reads it (pickled dicts of uint8 rows and fine labels)."""
    import pickle

    import numpy as np

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train), ("test", test)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))
    return root


def test_cifar100_is_read_by_torchvision_and_gives_the_model_100_classes(tmp_path):
    from sortednet_cli.models import build_model
    from sortednet_cli.tasks import build_task

    cfg = compose_config("train", ["data=cifar100", f"data.root={write_tiny_cifar100(tmp_path)}", "data.verify=false"])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    assert (len(task.train), len(task.eval), task.eval_name) == (120, 40, "test")
    assert task.train.labels[:3].tolist() == [0, 1, 2]
    fields = task.model_fields()
    assert fields["num_classes"] == 100
    assert build_model(cfg.model, fields).classifier.out_channels == 100
    x, _ = next(task.eval_batches(8))
    assert x.shape == (8, 3, 32, 32)


def test_cifar100_settings_are_checked(tmp_path):
    from sortednet_cli.tasks import build_task

    cfg = compose_config("train", ["data=cifar100", f"data.root={tmp_path}"])
    with pytest.raises(UserError, match=f"CIFAR-100 not found: looked for {tmp_path}/cifar-100-python/ .*data.download=true"):
        build_task(cfg.data, cfg.model, torch.device("cpu")).train
    wrong = compose_config("train", ["data=cifar100", "model.num_classes=10"])
    with pytest.raises(UserError, match="data=cifar100 has 100 classes but model.num_classes=10; leave model.num_classes unset"):
        build_task(wrong.data, wrong.model, torch.device("cpu"))
