"""GLUE sequence classification (and STS-B regression) for the encoder families.

The tokenizer is the pretrained model's own (`model.pretrained`), or one trained here on the
training split (WordPiece for bert, byte-level BPE for roberta). It is saved in the checkpoint
(`state()`), so eval-grid and export rebuild exactly the same one from a bare .pt.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ...errors import UserError
from ...models import TextProfile
from ...sorted.distill import kl_soft_loss
from ..registry import TASKS
from .batches import ShuffledBatches, TokenizedSet, ordered_batches
from .glue_data import GlueMeter, glue_metric, glue_spec, num_labels, read_split, split_file


class GlueSplit(str, Enum):
    val = "val"
    test = "test"


@dataclass
class GlueDataConfig:
    name: str = "glue"
    glue_task: str = "sst2"  # sst2 | cola | mrpc | qqp | qnli | rte | mnli | stsb | wnli
    root: str = "data/glue/sst2"  # the folder holding train.tsv and dev.tsv (or validation.tsv); conf/data/: or $SORTEDNET_GLUE
    eval_split: GlueSplit = GlueSplit.val  # val: the dev file; test: a labeled test.tsv
    vocab_size: int = 8000  # of a tokenizer trained here (ignored with model.pretrained)
    train_subset: int = 0  # the first N training rows; 0 = all


@TASKS.register("glue", schema=GlueDataConfig)
class GlueClassification:
    name = "glue"
    kind = "sequence_classification"
    memory_format = torch.contiguous_format

    def __init__(self, data_cfg, model_cfg, device: torch.device, state: Optional[dict] = None):
        self.cfg = data_cfg
        self.profile = TextProfile.for_task(model_cfg, state)
        self.spec = glue_spec(data_cfg.glue_task)
        self.metric = glue_metric(self.spec)
        self.device = device
        self.saved_tokenizer = (state or {}).get("tokenizer")
        if data_cfg.vocab_size < 100:
            raise UserError(f"data.vocab_size must be >= 100 (got {data_cfg.vocab_size})")
        if data_cfg.train_subset < 0:
            raise UserError(f"data.train_subset must be >= 0 (got {data_cfg.train_subset})")

    @property
    def eval_name(self) -> str:
        return self.cfg.eval_split.value

    @functools.cached_property
    def train_examples(self):
        examples = read_split(split_file(Path(self.cfg.root), self.spec, "train"), self.spec)
        if self.cfg.train_subset:
            n = self.cfg.train_subset
            examples = type(examples)(examples.text_a[:n], examples.text_b[:n] if examples.text_b else None, examples.labels[:n])
        return examples

    @functools.cached_property
    def tokenizer(self):
        # Deferred: the tokenizers stack costs half a second to import, which image runs skip.
        from .tokenizers import task_tokenizer

        def scratch():
            examples = self.train_examples
            return self._scratch_tokenizer(examples.text_a + (examples.text_b or []))

        return task_tokenizer(self.saved_tokenizer, self.profile.pretrained, scratch)

    def _scratch_tokenizer(self, texts: list[str]):
        from .tokenizers import train_byte_bpe, train_wordpiece

        if self.profile.scratch_tokenizer == "wordpiece":
            return train_wordpiece(texts, self.cfg.vocab_size)
        return train_byte_bpe(texts, self.cfg.vocab_size, roberta=True)

    def _encode(self, examples) -> TokenizedSet:
        return TokenizedSet.encode(self.tokenizer, examples.text_a, examples.text_b, examples.labels, self.max_length, self.profile.token_types)

    @property
    def max_length(self) -> int:
        return self.profile.max_length

    @functools.cached_property
    def train(self) -> TokenizedSet:
        return self._encode(self.train_examples)

    @functools.cached_property
    def eval(self) -> TokenizedSet:
        return self._encode(read_split(split_file(Path(self.cfg.root), self.spec, self.eval_name), self.spec))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def state(self) -> dict:
        from .tokenizers import tokenizer_state

        return {"tokenizer": tokenizer_state(self.tokenizer), "profile": dataclasses.asdict(self.profile)}

    def model_fields(self) -> dict:
        return self._fields(self.tokenizer, len(self.tokenizer))

    def model_fields_without_data(self) -> dict:
        """A tokenizer to be trained here is not trained: the vocabulary is data.vocab_size (its
        special tokens' ids are those of one trained on no text); a saved or pretrained one is used."""
        if self.saved_tokenizer is not None or self.profile.pretrained:
            return self.model_fields()
        return self._fields(self._scratch_tokenizer([]), self.cfg.vocab_size)

    def _fields(self, tokenizer, vocab_size: int) -> dict:
        return {
            "vocab_size": vocab_size,
            "num_labels": num_labels(self.spec),
            "pad_token_id": tokenizer.pad_token_id,
            "problem_type": "regression" if self.spec.is_regression else "single_label_classification",
        }

    def describe(self) -> str:
        return f"{len(self.train)} {self.spec.name} training examples"

    def train_batches(self, batch_size: int, seed: int) -> ShuffledBatches:
        if len(self.train) < batch_size:
            raise UserError(f"trainer.batch_size={batch_size} is larger than the {len(self.train)} training examples")
        return ShuffledBatches(self.train, batch_size, seed, self.pad_id, self.device)

    def eval_batches(self, batch_size: int) -> Iterator:
        return ordered_batches(self.eval, batch_size, self.pad_id, self.device)

    def calib_batches(self, batch_size: int, count: int) -> Iterator:
        return ordered_batches(self.train, batch_size, self.pad_id, self.device, count)

    def calib_size(self, count: int) -> int:
        return min(count, len(self.train))

    def eval_size(self) -> int:
        return len(self.eval)

    def eval_fingerprint(self) -> str:
        return f"{self.spec.name} {self.eval_name}: {len(self.eval)} rows|{float(self.eval.labels.float().sum())}|{int(self.eval.ids.sum())}"

    def example_input(self, batch_size: int):
        """Rows of the evaluation set's median length (what FLOPs and latency are counted on)."""
        return self._rows(batch_size, int(self.eval.lengths().float().median()), self.pad_id)

    def example_input_without_data(self, batch_size: int):
        """Rows of the longest input the model takes (model.max_length)."""
        return self._rows(batch_size, self.max_length, self.model_fields_without_data()["pad_token_id"])

    def _rows(self, batch_size: int, length: int, pad_id: int):
        from ...models.transformer import TokenBatch

        ids = torch.full((batch_size, length), pad_id + 1, dtype=torch.long, device=self.device)
        types = torch.zeros_like(ids) if self.spec.is_pair and self.profile.token_types else None
        return TokenBatch(ids, torch.ones_like(ids), types)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(outputs.squeeze(-1), targets)
        return F.cross_entropy(outputs, targets)

    def soft_loss(self, outputs: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(outputs, teacher)
        return kl_soft_loss(outputs, teacher, temperature)

    def meter(self) -> GlueMeter:
        return GlueMeter(self.spec)
