"""data=instructions: the JSON Lines reader, the templates, which tokens carry loss, padding,
the length policy and bad input on hand-written rows; then a tiny decoder instruction-tuned
through train (the grid's exact_match), an exact resume, and generate with the template."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from sortednet_cli.engine.checkpoint import load_checkpoint
from sortednet_cli.engine.train import train
from sortednet_cli.errors import UserError
from sortednet_cli.tasks.text.instruction_task import ResponseMeter
from sortednet_cli.tasks.text.instructions import IGNORE, InstructionSet, parse_example, prompt_ids, read_jsonl, resolve_template, segments
from sortednet_cli.tasks.text.tokenizers import build_char_tokenizer, tokenizer_from_state, tokenizer_state, train_byte_bpe

from conftest import interrupt_at_update, TINY_TEXT_TRAINING, compose_config, run_cli

FIELDS = SimpleNamespace(prompt_field="prompt", response_field="response", system_field="system", messages_field="messages")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
REVIEWS = [("a charming and often affecting journey", "positive"), ("a dull , lifeless mess", "negative"),
           ("the best film of the year", "positive"), ("boring and far too long", "negative"), ("warm , funny and wise", "positive"),
           ("a tedious , joyless slog", "negative"), ("it is a delight", "positive"), ("it is a chore", "negative")]


def write_jsonl(path, rows) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe(["### Instruction:\n### Response:\n", *[t for pair in REVIEWS for t in pair]], 300, roberta=False)


def test_plain_template_and_masks(tokenizer):
    example = parse_example({"prompt": "Review: it is a delight", "response": "positive", "system": "Be brief."}, FIELDS, "f:1")
    pieces = segments(tokenizer, "plain", example.turns)
    assert pieces == [("Be brief.\n\n", False), ("### Instruction:\nReview: it is a delight\n\n", False), ("### Response:\n", False),
                      ("positive<|endoftext|>", True)]
    data = InstructionSet.encode(tokenizer, "plain", [example], max_length=200)
    text = tokenizer.decode(data.ids.tolist())
    assert text == "Be brief.\n\n### Instruction:\nReview: it is a delight\n\n### Response:\npositive<|endoftext|>"
    assert tokenizer.decode(data.ids[data.loss].tolist()) == "positive<|endoftext|>"  # only the response (and its end) learns
    # Generation is prompted with exactly the tokens before the response.
    prompt = prompt_ids(tokenizer, "plain", example.prompt_turns)
    assert data.ids[: len(prompt)].tolist() == prompt and not data.loss[: len(prompt)].any()


def test_chat_template_masks_every_assistant_turn(tokenizer):
    tokenizer = tokenizer_from_state(tokenizer_state(tokenizer))
    tokenizer.chat_template = CHAT_TEMPLATE
    assert resolve_template(tokenizer, "auto") == "chat"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bye"}]
    example = parse_example({"messages": messages}, FIELDS, "f:1")
    pieces = segments(tokenizer, "chat", example.turns)
    assert [text for text, loss in pieces if loss] == ["hello<|end|>", "bye<|end|>"]
    assert "".join(text for text, _ in pieces) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer_from_state(tokenizer_state(tokenizer)).chat_template == CHAT_TEMPLATE  # checkpoints keep it


def test_padding_targets_and_the_length_policy(tokenizer):
    rows = [parse_example({"prompt": p, "response": r}, FIELDS, f"f:{i}") for i, (p, r) in enumerate(REVIEWS[:3], 1)]
    data = InstructionSet.encode(tokenizer, "plain", rows, max_length=200)
    inputs, targets = data.batch(torch.tensor([0, 1]), pad_id=0, device=torch.device("cpu"))
    lengths = data.lengths()[:2]
    assert inputs.input_ids.shape == (2, int(lengths.max()) - 1)  # dynamic padding: the longer row decides
    assert inputs.attention_mask.sum(dim=1).tolist() == lengths.clamp(max=int(lengths.max()) - 1).tolist()  # real tokens only
    for row in range(2):  # a target where the next token is a response token, IGNORE elsewhere (prompt, padding)
        start = int(data.offsets[row])
        expected = [int(data.ids[start + i + 1]) if data.loss[start + i + 1] else IGNORE for i in range(int(lengths[row]) - 1)]
        assert targets[row, : len(expected)].tolist() == expected and (targets[row, len(expected):] == IGNORE).all()
    prompt_length = len(prompt_ids(tokenizer, "plain", rows[0].prompt_turns))
    cut = InstructionSet.encode(tokenizer, "plain", rows[:1], max_length=prompt_length + 1)
    assert len(cut.ids) == prompt_length + 1 and cut.loss.sum() == 1  # the response's end is cut
    with pytest.raises(UserError, match=f"f:1: the prompt is {prompt_length} tokens, which leaves no room for a response within data.max_length={prompt_length}"):
        InstructionSet.encode(tokenizer, "plain", rows[:1], max_length=prompt_length)


def test_exact_match_is_greedy_reproduction():
    meter = ResponseMeter()
    targets = torch.tensor([[IGNORE, 2, 3], [IGNORE, 1, IGNORE]])
    logits = torch.full((2, 3, 5), -1.0)
    logits[0, 1, 2] = logits[0, 2, 3] = 1.0  # row 0: every response token is the argmax
    logits[1, 1, 4] = 1.0  # row 1: wrong
    meter.update(logits, targets)
    assert meter.details()["exact_match"] == 0.5 and int(meter.tokens) == 3


@pytest.mark.parametrize("row,message", [
    ("{not json", "data.jsonl:2: not JSON"),
    ({"prompt": "x"}, "data.jsonl:2: no 'response' field"),
    ({"prompt": "x", "response": "  "}, "data.jsonl:2: the response ('response') is empty"),
    ({"messages": [{"role": "user", "content": "x"}]}, "data.jsonl:2: the messages have no assistant turn"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "data.jsonl:2: message 1 has role 'robot'"),
    ({"prompt": 3, "response": "y"}, "data.jsonl:2: field 'prompt' must be a string"),
])
def test_bad_rows_name_their_file_and_line(tmp_path, row, message):
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "ok", "response": "fine"}, row])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jsonl(tmp_path / "data.jsonl", FIELDS)


def test_a_chat_template_asked_of_a_tokenizer_without_one():
    with pytest.raises(UserError, match="data.template=chat: this model's tokenizer has no chat template"):
        resolve_template(build_char_tokenizer("abc"), "chat")


@pytest.fixture
def instructions(tmp_path):
    rows = [{"prompt": f"Review: {text}\nSentiment:", "response": label} for text, label in REVIEWS * 12]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", rows[:8])
    return tmp_path


def instruction_overrides(root, *extra):
    return ["model=decoder", "data=instructions", f"data.path={root / 'train.jsonl'}", f"data.val_path={root / 'val.jsonl'}",
            "data.max_length=96", "data.vocab_size=300", "model.layers=2", "model.hidden=32", "model.heads=2", "model.ffn=64",
            "model.context=96", "pool=exits_tiny", *TINY_TEXT_TRAINING, *extra]


def quiet():
    return Console(file=io.StringIO(), width=120)


def test_instruction_tuning_trains_resumes_exactly_and_generates_with_its_template(instructions, tmp_path, monkeypatch, capsys):
    overrides = instruction_overrides(instructions, "optim.lr=3e-3", "trainer.epochs=2", "trainer.log_every=2")
    straight = train(compose_config("train", overrides), tmp_path / "straight", console=quiet())
    with open(straight.run_dir / "grid.csv") as f:
        header = f.readline().strip().split(",")
    assert {"loss", "perplexity", "exact_match"} <= set(header)

    interrupt_at_update(monkeypatch, 5)
    assert train(compose_config("train", [*overrides, "trainer.eval_grid=false"]), tmp_path / "stopped", console=quiet()).interrupted
    monkeypatch.undo()
    train(compose_config("train", [*overrides, "trainer.eval_grid=false", f"resume={tmp_path / 'stopped'}"]), tmp_path / "x", console=quiet())
    a, b = load_checkpoint(straight.run_dir), load_checkpoint(tmp_path / "stopped")
    assert a["step"] == b["step"] and a["task"] == b["task"] and a["task"]["template"] == "plain"
    assert all(torch.equal(tensor, b["model"][name]) for name, tensor in a["model"].items())

    code, out, err = run_cli(["generate", f"checkpoint={straight.run_dir}", "prompt='Review: it is a delight'", "generate.chat=true",
                              "generate.max_new_tokens=6", f"hydra.run.dir={tmp_path / 'g'}"], capsys)
    assert code == 0, err
    generation = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert 1 <= generation["stats"]["new_tokens"] <= 6
    code, _, err = run_cli(["generate", f"checkpoint={straight.run_dir}", "prompt=x", "threads=1", "generate.chat=true",
                            "generate.mode=speculative", "generate.max_new_tokens=4", f"hydra.run.dir={tmp_path / 'g2'}"], capsys)
    assert code == 0, err


def test_the_example_length_defaults_to_what_the_context_holds(instructions):
    """data.max_length: null is 256 tokens, or the decoder's context where shorter (the default
    decoder's is 128); a length given above the context is refused in one line."""
    from sortednet_cli.tasks import build_task

    def task_for(*extra):
        cfg = compose_config("train", ["model=decoder", "data=instructions", f"data.path={instructions / 'train.jsonl'}", *extra])
        return build_task(cfg.data, cfg.model, torch.device("cpu"))

    assert task_for().max_length == 128
    assert task_for("model.context=512").max_length == 256
    assert task_for("model.context=512", "data.max_length=300").max_length == 300
    with pytest.raises(UserError, match="data.max_length=300 is longer than the model's context of 128"):
        task_for("data.max_length=300")


def test_an_instruction_run_needs_a_decoder(instructions, tmp_path):
    with pytest.raises(UserError, match=r"data=instructions is language modeling, which model=bert does not do"):
        train(compose_config("train", ["model=bert", "data=instructions", f"data.path={instructions / 'train.jsonl'}"]), tmp_path / "r",
              console=quiet())
