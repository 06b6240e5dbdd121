"""Token batches: texts tokenized once into one flat tensor, padded per batch to its longest
row (dynamic padding), and language-model windows drawn reproducibly from (seed, epoch, index)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from ...models.transformer import TokenBatch


def padded_rows(flat: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor, pad_id: int):
    """Rows `rows` of a flat store (row i is flat[offsets[i]:offsets[i + 1]]) padded on the right
    to the longest of them: (ids, which positions are real, the flat index of each position)."""
    starts, lengths = offsets[rows], (offsets[1:] - offsets[:-1])[rows]
    position = torch.arange(int(lengths.max()))
    present = position[None, :] < lengths[:, None]
    gather = (starts[:, None] + position[None, :]).clamp(max=len(flat) - 1)
    return torch.where(present, flat[gather], pad_id), present, gather


@dataclass
class TokenizedSet:
    """Variable-length rows stored flat: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: torch.Tensor  # int64 [total tokens]
    types: Optional[torch.Tensor]  # token type ids, same shape, or None
    offsets: torch.Tensor  # int64 [rows + 1]
    labels: torch.Tensor  # int64 (classes) or float32 (regression) [rows]

    @classmethod
    def encode(cls, tokenizer, text_a: list[str], text_b: Optional[list[str]], labels: list, max_length: int,
               token_types: bool = True) -> "TokenizedSet":
        """`token_types`: keep the pairs' token type ids (for models that take them)."""
        encoded = tokenizer(text_a, text_b, truncation=True, max_length=max_length, return_token_type_ids=True)
        rows = encoded["input_ids"]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        ids = torch.tensor([t for r in rows for t in r], dtype=torch.long)
        types = None
        if token_types and text_b is not None and "token_type_ids" in encoded:
            types = torch.tensor([t for r in encoded["token_type_ids"] for t in r], dtype=torch.long)
        dtype = torch.float32 if labels and isinstance(labels[0], float) else torch.long
        return cls(ids, types, offsets, torch.tensor(labels, dtype=dtype))

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, rows: torch.Tensor, pad_id: int, device: torch.device) -> tuple[TokenBatch, torch.Tensor]:
        """Rows `rows` padded on the right to the longest of them."""
        ids, present, gather = padded_rows(self.ids, self.offsets, rows, pad_id)
        types = torch.where(present, self.types[gather], 0) if self.types is not None else None
        batch = TokenBatch(ids, present.long(), types)
        return batch.to(device), self.labels[rows].to(device)


class ShuffledBatches:
    """Training batches of a TokenizedSet, a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, data: TokenizedSet, batch_size: int, seed: int, pad_id: int, device: torch.device):
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.device = device
        self._order: tuple[int, torch.Tensor] = (-1, torch.empty(0))

    def __len__(self) -> int:
        return len(self.data) // self.batch_size  # full batches only, as for images

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.data), generator=gen))
        return self._order[1]

    def get(self, epoch: int, index: int, shard: slice = slice(None)) -> tuple[TokenBatch, torch.Tensor]:
        rows = self._epoch_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size][shard]
        return self.data.batch(rows, self.pad_id, self.device)


def ordered_batches(data: TokenizedSet, batch_size: int, pad_id: int, device: torch.device, count: Optional[int] = None) -> Iterator[tuple[TokenBatch, torch.Tensor]]:
    """The first `count` rows (all by default) in order, for evaluation and calibration."""
    total = len(data) if count is None else min(count, len(data))
    for start in range(0, total, batch_size):
        yield data.batch(torch.arange(start, min(start + batch_size, total)), pad_id, device)


class WindowBatches:
    """Language-model batches: random windows of block_size + 1 tokens of one long token
    stream (inputs = the first block_size, targets = the same shifted by one), drawn from a
    generator seeded by (seed, epoch, index), so any batch can be rebuilt for resuming. An
    epoch is as many windows as the stream holds tokens."""

    def __init__(self, stream: torch.Tensor, block_size: int, batch_size: int, seed: int, device: torch.device):
        self.stream = stream
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def __len__(self) -> int:
        return max(1, len(self.stream) // (self.block_size * self.batch_size))

    def get(self, epoch: int, index: int, shard: slice = slice(None)) -> tuple[TokenBatch, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
        starts = torch.randint(0, len(self.stream) - self.block_size, (self.batch_size,), generator=gen)[shard]
        windows = self.stream[starts[:, None] + torch.arange(self.block_size + 1)[None, :]]
        return TokenBatch(windows[:, :-1].to(self.device)), windows[:, 1:].to(self.device)


def stream_windows(stream: torch.Tensor, block_size: int, batch_size: int, device: torch.device, count: Optional[int] = None) -> Iterator[tuple[TokenBatch, torch.Tensor]]:
    """Consecutive non-overlapping windows of a stream (every token predicted once), in order."""
    total = (len(stream) - 1) // block_size
    total = total if count is None else min(count, total)
    for start in range(0, total, batch_size):
        rows = torch.arange(start, min(start + batch_size, total)) * block_size
        windows = stream[rows[:, None] + torch.arange(block_size + 1)[None, :]]
        yield TokenBatch(windows[:, :-1].to(device)), windows[:, 1:].to(device)
