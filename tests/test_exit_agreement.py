"""Exits trained to agree with the full model (trainer.exit_weights, exit_curriculum,
layer_dropout, exit_distill_alpha): each option's gradient against a hand-written loss on a tiny
decoder; and the grid's agreement column against a hand computation."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from sortednet_cli.engine.train import train
from sortednet_cli.errors import UserError
from sortednet_cli.sorted.exits import AllExits, ExitTraining, dropped_blocks
from sortednet_cli.sorted.pool import build_pool
from sortednet_cli.sorted.submodel import SubModel

from conftest import TINY_TEXT_TRAINING, compose_config, tiny_text_overrides

LAYERS = 3
FULL = SubModel(1.0, (LAYERS,))


@pytest.fixture
def tiny():
    """A 3-layer LLaMA of hidden 32 (random weights), a batch and its next-token targets."""
    from transformers import LlamaConfig

    from sortednet_cli.models.transformer import TokenBatch, sorted_from_config

    torch.manual_seed(0)
    model = sorted_from_config(LlamaConfig(vocab_size=30, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=40))
    ids = torch.randint(0, 30, (2, 9))
    return model, TokenBatch(ids[:, :-1]), ids[:, 1:]


def ce(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def exits_of(training: ExitTraining) -> AllExits:
    from sortednet_cli.tasks.text.lm_task import NextTokenLoss

    return AllExits(build_pool("exits", [1.0], "all", (LAYERS,)), ce, NextTokenLoss().soft_loss, training)


def exit_logits(model, inputs, skipped=frozenset()):
    """Every exit by hand: the stem, the layers not skipped, the head after each layer."""
    state, logits = model.run_stem(inputs, 1.0), []
    for index in range(LAYERS):
        if (0, index) not in skipped:
            state = model.run_block(0, index, state, 1.0)
        logits.append(model.run_head(state, 1.0))
    return logits


def gradients(model, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]  # a dropped layer has none


def assert_same_gradient(model, exits: AllExits, step: int, draw: int, inputs, targets, hand_loss: torch.Tensor):
    hand = gradients(model, hand_loss)
    forward, loss_fn = exits.at_step(step)
    ours = gradients(model, loss_fn(FULL, forward(model, FULL, inputs, draw), targets).objective)
    for a, b in zip(ours, hand):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rising_weights_train_each_exit_in_proportion_to_its_depth(tiny):
    model, inputs, targets = tiny
    exits = exits_of(ExitTraining(weights="rising"))
    losses = [ce(out, targets) for out in exit_logits(model, inputs)]
    assert_same_gradient(model, exits, 0, 0, inputs, targets, (1 * losses[0] + 2 * losses[1] + 3 * losses[2]) / 6)


def test_the_curriculum_switches_exits_on_deepest_first_with_their_listed_weights(tiny):
    model, inputs, targets = tiny
    # Over the first half of 100 steps: exit 2 from step 25, exit 1 from step 50.
    exits = exits_of(ExitTraining(weights=(0.5, 1.0, 2.0), curriculum=0.5, total_steps=100))
    assert [exits.switched_on(1.0, step) for step in (0, 24, 25, 49, 50, 99)] == [
        [False, False, True], [False, False, True], [False, True, True], [False, True, True], [True, True, True], [True, True, True]]
    losses = lambda: [ce(out, targets) for out in exit_logits(model, inputs)]  # noqa: E731
    first, second, third = losses()
    assert_same_gradient(model, exits, 30, 0, inputs, targets, (1.0 * second + 2.0 * third) / 3)
    first, second, third = losses()
    assert_same_gradient(model, exits, 60, 0, inputs, targets, (0.5 * first + 1.0 * second + 2.0 * third) / 3.5)


def test_layer_dropout_rises_with_depth_and_is_a_pure_function_of_seed_step_and_draw():
    counts = [0] * 4
    draws = 4000
    for draw in range(draws):
        for _, index in dropped_blocks((4,), 0.6, 7, 3, draw):
            counts[index] += 1
    # p_i = 0.6 * i / 3: 0, 0.2, 0.4, 0.6 (4000 draws: a standard error under 0.008).
    assert counts[0] == 0
    for index in (1, 2, 3):
        assert abs(counts[index] / draws - 0.2 * index) < 0.03
    assert dropped_blocks((4,), 0.6, 7, 3, 11) == dropped_blocks((4,), 0.6, 7, 3, 11)
    assert len({dropped_blocks((4,), 0.6, seed, 3, 11) for seed in range(20)}) > 1
    assert dropped_blocks((4,), 0.0, 7, 3, 11) == frozenset()


def test_a_dropped_layer_is_the_identity_in_the_all_exits_forward(tiny):
    model, inputs, targets = tiny
    exits = exits_of(ExitTraining(layer_dropout=0.9, seed=3))
    step, draw = next((s, d) for s in range(50) for d in range(2) if dropped_blocks((LAYERS,), 0.9, 3, s, d))
    skipped = dropped_blocks((LAYERS,), 0.9, 3, step, draw)
    losses = [ce(out, targets) for out in exit_logits(model, inputs, skipped)]
    assert_same_gradient(model, exits, step, draw, inputs, targets, sum(losses) / 3)


def test_exit_self_distillation_adds_each_exit_kl_to_the_detached_full_model(tiny):
    model, inputs, targets = tiny
    alpha, temperature = 0.7, 2.0
    exits = exits_of(ExitTraining(distill_alpha=alpha, distill_temperature=temperature))
    logits = exit_logits(model, inputs)
    teacher = F.softmax(logits[-1].detach() / temperature, dim=-1)

    def kl(student):  # KL(teacher || student) per position at T, times T^2
        log_student = F.log_softmax(student / temperature, dim=-1)
        return (teacher * (teacher.log() - log_student)).sum(-1).mean() * temperature**2

    hand = sum(ce(out, targets) + alpha * kl(out) for out in logits[:-1]) + ce(logits[-1], targets)
    assert_same_gradient(model, exits, 0, 0, inputs, targets, hand / 3)


def test_the_logged_losses_are_each_exits_own(tiny):
    model, inputs, targets = tiny
    exits = exits_of(ExitTraining(weights="rising", distill_alpha=1.0, layer_dropout=0.0))
    with torch.no_grad():
        result = exits.loss(FULL, exits.forward(model, FULL, inputs), targets)
        expected = torch.stack([ce(out, targets) for out in exit_logits(model, inputs)])
    torch.testing.assert_close(result.per_exit, expected)


@pytest.mark.parametrize("override,message", [
    ("trainer.exit_weights=steep", "trainer.exit_weights must be uniform, rising or a list"),
    ("trainer.exit_weights=[1,2,3]", "trainer.exit_weights has 3 weights; the pool has 2 exits per width"),
    ("trainer.exit_weights=[1,2,0]", "the deepest's > 0"),
    ("trainer.exit_curriculum=1.0", "trainer.exit_curriculum must be in [0, 1)"),
    ("trainer.layer_dropout=-0.1", "trainer.layer_dropout must be in [0, 1)"),
    ("trainer.exit_distill_temperature=0", "trainer.exit_distill_temperature > 0"),
    ("trainer.objective=sampled", "they need trainer.objective=all_exits"),
])
def test_bad_exit_settings_are_one_line_before_training(tmp_path, glue_root, text_path, override, message):
    extra = [] if "objective" not in override else ["trainer.layer_dropout=0.1"]
    cfg = compose_config("train", [*tiny_text_overrides("llama", glue_root, text_path), *TINY_TEXT_TRAINING, "pool=exits", override, *extra])
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(cfg, tmp_path / "run", console=Console(file=io.StringIO()))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_training_with_every_option_logs_each_exit(tmp_path, glue_root, text_path):
    cfg = compose_config("train", [*tiny_text_overrides("llama", glue_root, text_path), *TINY_TEXT_TRAINING, "pool=exits", "trainer.max_steps=4",
                                   "trainer.eval_grid=false", "trainer.exit_weights=rising", "trainer.exit_curriculum=0.5",
                                   "trainer.layer_dropout=0.5", "trainer.exit_distill_alpha=1.0"])
    result = train(cfg, tmp_path / "run", console=Console(file=io.StringIO()))
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 * 2  # two exits logged per step, switched on or not


def test_grid_agreement_is_the_full_models_teacher_forced_agreement_with_each_sub_models_greedy_text(glue_root, text_path, monkeypatch):
    from sortednet_cli.engine import eval_grid
    from sortednet_cli.models import build_model
    from sortednet_cli.models.transformer import TokenBatch
    from sortednet_cli.tasks import build_task

    monkeypatch.setattr(eval_grid, "AGREEMENT_PROMPTS", 3)  # 48 generated tokens per sub-model
    cfg = compose_config("train", [*tiny_text_overrides("llama", glue_root, text_path), *TINY_TEXT_TRAINING])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, task.model_fields()).eval()
    prompts = task.prompt_windows(min(eval_grid.AGREEMENT_PROMPTS, task.eval_size()), eval_grid.AGREEMENT_PROMPT_TOKENS)
    context = model.config.max_position_embeddings
    for sub in (SubModel(1.0, (1,)), SubModel(0.5, (2,)), SubModel(1.0, (2,))):
        agreeing = total = 0
        with torch.no_grad():
            for prompt in prompts:
                ids = list(prompt)
                while len(ids) < min(len(prompt) + eval_grid.AGREEMENT_NEW_TOKENS, context):
                    token = int(model(TokenBatch(torch.tensor([ids])), sub)[0, -1].argmax())
                    agreeing += int(model(TokenBatch(torch.tensor([ids])))[0, -1].argmax()) == token
                    total += 1
                    ids.append(token)
        row = eval_grid.grid_row(model, sub, 0.0, 1.0, task, cfg.eval)
        assert row["agreement"] == round(agreeing / total, 4)
        if sub == SubModel(1.0, (2,)):
            assert row["agreement"] == 1.0
