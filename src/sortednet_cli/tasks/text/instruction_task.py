"""`data=instructions`: instruction tuning of a decoder (SoFT's setting), the loss on the
response tokens only. The reader, templates and length policy are in instructions.py.

The metric is the mean response-token loss in nats/token (lower is better), with the perplexity
and `exact_match` beside it: the share of examples whose every response token (and the end of
sequence) is the model's greedy choice given the tokens before it, which is exactly the share
whose greedy generation reproduces the response.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import torch

from ...errors import UserError
from ...models import TextProfile
from ..registry import TASKS
from .batches import ShuffledBatches, ordered_batches
from .instructions import IGNORE, InstructionSet, prompt_ids, read_jsonl, resolve_template
from .lm_task import LossMeter, NextTokenLoss, decoder_fields


class Template(str, Enum):
    auto = "auto"  # the tokenizer's chat template where it has one, else plain
    chat = "chat"
    plain = "plain"


DEFAULT_MAX_LENGTH = 256  # tokens per example when data.max_length is null (and the context allows)


@dataclass
class InstructionDataConfig:
    name: str = "instructions"
    path: str = "data/instructions/train.jsonl"  # JSON Lines: {prompt, response[, system]} or {messages} (conf/data/: or $SORTEDNET_INSTRUCTIONS)
    val_path: Optional[str] = None  # a validation file; null: the last val_fraction of `path`
    val_fraction: float = 0.05
    prompt_field: str = "prompt"
    response_field: str = "response"
    system_field: str = "system"
    messages_field: str = "messages"
    template: Template = Template.auto
    # Tokens per example (longer ones keep their first max_length; a prompt that fills it is refused);
    # null: DEFAULT_MAX_LENGTH, or the model's context where that is shorter.
    max_length: Optional[int] = None
    vocab_size: int = 2000  # of the byte-level BPE trained here when the model has no tokenizer
    eval_examples: int = 0  # validation examples evaluated; 0 = all


class ResponseMeter(LossMeter):
    """The response-token loss, and the share of examples answered exactly by greedy choice."""

    def __init__(self):
        super().__init__()
        self.exact = 0
        self.examples = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        super().update(logits, targets)
        right = (logits.argmax(dim=-1) == targets) | (targets == IGNORE)
        self.exact += right.all(dim=1).sum()
        self.examples += targets.shape[0]

    def details(self) -> dict:
        return {**super().details(), "exact_match": int(self.exact) / max(1, self.examples)}


@TASKS.register("instructions", schema=InstructionDataConfig)
class InstructionTuning(NextTokenLoss):
    name = "instruction_tuning"

    def __init__(self, data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None):
        self.cfg = data_cfg
        self.profile = TextProfile.for_task(model_cfg, state)
        self.device = device
        self.saved = state or {}
        if not 0 < data_cfg.val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1) (got {data_cfg.val_fraction})")
        self.max_length = self._max_length(data_cfg.max_length, self.profile.max_length)
        if data_cfg.eval_examples < 0:
            raise UserError(f"data.eval_examples must be >= 0 (got {data_cfg.eval_examples})")

    @staticmethod
    def _max_length(asked: Optional[int], context: Optional[int]) -> int:
        if asked is None:
            return DEFAULT_MAX_LENGTH if context is None else min(DEFAULT_MAX_LENGTH, context)
        if asked < 2:
            raise UserError(f"data.max_length must be >= 2 (got {asked})")
        if context is not None and asked > context:
            raise UserError(f"data.max_length={asked} is longer than the model's context of {context}")
        return asked

    @functools.cached_property
    def _examples(self):
        train = read_jsonl(Path(self.cfg.path), self.cfg)
        if self.cfg.val_path:
            return train, read_jsonl(Path(self.cfg.val_path), self.cfg)
        held_out = max(1, int(len(train) * self.cfg.val_fraction))
        if held_out >= len(train):
            raise UserError(f"{self.cfg.path} holds {len(train)} examples: too few to hold out a validation fraction; give data.val_path")
        return train[:-held_out], train[-held_out:]

    @functools.cached_property
    def tokenizer(self):
        from .tokenizers import task_tokenizer, train_byte_bpe

        def scratch():
            if self.cfg.vocab_size < 257:
                raise UserError(f"data.vocab_size={self.cfg.vocab_size}: the byte-level BPE needs at least 257 (256 bytes and <|endoftext|>)")
            texts = [content for example in self._examples[0] for _, content in example.turns]
            return train_byte_bpe(texts, self.cfg.vocab_size, roberta=False)

        return task_tokenizer(self.saved.get("tokenizer"), self.profile.pretrained, scratch)

    @functools.cached_property
    def template(self) -> str:
        """The template this run renders with (saved: a resumed run and generate use the same)."""
        return self.saved.get("template") or resolve_template(self.tokenizer, self.cfg.template.value)

    @functools.cached_property
    def train(self) -> InstructionSet:
        return InstructionSet.encode(self.tokenizer, self.template, self._examples[0], self.max_length)

    @functools.cached_property
    def eval(self) -> InstructionSet:
        return InstructionSet.encode(self.tokenizer, self.template, self._examples[1], self.max_length)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.tokenizer.eos_token_id or 0)

    def state(self) -> dict:
        from .tokenizers import tokenizer_state

        return {"tokenizer": tokenizer_state(self.tokenizer), "profile": dataclasses.asdict(self.profile), "template": self.template}

    def model_fields(self) -> dict:
        return decoder_fields(self.tokenizer)

    def model_fields_without_data(self) -> dict:
        """A tokenizer to be trained here is not trained: the vocabulary is data.vocab_size; a
        saved or pretrained one is used."""
        from .tokenizers import train_byte_bpe

        if "tokenizer" in self.saved or self.profile.pretrained:
            return self.model_fields()
        return decoder_fields(train_byte_bpe([], self.cfg.vocab_size, roberta=False), self.cfg.vocab_size)

    def describe(self) -> str:
        return (f"{len(self.train)} instruction examples of {Path(self.cfg.path).name} ({self.train.response_tokens()} response tokens, "
                f"{self.template} template)")

    def train_batches(self, batch_size: int, seed: int) -> ShuffledBatches:
        if len(self.train) < batch_size:
            raise UserError(f"trainer.batch_size={batch_size} is larger than the {len(self.train)} training examples")
        return ShuffledBatches(self.train, batch_size, seed, self.pad_id, self.device)

    def _eval_count(self) -> Optional[int]:
        return self.cfg.eval_examples or None

    def eval_batches(self, batch_size: int) -> Iterator:
        return ordered_batches(self.eval, batch_size, self.pad_id, self.device, self._eval_count())

    def calib_batches(self, batch_size: int, count: int) -> Iterator:
        return ordered_batches(self.train, batch_size, self.pad_id, self.device, count)

    def calib_size(self, count: int) -> int:
        return min(count, len(self.train))

    def eval_size(self) -> int:
        return min(len(self.eval), self._eval_count() or len(self.eval))

    def eval_fingerprint(self) -> str:
        return f"{self.cfg.val_path or self.cfg.path}|{self.template}|{self.eval_size()} examples|{int(self.eval.ids.sum())}"

    def prompt_windows(self, count: int, length: int) -> list[list[int]]:
        """The prompts of the first `count` validation examples (their last `length` tokens)."""
        examples = self._examples[1]
        if count < 1 or length < 1 or count > len(examples):
            raise UserError(f"bench.prompt_count={count} must be in 1..{len(examples)} (the validation examples) and bench.prompt_tokens >= 1")
        return [prompt_ids(self.tokenizer, self.template, example.prompt_turns)[-length:] for example in examples[:count]]

    def example_input(self, batch_size: int):
        inputs, _ = self.eval.batch(torch.zeros(1, dtype=torch.long), self.pad_id, self.device)
        return type(inputs)(inputs.input_ids.repeat(batch_size, 1), inputs.attention_mask.repeat(batch_size, 1))

    def example_input_without_data(self, batch_size: int):
        """Examples of the longest length kept (data.max_length as resolved)."""
        from ...models.transformer import TokenBatch

        ids = torch.zeros(batch_size, self.max_length, dtype=torch.long, device=self.device)
        return TokenBatch(ids, torch.ones_like(ids))

    def meter(self) -> ResponseMeter:
        return ResponseMeter()
