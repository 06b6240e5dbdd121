import copy

import torch
import torch.nn.functional as F

from sortednet_cli.models.preresnet import cpreresnet
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.sorted.update import sorted_update


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_accumulated_draws_equal_one_step_on_the_mean_loss():
    # GroupNorm: the loss of a batch does not depend on the other samples, so g draws of
    # the same sub-model on g batches equal one draw on their concatenation.
    torch.manual_seed(0)
    model = cpreresnet(2, "gn", 10, 8)
    twin = copy.deepcopy(model)
    sub = SubModel(0.5, (1, 2, 1))
    xs, ys = torch.randn(3, 8, 3, 32, 32), torch.randint(0, 10, (3, 8))

    opt = sgd(model)
    losses = sorted_update(model, opt, ((sub, xs[i], ys[i]) for i in range(3)), 3, F.cross_entropy)
    twin_opt = sgd(twin)
    twin_opt.zero_grad()
    F.cross_entropy(twin(xs.flatten(0, 1), sub), ys.flatten()).backward()
    twin_opt.step()

    assert len(losses) == 3
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_same_batch_draws_of_one_sub_model_equal_a_single_draw():
    torch.manual_seed(0)
    model = cpreresnet(2, "bn", 10, 8)
    twin = copy.deepcopy(model)
    sub = SubModel(0.75, (2, 1, 2))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    sorted_update(model, sgd(model), [(sub, x, y)] * 4, 4, F.cross_entropy)
    sorted_update(twin, sgd(twin), [(sub, x, y)], 1, F.cross_entropy)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_draws_of_different_sub_models_train_the_union_of_their_slices():
    torch.manual_seed(0)
    model = cpreresnet(2, "bn", 10, 8)
    before = model.stem.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no weight decay: untouched stays untouched
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sorted_update(model, opt, [(SubModel(0.25, (1, 1, 1)), x, y), (SubModel(0.5, (1, 1, 1)), x, y)], 2, F.cross_entropy)
    changed = (model.stem.weight != before).flatten(1).any(1)
    assert changed[:8].all() and not changed[8:].any()
