"""Language modelling on one text file (Tiny Shakespeare by default) for the decoder family.

nanoGPT's setting: the first 90% of the characters train, the last 10% validate; training
batches are random windows, evaluation reads the validation split as consecutive windows so
every token is predicted once. The metric is the mean next-token loss in nats per token (lower
is better); the grid shows the perplexity beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ...errors import UserError
from ...models import TextProfile
from ...sorted.distill import kl_soft_loss
from ..base import Metric
from ..registry import TASKS
from .batches import WindowBatches, stream_windows
from .instructions import IGNORE

LOSS = Metric("loss", higher_is_better=False, lower=0.0)
# The byte-level BPE starts from its alphabet, the 256 bytes, and <|endoftext|>: no fewer tokens.
BYTE_BPE_MIN_VOCAB = 257


class TokenizerKind(str, Enum):
    char = "char"
    bpe = "bpe"


@dataclass
class TextDataConfig:
    name: str = "text"
    path: str = "data/tinyshakespeare/input.txt"  # UTF-8 text (conf/data/: or $SORTEDNET_TEXT)
    tokenizer: TokenizerKind = TokenizerKind.char  # char: the text's own characters; bpe: byte-level BPE trained here
    vocab_size: int = 512  # of the byte-level BPE tokenizer (char: the text's own characters)
    block_size: int = 128  # tokens per training window (at most model.context)
    val_fraction: float = 0.1  # the last part of the text, by position
    eval_windows: int = 0  # validation windows evaluated; 0 = the whole split


class LossMeter:
    """Mean next-token loss over every evaluated token with a target (targets equal to IGNORE
    carry none: an instruction's prompt, padding), summed on the device and read once."""

    def __init__(self):
        self.total = 0.0
        self.tokens = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum", ignore_index=IGNORE)
        self.tokens += (targets != IGNORE).sum()

    def value(self) -> float:
        return float(self.total) / max(1, int(self.tokens))

    def details(self) -> dict:
        return {"perplexity": math.exp(min(self.value(), 50.0))}


def decoder_fields(tokenizer, vocab_size: Optional[int] = None) -> dict:
    """What a decoder task decides about the model: its tokenizer's size (or `vocab_size`) and ids."""
    return {"vocab_size": len(tokenizer) if vocab_size is None else vocab_size, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}


class NextTokenLoss:
    """What the decoder tasks share: the mean next-token loss (lower is better) over the tokens
    with a target, its soft-target form for distillation, its meter."""

    kind = "language_modeling"
    metric = LOSS
    memory_format = torch.contiguous_format
    eval_name = "val"

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)

    def soft_loss(self, logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return kl_soft_loss(logits, teacher, temperature)

    def meter(self) -> LossMeter:
        return LossMeter()


@TASKS.register("text", schema=TextDataConfig)
class LanguageModeling(NextTokenLoss):
    name = "language_modeling"

    def __init__(self, data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None):
        self.cfg = data_cfg
        self.profile = TextProfile.for_task(model_cfg, state)
        self.device = device
        self.saved_tokenizer = (state or {}).get("tokenizer")
        if not 0 < data_cfg.val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1) (got {data_cfg.val_fraction})")
        if data_cfg.block_size < 1:
            raise UserError(f"data.block_size must be >= 1 (got {data_cfg.block_size})")
        context = self.profile.max_length
        if context is not None and data_cfg.block_size > context:
            where = f"model.pretrained={self.profile.pretrained}" if self.profile.pretrained else f"model.context={context}"
            raise UserError(f"data.block_size={data_cfg.block_size} is longer than the model's context of {context} ({where})")
        trains_bpe = data_cfg.tokenizer == TokenizerKind.bpe and self.saved_tokenizer is None and not self.profile.pretrained
        if trains_bpe and data_cfg.vocab_size < BYTE_BPE_MIN_VOCAB:
            raise UserError(f"data.vocab_size must be >= {BYTE_BPE_MIN_VOCAB} for data.tokenizer=bpe, its 256 bytes and <|endoftext|> (got {data_cfg.vocab_size})")

    @functools.cached_property
    def text(self) -> str:
        path = Path(self.cfg.path)
        if not path.is_file():
            raise UserError(f"data.path={path}: no such file (Tiny Shakespeare: ../shared/data/tinyshakespeare/input.txt here, or any UTF-8 text file)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"data.path={path} is not UTF-8 text") from None
        if len(text) < 100:
            raise UserError(f"data.path={path} holds {len(text)} characters: too little text to train on")
        return text

    @property
    def split_at(self) -> int:
        return int(len(self.text) * (1 - self.cfg.val_fraction))

    @functools.cached_property
    def tokenizer(self):
        # Deferred: the tokenizers stack costs half a second to import, which image runs skip.
        from .tokenizers import build_char_tokenizer, task_tokenizer, train_byte_bpe

        def scratch():
            if self.cfg.tokenizer == TokenizerKind.char:
                return build_char_tokenizer(self.text)
            return train_byte_bpe([self.text[: self.split_at]], self.cfg.vocab_size, roberta=False)

        return task_tokenizer(self.saved_tokenizer, self.profile.pretrained, scratch)

    def _stream(self, text: str) -> torch.Tensor:
        from .tokenizers import tokenizer_kind, unknown_characters

        # A character tokenizer has no unknown token: a saved one meeting another text's new
        # characters would end in the library's error, not a line naming them.
        unknown = unknown_characters(self.tokenizer, text) if tokenizer_kind(self.tokenizer) == "char" else []
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 20 else "")
            raise UserError(f"data.path={self.cfg.path} has characters this run's character tokenizer has never seen: {shown}; "
                            "use text written in the characters it trained on, or train a new run on this text")
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    @functools.cached_property
    def train_stream(self) -> torch.Tensor:
        stream = self._stream(self.text[: self.split_at])
        if len(stream) <= self.cfg.block_size + 1:
            raise UserError(f"the training split has {len(stream)} tokens, fewer than data.block_size + 2 = {self.cfg.block_size + 2}")
        return stream

    @functools.cached_property
    def val_stream(self) -> torch.Tensor:
        stream = self._stream(self.text[self.split_at:])
        if len(stream) <= self.cfg.block_size + 1:
            raise UserError(f"the validation split has {len(stream)} tokens, fewer than data.block_size + 2; raise data.val_fraction")
        return stream

    def state(self) -> dict:
        from .tokenizers import tokenizer_state

        return {"tokenizer": tokenizer_state(self.tokenizer), "profile": dataclasses.asdict(self.profile)}

    def model_fields(self) -> dict:
        return decoder_fields(self.tokenizer)

    def model_fields_without_data(self) -> dict:
        """A tokenizer to be trained here is not trained: the vocabulary is data.vocab_size (a
        character tokenizer has no special tokens); a saved or pretrained one is used."""
        from .tokenizers import train_byte_bpe

        if self.saved_tokenizer is not None or self.profile.pretrained:
            return self.model_fields()
        if self.cfg.tokenizer == TokenizerKind.char:
            return {"vocab_size": self.cfg.vocab_size, "eos_token_id": None, "bos_token_id": None}
        return decoder_fields(train_byte_bpe([], self.cfg.vocab_size, roberta=False), self.cfg.vocab_size)

    def describe(self) -> str:
        return f"{len(self.train_stream)} training tokens of {Path(self.cfg.path).name} ({self.cfg.tokenizer.value} tokenizer)"

    def train_batches(self, batch_size: int, seed: int) -> WindowBatches:
        return WindowBatches(self.train_stream, self.cfg.block_size, batch_size, seed, self.device)

    def _eval_windows(self) -> Optional[int]:
        return self.cfg.eval_windows or None

    def eval_batches(self, batch_size: int) -> Iterator:
        return stream_windows(self.val_stream, self.cfg.block_size, batch_size, self.device, self._eval_windows())

    def calib_batches(self, batch_size: int, count: int) -> Iterator:
        return stream_windows(self.train_stream, self.cfg.block_size, batch_size, self.device, count)

    def calib_size(self, count: int) -> int:
        return min(count, (len(self.train_stream) - 1) // self.cfg.block_size)

    def eval_size(self) -> int:
        windows = (len(self.val_stream) - 1) // self.cfg.block_size
        return min(windows, self._eval_windows() or windows)

    def eval_fingerprint(self) -> str:
        return f"{self.cfg.path}|val {len(self.val_stream)} tokens|{self.cfg.block_size}|{self.eval_size()}|{int(self.val_stream.sum())}"

    def prompt_windows(self, count: int, length: int) -> list[list[int]]:
        stream = self.val_stream
        if count < 1 or length < 1 or len(stream) < count * length:
            raise UserError(f"bench.prompt_count={count} and bench.prompt_tokens={length} must be >= 1 and fit the {len(stream)} validation tokens")
        step = (len(stream) - length) // count
        return [stream[i * step:i * step + length].tolist() for i in range(count)]

    def example_input(self, batch_size: int):
        from ...models.transformer import TokenBatch

        return TokenBatch(self.val_stream[: self.cfg.block_size].repeat(batch_size, 1).to(self.device))

    def example_input_without_data(self, batch_size: int):
        """Windows of data.block_size tokens, as example_input's."""
        from ...models.transformer import TokenBatch

        return TokenBatch(torch.zeros(batch_size, self.cfg.block_size, dtype=torch.long, device=self.device))
