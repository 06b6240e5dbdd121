"""ResNet-18 and ResNet-50 in torchvision's layout, sorted by width and depth.

One class serves both roles, like PreResNet. Built at full size it is the sorted network:
`model(x, sub)` runs sub-model `sub` on views of the shared tensors. Built at a sub-model's
channel counts (`sub_arch(sub)`) it is that sub-model as a plain standalone network.

The parameter names are torchvision's (conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1,
fc), so torchvision's ImageNet weights load into the sorted network (`model.pretrained=torchvision`,
from torch's hub cache, never downloaded), and a sub-model that keeps every channel exports as a
plain `torchvision.models.ResNet(block, depths)`.

Blocks are torchvision's: BasicBlock (two 3x3 convs) for ResNet-18, stages 2-2-2-2; Bottleneck
(1x1, 3x3 with the stride, 1x1 to 4 x planes: ResNet v1.5) for ResNet-50, stages 3-4-6-3. The
first block of a stage has the 1x1 conv + BN downsample wherever torchvision's has one.
Stem: `imagenet` is torchvision's (7x7 stride 2, BN, ReLU, 3x3 max-pool stride 2); `cifar` is a
3x3 stride-1 conv, BN, ReLU and no max-pool (for 32x32 images); `auto` picks by the task's image
size (cifar up to SMALL_IMAGE pixels a side).

Width w: every conv and BN keeps its first scaled(c, w) channels of the full count c (stem 64,
each stage's planes, each block's output); fc reads the first features. The 3 input channels
and the logits are never cut. Depth: stage s runs its first d_s blocks, 1 <= d_s <= n_s, so the
first block of every stage, with its downsample, always runs.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..sorted.submodel import SubModel
from .layers import SlicedBatchNorm2d, SlicedConv2d, SlicedLinear
from .registry import ModelFamily, register_family
from .staged import ResidualUnits, StagedNetwork, check_image_size, head_classes, image_bench

FULL_STEM = 64
FULL_PLANES = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
# model.name -> (block, blocks per stage, the torchvision weights enum that names its file)
PRESETS = {"resnet18": ("basic", (2, 2, 2, 2), "ResNet18_Weights"), "resnet50": ("bottleneck", (3, 4, 6, 3), "ResNet50_Weights")}
SMALL_IMAGE = 64  # model.stem=auto: the CIFAR stem for images up to this many pixels a side
IMAGENET_CLASSES = 1000

log = logging.getLogger("sortednet")


class Stem(str, Enum):
    auto = "auto"
    imagenet = "imagenet"
    cifar = "cifar"


class Pretrained(str, Enum):
    none = "none"
    torchvision = "torchvision"


def _downsample(cin: int, cout: int, stride: int, projection: bool) -> Optional[nn.Sequential]:
    # torchvision's names: downsample.0 (the 1x1 conv), downsample.1 (its BN)
    return nn.Sequential(SlicedConv2d(cin, cout, 1, stride=stride, bias=False), SlicedBatchNorm2d(cout)) if projection else None


def _shortcut(block: nn.Module, x: torch.Tensor, cout: int) -> torch.Tensor:
    if block.downsample is None:
        return x
    return block.downsample[1](block.downsample[0](x, cout))


class BasicBlock(nn.Module):
    """3x3 (stride)-BN-ReLU, 3x3-BN, plus the shortcut, ReLU."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = SlicedConv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = SlicedBatchNorm2d(planes)
        self.conv2 = SlicedConv2d(planes, cout, 3, padding=1, bias=False)
        self.bn2 = SlicedBatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride, projection)

    def forward(self, x: torch.Tensor, planes: int, cout: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, planes)))
        out = self.bn2(self.conv2(out, cout))
        return F.relu(out + _shortcut(self, x, cout))


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (stride)-BN-ReLU, 1x1-BN, plus the shortcut, ReLU (torchvision's v1.5)."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = SlicedConv2d(cin, planes, 1, bias=False)
        self.bn1 = SlicedBatchNorm2d(planes)
        self.conv2 = SlicedConv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = SlicedBatchNorm2d(planes)
        self.conv3 = SlicedConv2d(planes, cout, 1, bias=False)
        self.bn3 = SlicedBatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride, projection)

    def forward(self, x: torch.Tensor, planes: int, cout: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, planes)))
        out = F.relu(self.bn2(self.conv2(out, planes)))
        out = self.bn3(self.conv3(out, cout))
        return F.relu(out + _shortcut(self, x, cout))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


