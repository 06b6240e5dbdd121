import copy

import pytest

import torch
import torch.nn.functional as F

from sortednet_cli.models.preresnet import cpreresnet
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.sorted.update import plain_loss, sorted_update

CE = plain_loss(F.cross_entropy)


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
    losses = sorted_update(model, opt, ((sub, xs[i], ys[i]) for i in range(3)), 3, CE)
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
    sorted_update(model, sgd(model), [(sub, x, y)] * 4, 4, CE)
    sorted_update(twin, sgd(twin), [(sub, x, y)], 1, CE)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_draws_of_different_sub_models_train_the_union_of_their_slices():
    torch.manual_seed(0)
    model = cpreresnet(2, "bn", 10, 8)
    before = model.stem.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no weight decay: untouched stays untouched
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sorted_update(model, opt, [(SubModel(0.25, (1, 1, 1)), x, y), (SubModel(0.5, (1, 1, 1)), x, y)], 2, CE)
    changed = (model.stem.weight != before).flatten(1).any(1)
    assert changed[:8].all() and not changed[8:].any()


def test_inplace_distillation_teaches_the_other_draws_with_the_largest_predictions():
    """The largest draw learns from the labels, the others from its detached outputs: with
    temperature 1 and alpha 0 a student's gradient is that of KL(teacher || student) alone, and
    the teacher's outputs get no gradient from the students."""
    from sortednet_cli.sorted.distill import InplaceDistillation
    from sortednet_cli.tasks.image.task import ImageClassification

    torch.manual_seed(0)
    model = cpreresnet(2, "gn", 10, 8)
    twin = copy.deepcopy(model)
    largest, student = SubModel(1.0, (2, 2, 2)), SubModel(0.5, (1, 1, 1))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    soft = ImageClassification.soft_loss
    distill = InplaceDistillation(largest, F.cross_entropy, lambda o, t, temp: soft(None, o, t, temp), 1.0, 0.0)
    sorted_update(model, torch.optim.SGD(model.parameters(), lr=0.1), [(largest, x, y), (student, x, y)], 2, distill)

    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    opt.zero_grad()
    teacher = twin(x, largest)
    student_log = F.log_softmax(twin(x, student), 1)
    kl = (F.softmax(teacher.detach(), 1) * (F.log_softmax(teacher.detach(), 1) - student_log)).sum(1).mean()
    ((F.cross_entropy(teacher, y) + kl) / 2).backward()
    opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_soft_target_loss_is_the_mean_kl_per_row_times_t_squared_for_classes_and_tokens():
    """One soft-target loss for every task: rows of classes (image, GLUE) and (batch, position)
    rows of a vocabulary (language models) both give T^2 x the mean over rows of
    KL(teacher || student) at temperature T."""
    from sortednet_cli.sorted.distill import kl_soft_loss

    torch.manual_seed(0)
    for shape in [(4, 10), (2, 3, 7)]:
        student, teacher = torch.randn(shape), torch.randn(shape)
        t = 2.0
        p, log_p, log_q = F.softmax(teacher / t, -1), F.log_softmax(teacher / t, -1), F.log_softmax(student / t, -1)
        expected = (p * (log_p - log_q)).sum(-1).mean() * t**2
        torch.testing.assert_close(kl_soft_loss(student, teacher, t), expected)
    assert float(kl_soft_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_inplace_distillation_refuses_a_student_before_its_teacher():
    from sortednet_cli.errors import UserError
    from sortednet_cli.sorted.distill import InplaceDistillation

    distill = InplaceDistillation(SubModel(1.0, (2, 2, 2)), F.cross_entropy, lambda o, t, temp: o.sum(), 1.0, 0.0)
    with pytest.raises(UserError, match="before the largest sub-model"):
        distill(SubModel(0.5, (1, 1, 1)), torch.zeros(2, 10), torch.zeros(2, dtype=torch.long))
