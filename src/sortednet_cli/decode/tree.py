"""A tree of drafts for one round of greedy self-speculation (SpecInfer's token tree, grown as
EAGLE-2 grows it: by the draft's own cumulative probability).

A chain of drafts is lost at its first miss, and a shallow exit's top token misses often (a
quarter of the time at exit 3 of 12 on shakespeare_spec) while its top few nearly always hold
the full model's token (97% in the top 4): docs/performance.md, "Tree drafts". A tree keeps, at
every level, the `width` continuations with the highest cumulative draft log-probability, and
the full model verifies every node in one batched call per layer, each node attending to the
accepted prefix and its own ancestors only. At batch 1 and a small hidden size a layer call's
cost is mostly fixed, so a level of `width` nodes costs the draft little more than one token.

Node 0 is the round's input token; the nodes of level d (d = 1 .. depth) are drafts at position
start + d, numbered level by level, which is also the order their keys and values take in every
layer's cache (slots start + node). This module is the tree's bookkeeping on the device; the
layer calls are decode/engine.py's.
"""

from __future__ import annotations

from typing import Optional

import torch


class DraftTree:
    """The nodes drafted so far: their tokens and parents, and `rows`, every node's additive
    attention mask over the cache (the accepted prefix, then the tree's slots: 0 where the node
    may attend -- the prefix and its own ancestors, itself included -- the dtype's minimum
    elsewhere), written as the tree grows so that a layer call's mask is a view of it. `start`
    is the position (and cache slot) of node 0."""

    def __init__(self, start: int, width: int, depth: int, vocab_size: int, dtype: torch.dtype, device: torch.device):
        self.start = start
        self.width = min(width, vocab_size)
        self.capacity = 1 + self.width * depth
        self.tokens = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.parents = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.rows = torch.full((self.capacity, start + self.capacity), torch.finfo(dtype).min, dtype=dtype, device=device)
        self.rows[:, :start] = 0
        self.rows[0, start] = 0
        self.size = 1
        self._scores = torch.zeros(1, device=device)  # the deepest level's cumulative draft log-probabilities

    def positions(self) -> torch.Tensor:
        """The position of every node the tree can hold, [1, capacity]: start + its level."""
        positions = [self.start] + [self.start + 1 + node // self.width for node in range(self.capacity - 1)]
        return torch.tensor([positions], device=self.tokens.device)

    def level_nodes(self, level: int) -> tuple[int, int]:
        """(first node, node count) of a level; level 0 is node 0."""
        return (0, 1) if level == 0 else (1 + (level - 1) * self.width, self.width)

    def grow(self, logits: torch.Tensor) -> tuple[int, int]:
        """A new level from the draft's next-token logits [n, vocab] after each node of the
        deepest level: of every (node, token) pair, the `width` with the highest cumulative
        log-probability (a node's own top `width` first, so the candidates are few whatever
        the vocabulary). Returns the new level's (first node, count)."""
        top, tokens = torch.log_softmax(logits.float(), dim=-1).topk(self.width, dim=-1)
        self._scores, picked = (self._scores[:, None] + top).view(-1).topk(self.width)
        deepest = self.size - logits.shape[0]
        first, stop = self.size, self.size + self.width
        parents = picked // self.width + deepest
        self.tokens[first:stop] = tokens.view(-1)[picked]
        self.parents[first:stop] = parents
        self.rows[first:stop] = self.rows[parents]
        self.rows[first:stop, self.start + first:self.start + stop].fill_diagonal_(0)
        self.size = stop
        return first, self.width

    def mask(self, first: int, count: int, window: Optional[int], positions: torch.Tensor) -> torch.Tensor:
        """The mask [1, 1, count, start + first + count] of a layer call over nodes first ..
        first + count - 1, the newest in the cache; for a sliding-window layer also hiding keys
        `window` or more positions behind the query (`positions`: every node's, from positions())."""
        mask = self.rows[first:first + count, :self.start + first + count]
        if window is not None:
            keys = torch.cat([torch.arange(self.start, device=mask.device), positions[0, :first + count]])
            outside = keys[None] <= positions[0, first:first + count, None] - window
            mask = mask.masked_fill(outside, torch.finfo(mask.dtype).min)
        return mask[None, None]

    def accepted(self, full_tokens: torch.Tensor) -> tuple[list[int], list[int]]:
        """Greedy verification, given the full model's next token after every node: from node 0,
        follow the child whose token is the full model's choice while there is one. Returns the
        accepted nodes and the round's new tokens (theirs, then the full model's after the last).
        The round's one read-back."""
        size = self.size
        values = torch.cat([self.tokens[:size], self.parents[:size], full_tokens[:size]]).tolist()
        tokens, parents, full = values[:size], values[size:2 * size], values[2 * size:]
        children: dict[int, dict[int, int]] = {}
        for node in range(1, size):
            children.setdefault(parents[node], {})[tokens[node]] = node  # a node's children hold distinct tokens
        path, node = [], 0
        while full[node] in children.get(node, {}):
            node = children[node][full[node]]
            path.append(node)
        return path, [tokens[n] for n in path] + [full[node]]
