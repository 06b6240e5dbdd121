"""ResNet-18 and ResNet-50 (model=resnet18, model=resnet50): torchvision's layout and names,
its parameter counts and outputs, torchvision's ImageNet weights from the hub cache, sub-models
against their standalone networks, and export to a plain torchvision ResNet."""

import logging

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from sortednet_cli import load_exported
from sortednet_cli.config import PoolConfig
from sortednet_cli.engine.eval_grid import load_trained
from sortednet_cli.errors import UserError
from sortednet_cli.models import build_from_arch, family_of
from sortednet_cli.models.cost import parameter_count
from sortednet_cli.models.resnet import ResNet, resnet_from_config, torchvision_resnet, torchvision_weights_file
from sortednet_cli.sorted.pool import pool_from_config
from sortednet_cli.sorted.submodel import SubModel

from conftest import REPO, compose_config, copy_leading_slices, run_cli

SPECS = {"resnet18": ("basic", (2, 2, 2, 2), torchvision.models.resnet18), "resnet50": ("bottleneck", (3, 4, 6, 3), torchvision.models.resnet50)}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def sorted_resnet(name: str, stem_type: str = "cifar", num_classes: int = 10) -> ResNet:
    block, blocks, _ = SPECS[name]
    torch.manual_seed(0)
    model = ResNet(name, block, stem_type, blocks=blocks, num_classes=num_classes)
    randomize_bn(model)
    return model.eval()


@torch.no_grad()
def randomize_bn(model: torch.nn.Module) -> None:
    """BN statistics and affine parameters away from their defaults, so a wrong slice shows."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)


def pool_widths_narrowest(name: str, depth_limits) -> SubModel:
    spec = OmegaConf.merge(OmegaConf.structured(PoolConfig), OmegaConf.load(REPO / "conf" / "pool" / f"{name}.yaml"))
    pool = pool_from_config(spec, depth_limits)
    return min(pool, key=lambda sub: (sub.width, sum(sub.depth)))


@pytest.mark.parametrize("name, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_layout_has_torchvision_names_and_parameter_counts(name, params):
    model = sorted_resnet(name, "imagenet", 1000)
    reference = SPECS[name][2]()
    assert list(model.state_dict()) == list(reference.state_dict())  # the same keys, in the same order
    assert all(model.state_dict()[k].shape == v.shape for k, v in reference.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == params == sum(p.numel() for p in reference.parameters())
    assert parameter_count(model, SubModel(1.0, SPECS[name][1])) == params
    assert model.depth_limits == SPECS[name][1]


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("stem_type", ["imagenet", "cifar"])
def test_full_sub_model_equals_torchvision_with_the_same_weights(name, stem_type):
    model = sorted_resnet(name, stem_type)
    reference = torchvision_resnet("torchvision", SPECS[name][0], SPECS[name][1], 10, stem_type)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = reference(X)
        # Float32 over 50 layers, with kernels that vary by thread count: 1e-5 of the largest logit.
        atol = 1e-5 * expected.abs().max().item()
        torch.testing.assert_close(model(X, SubModel(1.0, SPECS[name][1])), expected, rtol=1e-4, atol=atol)
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=atol)


def narrow_subs(name: str) -> list[SubModel]:
    limits = SPECS[name][1]
    own_pool = "resnet18" if name == "resnet18" else "resnet50"
    return [
        SubModel(0.05, (1, 1, 1, 1)),  # the narrow end of pool=160
        pool_widths_narrowest(own_pool, limits),
        pool_widths_narrowest("resnet_tiny", limits),
        SubModel(0.5, tuple(max(1, n - 1) for n in limits)),
        SubModel(0.75, limits),
    ]


@pytest.mark.parametrize("name", SPECS)
def test_narrow_sub_models_equal_their_standalone_networks(name):
    model = sorted_resnet(name)
    for sub in narrow_subs(name):
        assert sub.width < 1
        arch = model.sub_arch(sub)
        by_hand = copy_leading_slices(model, ResNet(**{k: v for k, v in arch.items() if k != "name"})).eval()
        small = model.extract(sub).eval()
        assert type(small) is ResNet and small.arch == arch and build_from_arch(arch).arch == arch
        with torch.no_grad():
            out = model(X, sub)
            torch.testing.assert_close(out, by_hand(X), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(small(X), by_hand(X), rtol=0, atol=0)
        assert sum(p.numel() for p in small.parameters()) == parameter_count(model, sub)


@pytest.mark.parametrize("name", SPECS)
def test_full_width_extracts_as_a_plain_torchvision_resnet(name):
    model = sorted_resnet(name)
    depth = (1, 2, 1, 2)
    small = model.extract(SubModel(1.0, depth)).eval()
    assert type(small) is torchvision.models.ResNet
    assert [len(getattr(small, f"layer{i}")) for i in range(1, 5)] == list(depth)
    assert family_of(small).name == name  # the engine finds its family (latency, grid)
    rebuilt = build_from_arch(small.arch)
    assert type(rebuilt) is torchvision.models.ResNet
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(small(X), model(X, SubModel(1.0, depth)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rebuilt.eval()(X), small(X), rtol=0, atol=0)


def test_stem_auto_follows_the_image_size():
    cfg = compose_config("train", ["model=resnet18"]).model
    assert resnet_from_config(cfg, image_size=32).arch["stem_type"] == "cifar"
    assert resnet_from_config(cfg, image_size=224).arch["stem_type"] == "imagenet"
    forced = compose_config("train", ["model=resnet18", "model.stem=imagenet"]).model
    assert resnet_from_config(forced, image_size=32).arch["stem_type"] == "imagenet"
    with pytest.raises(UserError, match="too small for model=resnet18"):  # downsampled by 32 to nothing
        resnet_from_config(forced, image_size=16)
    assert resnet_from_config(cfg, image_size=32, num_classes=100).fc.out_features == 100


@pytest.fixture
def hub_with_resnet18(tmp_path, monkeypatch):
    """A temporary TORCH_HOME whose hub cache holds a freshly built torchvision resnet18's state
    dict under the file name of its ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    reference = torchvision.models.resnet18().eval()
    randomize_bn(reference)
    file, url = torchvision_weights_file("resnet18")
    assert file.name == url.rsplit("/", 1)[-1] and str(tmp_path) in str(file)
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    return reference


