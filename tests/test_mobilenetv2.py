import pytest
import torch
from omegaconf import OmegaConf

from sortednet_cli.config import PoolConfig
from sortednet_cli.models import build_from_arch
from sortednet_cli.models.mobilenetv2 import MobileNetV2
from sortednet_cli.models.cost import mflops_per_example, parameter_count
from sortednet_cli.sorted.prefix_eval import evaluate_naive, evaluate_shared, preserved_buffers, recalibrate
from sortednet_cli.sorted.pool import pool_from_config
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.tasks.image.task import AccuracyMeter

from conftest import REPO, copy_leading_slices, prefix_tree_outputs, randomize_norms

FULL_DEPTH = (1, 2, 3, 4, 3, 3, 1)
IMAGE = torch.zeros(1, 3, 32, 32)
ONE_BLOCK = (1,) * 7
NARROWEST = SubModel(0.05, ONE_BLOCK)


def load_pool(name: str, depth_limits):
    # Read from this checkout's conf/ (an editable install may point sortednet_cli.conf elsewhere).
    spec = OmegaConf.merge(OmegaConf.structured(PoolConfig), OmegaConf.load(REPO / "conf" / "pool" / f"{name}.yaml"))
    return pool_from_config(spec, depth_limits)


def small_copy(full: MobileNetV2, sub: SubModel) -> MobileNetV2:
    """A plain MobileNetV2 built from sub_arch, weights copied from the leading slices of the
    full network's tensors (by hand here, not by extract)."""
    small = MobileNetV2(**{k: v for k, v in full.sub_arch(sub).items() if k != "name"})
    return copy_leading_slices(full, small)


def test_full_network_size():
    model = MobileNetV2()
    count = parameter_count(model, SubModel(1.0, FULL_DEPTH))
    assert count == sum(p.numel() for p in model.parameters()) == 2_236_682  # torchvision's count too
    assert 2.1e6 < count < 2.4e6
    assert model.depth_limits == FULL_DEPTH


def test_sub_arch_keeps_the_leading_channels_of_every_layer():
    arch = MobileNetV2().sub_arch(NARROWEST)
    # scaled(c, 0.05) of stem 32, hidden t*c_in and t*c, outs, last 1280: round half up, at least 1
    assert arch["stem"] == 2
    assert arch["first_hidden"] == [2, 5, 7, 10, 19, 29, 48]
    assert arch["hidden"] == [1, 7, 10, 19, 29, 48, 96]
    assert arch["outs"] == [1, 1, 2, 3, 5, 8, 16]
    assert arch["last"] == 64 and arch["blocks"] == list(ONE_BLOCK)
    rebuilt = build_from_arch(arch)
    assert rebuilt.arch == arch and rebuilt.depth_limits == ONE_BLOCK
    assert MobileNetV2().unit_summary(1.0) == "16-24-32-64-96-160-320"


@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize("sub", [NARROWEST, SubModel(0.35, (1, 2, 2, 1, 3, 1, 1)), SubModel(0.75, (1, 1, 3, 4, 2, 3, 1)), SubModel(1.0, FULL_DEPTH)])
def test_sub_model_equals_extracted_and_separately_built_networks(norm, sub):
    torch.manual_seed(0)
    full = MobileNetV2(norm=norm)
    randomize_norms(full)
    full.eval()
    small = small_copy(full, sub).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = small(x)
        torch.testing.assert_close(full(x, sub), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(full.extract(sub).eval()(x), expected, rtol=0, atol=0)


def test_gradients_reach_only_the_slices_a_sub_model_uses():
    torch.manual_seed(0)
    model = MobileNetV2()
    sub = SubModel(0.5, (1, 1, 2, 2, 1, 3, 1))
    model(torch.randn(4, 3, 32, 32), sub).sum().backward()
    used = build_from_arch(model.sub_arch(sub)).state_dict()
    for name, p in model.named_parameters():
        if name not in used:  # a block past the sub-model's depth
            assert p.grad is None, name
            continue
        outside = p.grad.clone()
        outside[tuple(slice(0, n) for n in used[name].shape)] = 0
        assert outside.abs().sum() == 0, name
    assert model.stages[5][2].depthwise.weight.grad[:480].abs().sum() > 0
    head = model.head.classifier.weight.grad
    assert head[:, :640].abs().sum() > 0 and head[:, 640:].abs().sum() == 0


def test_shared_evaluation_equals_naive_with_recalibration():
    torch.manual_seed(0)
    model = MobileNetV2()
    randomize_norms(model, mean=0.5, std=0.3)
    pool = load_pool("mbv2_tiny", model.depth_limits)
    calib = [(torch.randn(8, 3, 32, 32) * 1.3 + 0.2, None) for _ in range(2)]
    images = torch.randn(8, 3, 32, 32)
    evaluation = [(images, torch.randint(0, 10, (8,)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    shared = evaluate_shared(model, pool, lambda: evaluation, lambda: calib, True, AccuracyMeter)
    assert shared == evaluate_naive(model, pool, lambda: evaluation, lambda: calib, True, AccuracyMeter)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # Accuracy of an untrained network says little: compare the logits of each width's tree walk
    # (per-node block and per-leaf head statistics) with each sub-model recalibrated alone.
    with torch.no_grad():
        for width in pool.widths:
            depths = [sub.depth for sub in pool if sub.width == width]
            walked = prefix_tree_outputs(model, width, depths, [chunk for chunk, _ in calib], images)
            for depth in depths:
                with preserved_buffers(model):
                    recalibrate(model, SubModel(width, depth), lambda: calib)
                    alone = model(images, SubModel(width, depth))
                torch.testing.assert_close(walked[depth], alone, rtol=1e-4, atol=1e-5)


def test_pools_build_against_the_depth_limits():
    pool = load_pool("mbv2", FULL_DEPTH)
    assert len(pool) == 80 and len(pool.widths) == 20
    assert [sub.depth for sub in pool if sub.width == 1.0] == [ONE_BLOCK, (1, 2, 2, 2, 2, 2, 1), (1, 2, 3, 3, 3, 3, 1), FULL_DEPTH]
    assert pool.smallest == NARROWEST and pool.largest == SubModel(1.0, FULL_DEPTH)


def test_cost_is_plausible_and_grows_with_width():
    model = MobileNetV2()
    full = mflops_per_example(model, SubModel(1.0, FULL_DEPTH), IMAGE)
    assert 175 < full < 177  # 87.98 M multiply-adds, counted by hand from the layer table
    widths = load_pool("mbv2", FULL_DEPTH).widths
    costs = [mflops_per_example(model, SubModel(w, FULL_DEPTH), IMAGE) for w in widths]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert costs[-1] == full


def test_channels_last_forward_and_backward_of_the_narrowest():
    torch.manual_seed(0)
    plain = MobileNetV2()
    fast = MobileNetV2()
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32)
    out = fast(x.contiguous(memory_format=torch.channels_last), NARROWEST)
    out.sum().backward()
    torch.testing.assert_close(out, plain(x, NARROWEST), rtol=1e-4, atol=1e-5)
    assert fast.stem.weight.grad[:2].abs().sum() > 0 and torch.isfinite(fast.stem.weight.grad).all()
