import pytest
import torch
import torch.nn.functional as F

from sortednet_cli.models import build_from_arch
from sortednet_cli.models.layers import SlicedConv2d
from sortednet_cli.models.preresnet import PreResNet, cpreresnet
from sortednet_cli.models.cost import mflops_per_example, parameter_count
from sortednet_cli.sorted.submodel import SubModel, scaled

from conftest import copy_leading_slices, randomize_norms


def small_copy(full: PreResNet, sub: SubModel) -> PreResNet:
    """Built by hand here (not by extract): a plain PreResNet at sub's sizes, weights copied
    from the leading slices of the full network's tensors."""
    w = sub.width
    small = PreResNet(
        stem=scaled(16, w),
        planes=[scaled(p, w) for p in (16, 32, 64)],
        outs=[scaled(o, w) for o in (64, 128, 256)],
        blocks=sub.depth,
        norm=full.arch["norm"],
        gn_groups=full.arch["gn_groups"],
    )
    return copy_leading_slices(full, small)


@pytest.mark.parametrize("norm", ["bn", "in", "gn"])
@pytest.mark.parametrize("sub", [SubModel(0.05, (1, 1, 1)), SubModel(0.35, (1, 2, 1)), SubModel(0.75, (2, 1, 2)), SubModel(1.0, (2, 2, 2))])
def test_sub_model_equals_separately_built_small_network(norm, sub):
    torch.manual_seed(0)
    full = cpreresnet(2, norm, 10, 8)
    randomize_norms(full)
    full.eval()
    small = small_copy(full, sub).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(full(x, sub), small(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.extract(sub).eval()(x), small(x), rtol=0, atol=0)


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    full = cpreresnet(2, "bn", 10, 8).eval()
    fast = cpreresnet(2, "bn", 10, 8).eval()
    fast.load_state_dict(full.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    sub = SubModel(0.45, (2, 1, 2))
    torch.testing.assert_close(full(x, sub), fast(x.contiguous(memory_format=torch.channels_last), sub), rtol=1e-4, atol=1e-5)


def test_depth_runs_the_first_blocks_of_each_stage():
    model = cpreresnet(3, "bn", 10, 8).eval()  # cPreResNet29: 3 blocks per stage
    ran = []
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            block.register_forward_hook(lambda m, i, o, key=(s, b): ran.append(key))
    model(torch.randn(1, 3, 32, 32), SubModel(1.0, (1, 3, 2)))
    assert ran == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]


def test_gradients_reach_only_the_slices_a_sub_model_uses():
    model = cpreresnet(2, "bn", 10, 8)
    sub = SubModel(0.5, (1, 1, 1))
    model(torch.randn(4, 3, 32, 32), sub).sum().backward()
    stem = model.stem.weight.grad
    assert stem[:8].abs().sum() > 0 and stem[8:].abs().sum() == 0
    assert all(block.conv1.weight.grad is None for stage in model.stages for block in stage[1:])
    head = model.classifier.weight.grad
    assert head[:, :128].abs().sum() > 0 and head[:, 128:].abs().sum() == 0


def test_bn_training_updates_only_the_leading_running_statistics():
    model = cpreresnet(2, "bn", 10, 8).train()
    model(torch.randn(8, 3, 32, 32) * 3 + 1, SubModel(0.25, (2, 2, 2)))
    stats = model.stem.weight.new_tensor(0) + model.stages[0][0].norm1.running_mean
    assert stats[:4].abs().sum() > 0 and stats[4:].abs().sum() == 0


def test_full_network_size_and_cost_match_the_reference():
    model = cpreresnet(2, "bn", 10, 8)
    full = SubModel(1.0, (2, 2, 2))
    assert parameter_count(model, full) == sum(p.numel() for p in model.parameters())
    assert 0.21e6 < parameter_count(model, full) < 0.23e6
    assert 66 < mflops_per_example(model, full, torch.zeros(1, 3, 32, 32)) < 69  # about 34 M multiply-adds


def test_architecture_description_round_trips():
    model = cpreresnet(2, "gn", 10, 4)
    rebuilt = build_from_arch(model.sub_arch(SubModel(0.5, (1, 2, 1))))
    assert rebuilt.depth_limits == (1, 2, 1)
    assert rebuilt.arch["planes"] == [8, 16, 32] and rebuilt.arch["norm"] == "gn"


@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_pointwise_conv_equals_the_plain_strided_conv(channels_last):
    """The subsample-then-1x1 form (which avoids a broken oneDNN kernel) is the same function,
    with the same gradients, as torch's strided 1x1 convolution."""
    torch.manual_seed(0)
    conv = SlicedConv2d(16, 24, 1, stride=2, bias=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 16, 9, 9).contiguous(memory_format=fmt).requires_grad_()
    ours = conv(x[:, :5], 7)
    reference = F.conv2d(x[:, :5], conv.weight[:7, :5], conv.bias[:7], stride=2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), conv.weight)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), conv.weight)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-6)
    assert grad_ours[7:].abs().sum() == 0 and grad_ours[:, 5:].abs().sum() == 0