def test_pretrained_torchvision_weights_load_from_the_hub_cache(hub_with_resnet18, caplog):
    cfg = compose_config("train", ["model=resnet18", "model.pretrained=torchvision", "model.stem=imagenet"]).model
    with caplog.at_level(logging.INFO, logger="sortednet"):
        model = resnet_from_config(cfg, image_size=224, num_classes=1000).eval()
    assert "fc replaced" not in caplog.text and "loaded" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, SubModel(1.0, (2, 2, 2, 2))), hub_with_resnet18(x), rtol=1e-4, atol=1e-5)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sortednet"):
        ten = resnet_from_config(cfg, image_size=224, num_classes=10)
    assert "fc replaced (torchvision's has 1000 classes, this task 10)" in caplog.text
    assert ten.fc.out_features == 10
    torch.testing.assert_close(ten.layer4[1].conv2.weight, hub_with_resnet18.layer4[1].conv2.weight)

    caplog.clear()
    small_images = compose_config("train", ["model=resnet18", "model.pretrained=torchvision"]).model
    with caplog.at_level(logging.INFO, logger="sortednet"):
        cifar = resnet_from_config(small_images, image_size=32, num_classes=10)
    assert cifar.arch["stem_type"] == "cifar" and "conv1 keeps its initialisation" in caplog.text
    torch.testing.assert_close(cifar.bn1.running_var, hub_with_resnet18.bn1.running_var)


def test_missing_torchvision_weights_are_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = compose_config("train", ["model=resnet50", "model.pretrained=torchvision"]).model
    with pytest.raises(UserError, match=r"resnet50-11ad3fa6\.pth") as error:
        resnet_from_config(cfg, image_size=224)
    assert str(tmp_path / "hub" / "checkpoints") in str(error.value) and "never downloads" in str(error.value)


RESNET18_RUN = [
    # training only the narrow end keeps it quick; export takes any sub-model of the network
    "model=resnet18", "pool=resnet_tiny", "pool.widths=[0.25]", "data=fake", "data.fake_train_size=16", "data.fake_test_size=16",
    "trainer.epochs=1", "trainer.batch_size=8", "trainer.device=cpu", "sched.warmup_epochs=0", "trainer.eval_grid=false",
    "eval.latency=false", "eval.calib_examples=16",
]


def test_train_and_export_round_trip(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["train", *RESNET18_RUN, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 0, err
    run = load_trained(run_dir, torch.device("cpu"))
    assert run.model.arch["stem_type"] == "cifar"  # fake data is 32x32
    exported = {}
    for width, depth, kind in ((1.0, [1, 2, 1, 2], torchvision.models.ResNet), (0.25, [1, 1, 1, 1], ResNet)):
        out = tmp_path / f"export{width}"
        # eval.bn=running: the stored statistics, so the export equals the checkpoint's sub-model
        code, _, err = run_cli(["export", f"checkpoint={run_dir}", f"sub.width={width}", f"sub.depth=[{','.join(map(str, depth))}]",
                                "eval.bn=running", f"hydra.run.dir={out}"], capsys)
        assert code == 0, err
        path = out / f"w{width:g}_d{'-'.join(map(str, depth))}.pt"
        small = exported[width] = load_exported(path)
        assert type(small) is kind
        with torch.no_grad():
            torch.testing.assert_close(small(X), run.model.eval()(X, SubModel(width, tuple(depth))), rtol=1e-4, atol=1e-5)
    # the full-width file loads into torchvision's own class with no code of this project
    blob = torch.load(tmp_path / "export1.0" / "w1_d1-2-1-2.pt", weights_only=True)
    plain = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 2, 1, 2], num_classes=10)
    plain.conv1, plain.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()  # the CIFAR stem
    plain.load_state_dict(blob["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(X), exported[1.0](X), rtol=0, atol=0)