@dataclass
class ResNet18Config:
    name: str = "resnet18"
    # auto: cifar (3x3 stride 1, no max-pool) for images up to 64 pixels a side, else imagenet
    # (7x7 stride 2 + max-pool)
    stem: Stem = Stem.auto
    # torchvision: its ImageNet weights from <torch hub dir>/checkpoints/ (never downloaded)
    pretrained: Pretrained = Pretrained.none
    num_classes: Optional[int] = None  # null: the data's class count (a number must match it)


@dataclass
class ResNet50Config(ResNet18Config):
    name: str = "resnet50"


class ResNet(ResidualUnits, StagedNetwork):
    def __init__(
        self,
        name: str = "resnet18",
        block: str = "basic",
        stem_type: str = "imagenet",
        stem: int = FULL_STEM,
        planes: Sequence[int] = FULL_PLANES,
        outs: Optional[Sequence[int]] = None,
        blocks: Sequence[int] = (2, 2, 2, 2),
        projections: Optional[Sequence[bool]] = None,
        num_classes: int = IMAGENET_CLASSES,
    ):
        super().__init__()
        if block not in BLOCKS or stem_type not in ("imagenet", "cifar"):
            raise ValueError(f"unknown ResNet block {block!r} or stem {stem_type!r}")
        outs = [p * EXPANSION[block] for p in planes] if outs is None else outs
        if projections is None:
            # Decided once, on the full network's sizes, and kept by every sub-model: channel
            # counts can coincide after rounding where the full network's differ.
            projections = [index > 0 or stem != outs[0] for index in range(len(outs))]
        self.arch = {
            "name": name,
            "block": block,
            "stem_type": stem_type,
            "stem": int(stem),
            "planes": [int(p) for p in planes],
            "outs": [int(o) for o in outs],
            "blocks": [int(b) for b in blocks],
            "projections": [bool(p) for p in projections],
            "num_classes": int(num_classes),
        }
        imagenet = stem_type == "imagenet"
        self.conv1 = SlicedConv2d(3, stem, 7 if imagenet else 3, stride=2 if imagenet else 1, padding=3 if imagenet else 1, bias=False)
        self.bn1 = SlicedBatchNorm2d(stem)
        self.pool_stem = imagenet
        cin = stem
        Block = BLOCKS[block]
        for index, (p, o, n, projection) in enumerate(zip(planes, outs, blocks, projections)):
            stride = 1 if index == 0 else 2
            layer = nn.ModuleList(Block(cin if b == 0 else o, p, o, stride if b == 0 else 1, projection and b == 0) for b in range(n))
            self.add_module(f"layer{index + 1}", layer)
            cin = o
        self.fc = SlicedLinear(cin, num_classes)
        self._init_weights()

    @property
    def stages(self) -> list[nn.ModuleList]:
        # layer1..layer4 under torchvision's names; not a module of its own (its keys would repeat)
        return [getattr(self, f"layer{index + 1}") for index in range(len(self.arch["blocks"]))]

    def _init_weights(self) -> None:
        # torchvision's: He-normal (fan_out) convs, BN weight 1 and bias 0, nn.Linear's own fc
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def run_stem(self, x: torch.Tensor, width: float) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x, self.units(width)["stem"])))
        return F.max_pool2d(x, 3, stride=2, padding=1) if self.pool_stem else x

    def run_block(self, stage: int, index: int, x: torch.Tensor, width: float) -> torch.Tensor:
        units = self.units(width)
        return self.stages[stage][index](x, units["planes"][stage], units["outs"][stage])

    def run_head(self, x: torch.Tensor, width: float) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def head_module(self) -> nn.Module:
        return self.fc

    def standalone_arch(self, sub: SubModel) -> dict:
        """A sub-model that keeps every channel is torchvision's ResNet at its depths; a narrower
        one is this class at its sizes."""
        if self.units(sub.width) != self.units(1.0):
            return self.sub_arch(sub)
        a = self.arch
        return {"name": f"torchvision_{a['name']}", "block": a["block"], "layers": list(sub.depth), "num_classes": a["num_classes"],
                "stem_type": a["stem_type"]}


def torchvision_resnet(name: str, block: str, layers: Sequence[int], num_classes: int, stem_type: str) -> nn.Module:
    """A plain torchvision.models.ResNet(block, layers); the CIFAR stem replaces its conv1 with
    a 3x3 stride-1 conv and its max-pool with nn.Identity (no parameters: the keys stay)."""
    from torchvision.models import resnet as tv

    net = tv.ResNet({"basic": tv.BasicBlock, "bottleneck": tv.Bottleneck}[block], [int(n) for n in layers], num_classes=int(num_classes))
    if stem_type == "cifar":
        net.conv1 = nn.Conv2d(3, FULL_STEM, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.arch = {"name": name, "block": block, "layers": [int(n) for n in layers], "num_classes": int(num_classes), "stem_type": stem_type}
    return net


def choose_stem(stem: Stem, image_size: int) -> str:
    if stem is Stem.auto:
        return "cifar" if image_size <= SMALL_IMAGE else "imagenet"
    return stem.value


def torchvision_weights_file(preset: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps torchvision's default ImageNet weights for `preset`, and their URL."""
    import torchvision.models

    url = getattr(torchvision.models, PRESETS[preset][2]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def load_torchvision_weights(model: ResNet, preset: str) -> None:
    """torchvision's ImageNet weights into the sorted network (same names). conv1 under the CIFAR
    stem and fc for another class count keep their initialisation (each said in the log)."""
    file, url = torchvision_weights_file(preset)
    if not file.is_file():
        raise UserError(f"model.pretrained=torchvision: torchvision's ImageNet weights for {preset} are not at {file}; "
                        f"put {file.name} there (from {url}: this tool never downloads), or point TORCH_HOME at a hub cache that has it")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file fails in many ways
        raise UserError(f"model.pretrained=torchvision: {file} is not a readable state dict ({exc})") from None
    own = model.state_dict()
    if not isinstance(state, dict) or set(state) - set(own):
        raise UserError(f"model.pretrained=torchvision: {file} does not hold torchvision's {preset} weights")
    if state["conv1.weight"].shape != own["conv1.weight"].shape:
        del state["conv1.weight"]
        log.info("%s: conv1 keeps its initialisation (the CIFAR stem's 3x3 conv cannot take torchvision's 7x7 one); "
                 "every other tensor is torchvision's", preset)
    if state["fc.weight"].shape != own["fc.weight"].shape:
        classes = state["fc.weight"].shape[0]
        del state["fc.weight"], state["fc.bias"]
        log.info("%s: fc replaced (torchvision's has %d classes, this task %d): freshly initialised", preset, classes, model.arch["num_classes"])
    wrong = [name for name, tensor in state.items() if tensor.shape != own[name].shape]
    missing = [name for name in own if name not in state and not name.endswith("num_batches_tracked")
               and name not in ("conv1.weight", "fc.weight", "fc.bias")]
    if wrong or missing:
        raise UserError(f"model.pretrained=torchvision: {file} does not fit {preset} ({', '.join((wrong + missing)[:3])} ...)")
    model.load_state_dict(state, strict=False)
    log.info("%s: torchvision's ImageNet weights loaded from %s", preset, file)


def resnet_from_config(cfg, image_size: int = 32, num_classes: Optional[int] = None) -> ResNet:
    """The sorted network for `model=resnet18|resnet50`; the task gives its image size (which
    stem `auto` picks) and, where it decides it, the class count."""
    block, blocks, _ = PRESETS[cfg.name]
    stem_type = choose_stem(cfg.stem, image_size)
    check_image_size(cfg.name, image_size, 32 if stem_type == "imagenet" else 8)  # the stem's stride 4 (or 1), then 2 x 2 x 2
    model = ResNet(cfg.name, block, stem_type, blocks=blocks, num_classes=head_classes(cfg, num_classes))
    if cfg.pretrained is Pretrained.torchvision:
        load_torchvision_weights(model, cfg.name)
    return model


for _preset, _schema in (("resnet18", ResNet18Config), ("resnet50", ResNet50Config)):
    register_family(ModelFamily(
        _preset, _schema, resnet_from_config,
        {_preset: functools.partial(ResNet, _preset), f"torchvision_{_preset}": functools.partial(torchvision_resnet, f"torchvision_{_preset}")},
        frozenset({"image_classification"}), bench=image_bench,
    ))
