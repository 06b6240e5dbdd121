"""Decoding with the exits of a sorted decoder: the full model, one exit, confidence-based early
exit and lossless self-speculation, all over one KV cache.

Sorted training makes every depth a usable LM with the shared final norm and head, so one set of
weights can draft, verify and exit early. That needs a cache whose layers hold different lengths
(a token that stopped at exit e has no keys/values above e), which the library's `generate` does
not keep; this module runs the library's own layers one at a time through the model's layout
(models/hf_layouts.py).

Batch size 1, full width. Greedy self-speculation is token-identical to greedy decoding of the
full model in float32 (lower precisions can flip near-ties between the batched verification and
the one-token-at-a-time reference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import UserError
from ..values import is_int, is_number
from ..models import hf_compat
from ..models import family_of
from ..models.transformer import SortedDecoder, TokenBatch

DraftLen = Union[int, str]
"""A fixed draft length (an int >= 1) or "auto" (the heuristic schedule, DraftSchedule)."""

Picker = Callable[[torch.Tensor], int]


@dataclass
class Generation:
    """The new token ids and how they were made. `stats` is JSON-able: mode, new_tokens, seconds
    and tokens_per_second (the wall time of the generation loop, prefill included), stop_reason
    ("max_new_tokens", "eos" or "context_limit", then also `context_limit`), plus the mode's own."""

    tokens: list[int]
    stats: dict = field(default_factory=dict)


class DraftSchedule:
    """The draft length of each speculative round. Fixed, or "auto": the library's "heuristic"
    schedule (transformers' num_assistant_tokens_schedule) -- start at `start`, +2 after a round
    whose drafts were all accepted (drafting further is cheap when the exit agrees), -1 otherwise
    (a rejected draft wasted its layers) -- bounded to [MIN, MAX] so one lucky streak cannot make
    a round draft far past the first likely rejection."""

    MIN, MAX = 1, 16

    def __init__(self, draft_len: DraftLen, start: int = 4):
        self.adaptive = draft_len == "auto"
        if self.adaptive:
            if not is_int(start) or not self.MIN <= start <= self.MAX:
                raise UserError(f"the auto draft length starts in {self.MIN}..{self.MAX}, not {start!r}")
            self.length = start
        elif not is_int(draft_len) or draft_len < 1:
            raise UserError(f"draft_len must be an int >= 1 or 'auto', not {draft_len!r}")
        else:
            self.length = draft_len

    def update(self, drafted: int, accepted: int) -> None:
        if not self.adaptive or drafted == 0:
            return
        step = 2 if accepted == drafted else -1
        self.length = min(self.MAX, max(self.MIN, self.length + step))


def check_request(prompt_ids: Sequence[int], max_new_tokens: int, context: int, vocab_size: int) -> tuple[list[int], int]:
    """The prompt as a list of ids, checked against the vocabulary and the context, and how many
    new tokens fit (max_new_tokens clipped to the context): every decoding path's checks."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise UserError("the prompt is empty: give at least one token")
    if any(not 0 <= t < vocab_size for t in prompt):
        raise UserError(f"the prompt holds token ids outside the vocabulary 0..{vocab_size - 1}")
    if len(prompt) > context:
        raise UserError(f"the prompt has {len(prompt)} tokens; the model's context is {context}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be an int >= 1, not {max_new_tokens!r}")
    return prompt, min(max_new_tokens, context - len(prompt))


def _greedy(logits: torch.Tensor) -> int:
    return int(logits.reshape(-1).argmax())


def _sampler(temperature: float, top_k: Optional[int], seed: int, device: torch.device) -> Picker:
    """Greedy at temperature 0; otherwise softmax(logits / T) over the top_k best, drawn from a
    generator seeded once per generation, so a seed reproduces the text."""
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, not {temperature}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise UserError(f"top_k must be an int >= 1, not {top_k!r}")
    if temperature == 0:
        return _greedy
    generator = torch.Generator(device=device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> int:
        scores = logits.reshape(-1).float() / temperature
        if top_k is not None and top_k < scores.numel():
            cutoff = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < cutoff, float("-inf"))
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))

    return pick


class ExitDecoder:
    """Batch-1 decoding over the full-width layers of a SortedDecoder, one layer at a time.

    The state of one generation is `cache` (a LayerCache whose layers may hold different lengths)
    and `waiting[j]`: the hidden states [1, n, hidden] entering layer j of the positions
    cache.length(j) .. cache.length(j - 1) - 1 (for j = 0: up to the last embedded position).
    Running layer j takes its whole queue in one batched call -- at positions starting at
    cache.length(j), under a causal mask over the cached keys -- writes their keys/values and
    appends the outputs to waiting[j + 1]. A position that stopped at an exit therefore waits at
    that exit, and the next token that goes deeper carries it through the layers it missed: its
    keys/values are computed exactly, from its own state, never copied from another layer.

    Call `model.eval()` first (dropout).
    """

    def __init__(self, model: SortedDecoder):
        if not family_of(model).decodes:
            raise UserError(f"decoding needs a model whose family decodes, not {type(model).__name__}")
        self.model = model
        self.hf = model.hf
        self.layers = model.layers
        self.num_layers = len(self.layers)
        self.context = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self._reset()

    # --- the state of one generation ---------------------------------------------------------

    def _reset(self) -> None:
        self.cache = hf_compat.LayerCache(self.num_layers)
        self.waiting: list[Optional[torch.Tensor]] = [None] * (self.num_layers + 1)
        self.fed = 0
        self._rotary_key: Optional[tuple[int, int]] = None
        self._rotary = None

    def _enqueue(self, level: int, hidden: torch.Tensor) -> None:
        queued = self.waiting[level]
        self.waiting[level] = hidden if queued is None else torch.cat([queued, hidden], dim=1)

    def _embed(self, token_ids: Sequence[int]) -> None:
        """New tokens join the queue of the first layer."""
        device = self.hf.device
        positions = torch.arange(self.fed, self.fed + len(token_ids), device=device)[None]
        hidden = self.model.embed(torch.tensor([list(token_ids)], device=device), positions)
        self._enqueue(0, hidden)
        self.fed += len(token_ids)

    def _position_embeddings(self, hidden: torch.Tensor, start: int, count: int):
        """Rotary (cos, sin) of positions start .. start+count-1; layers of one step share them."""
        if self._rotary_key != (start, count):
            positions = torch.arange(start, start + count, device=hidden.device)[None]
            self._rotary = self.model.positions(hidden, positions)
            self._rotary_key = (start, count)
        return self._rotary

    def _run_layer(self, index: int) -> None:
        """Layer `index` over every position waiting for it, in one call."""
        hidden = self.waiting[index]
        start, count = self.cache.length(index), hidden.shape[1]
        mask = self.model.layer_mask(index, None, count, start + count, hidden)
        out = self.model.run_layer(index, hidden, mask, self._position_embeddings(hidden, start, count), self.cache)
        self.waiting[index] = None
        self._enqueue(index + 1, out)

    def _climb(self, first: int, stop: int) -> None:
        """Run layers first .. stop-1 over whatever waits for them."""
        for index in range(first, stop):
            if self.waiting[index] is not None:
                self._run_layer(index)

    def _logits(self, depth: int, count: int) -> torch.Tensor:
        """Next-token logits [count, vocab] of the last `count` positions waiting at exit `depth`."""
        return self.model.logits(self.waiting[depth][:, -count:])[0]

    # --- checks and bookkeeping ----------------------------------------------------------------

    def _begin(self, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt as a list and how many tokens fit (max_new_tokens clipped to the context)."""
        prompt, limit = check_request(prompt_ids, max_new_tokens, self.context, self.vocab_size)
        self._reset()
        return prompt, limit

    def _check_exit(self, depth: int, name: str, highest: int) -> None:
        if not is_int(depth) or not 1 <= depth <= highest:
            raise UserError(f"{name} must be a layer count in 1..{highest} (the model has {self.num_layers} layers), not {depth!r}")

    def _finish(self, mode: str, tokens: list[int], started: float, requested: int, eos_id: Optional[int], **extra) -> Generation:
        seconds = time.perf_counter() - started
        stats = {"mode": mode, "new_tokens": len(tokens), "seconds": seconds,
                 "tokens_per_second": len(tokens) / seconds if seconds > 0 else 0.0}
        if eos_id is not None and tokens and tokens[-1] == eos_id:
            stats["stop_reason"] = "eos"
        elif len(tokens) < requested:
            stats["stop_reason"] = "context_limit"
            stats["context_limit"] = self.context
        else:
            stats["stop_reason"] = "max_new_tokens"
        stats.update(extra)
        return Generation(tokens, stats)

    # --- modes -----------------------------------------------------------------------------------

    @torch.no_grad()
    def full(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
             seed: int = 0, eos_id: Optional[int] = None) -> Generation:
        """The whole model: greedy, or sampled at `temperature` over the `top_k` best."""
        return self._single_exit("full", prompt_ids, max_new_tokens, self.num_layers, temperature, top_k, seed, eos_id)

    @torch.no_grad()
    def exit(self, prompt_ids: Sequence[int], max_new_tokens: int, exit_layer: int, temperature: float = 0.0,
             top_k: Optional[int] = None, seed: int = 0, eos_id: Optional[int] = None) -> Generation:
        """Exit `exit_layer` as its own LM: only its first layers run, deeper ones never do."""
        self._check_exit(exit_layer, "exit", self.num_layers)
        return self._single_exit("exit", prompt_ids, max_new_tokens, exit_layer, temperature, top_k, seed, eos_id)

    def _single_exit(self, mode: str, prompt_ids: Sequence[int], max_new_tokens: int, depth: int, temperature: float,
                     top_k: Optional[int], seed: int, eos_id: Optional[int]) -> Generation:
        prompt, limit = self._begin(prompt_ids, max_new_tokens)
        pick = _sampler(temperature, top_k, seed, self.hf.device)
        started = time.perf_counter()
        tokens: list[int] = []
        inputs = prompt
        while len(tokens) < limit:
            self._embed(inputs)
            self._climb(0, depth)
            token = pick(self._logits(depth, 1))
            self.waiting[depth] = None  # no deeper layer will ever need these states
            tokens.append(token)
            inputs = [token]
            if token == eos_id:
                break
        extra = {"exit": depth} if mode == "exit" else {}
        if temperature > 0:
            extra.update(temperature=temperature, top_k=top_k, seed=seed)
        return self._finish(mode, tokens, started, max_new_tokens, eos_id, **extra)

    @torch.no_grad()
    def early_exit(self, prompt_ids: Sequence[int], max_new_tokens: int, threshold: float,
                   exits: Optional[Sequence[int]] = None, eos_id: Optional[int] = None) -> Generation:
        """Greedy, each token stopping at the first of `exits` (default every layer) whose max
        softmax probability reaches `threshold`; the last layer always stops. Lossy by design.

        A token that stops at exit e has no keys/values in layers >= e. Its state at the exit stays
        queued there, and before a later token runs layer j >= e, the queued states are pushed
        through layer j in the same batched call (their own positions, causal mask), which writes
        exactly the keys/values a full forward would (LayerSkip's way). So every layer's cache
        always holds a prefix of the sequence, and the cost of the skipped layers is deferred and
        batched, not avoided: the gain is fewer sequential layer calls."""
        if not is_number(threshold) or not 0 < threshold <= 1:
            raise UserError(f"the early-exit threshold must be in (0, 1], not {threshold!r}")
        candidates = set(range(1, self.num_layers + 1)) if exits is None else set(exits)
        for depth in candidates:
            self._check_exit(depth, "an early exit", self.num_layers)
        candidates.add(self.num_layers)
        prompt, limit = self._begin(prompt_ids, max_new_tokens)
        started = time.perf_counter()
        tokens: list[int] = []
        exits_used: list[int] = []
        inputs = prompt
        while len(tokens) < limit:
            self._embed(inputs)
            for index in range(self.num_layers):
                self._run_layer(index)
                depth = index + 1
                if depth in candidates:
                    logits = self._logits(depth, 1)
                    if depth == self.num_layers or float(torch.softmax(logits.float(), dim=-1).max()) >= threshold:
                        break
            if depth == self.num_layers:
                self.waiting[depth] = None
            token = _greedy(logits)
            tokens.append(token)
            exits_used.append(depth)
            inputs = [token]
            if token == eos_id:
                break
        mean_exit = sum(exits_used) / len(exits_used) if exits_used else 0.0
        return self._finish("early_exit", tokens, started, max_new_tokens, eos_id, threshold=threshold,
                            exits=sorted(candidates), exits_used=exits_used, mean_exit_layer=mean_exit)

    @torch.no_grad()
    def speculative(self, prompt_ids: Sequence[int], max_new_tokens: int, draft_exit: int, draft_len: DraftLen = "auto",
                    auto_start: int = 4, eos_id: Optional[int] = None) -> Generation:
        """Lossless self-speculative greedy decoding: exit `draft_exit` drafts, the full model
        verifies. See `_speculative_round`; `draft_len` is fixed or "auto" (DraftSchedule)."""
        self._check_exit(draft_exit, "draft_exit", self.num_layers - 1)
        schedule = DraftSchedule(draft_len, auto_start)
        prompt, limit = self._begin(prompt_ids, max_new_tokens)
        started = time.perf_counter()
        tokens: list[int] = []
        rounds = drafted = accepted = 0
        draft_lengths: list[int] = []
        inputs = prompt
        while len(tokens) < limit:
            length = min(schedule.length, limit - len(tokens) - 1)  # a round yields up to length + 1
            new, agreed = self._speculative_round(inputs, draft_exit, length)
            schedule.update(length, agreed)
            rounds, drafted, accepted = rounds + 1, drafted + length, accepted + agreed
            draft_lengths.append(length)
            if eos_id in new:
                tokens.extend(new[: new.index(eos_id) + 1])
                break
            tokens.extend(new)
            inputs = new[-1:]
        return self._finish("speculative", tokens, started, max_new_tokens, eos_id, draft_exit=draft_exit,
                            draft_len=draft_len, rounds=rounds, drafted=drafted, accepted=accepted,
                            acceptance_rate=accepted / drafted if drafted else None,
                            tokens_per_verification=len(tokens) / rounds if rounds else 0.0,
                            draft_lengths=draft_lengths)

    def _speculative_round(self, inputs: list[int], draft_exit: int, length: int) -> tuple[list[int], int]:
        """One round; returns (new tokens, accepted drafts). On entry every layer's cache holds
        the same accepted prefix and `inputs` (the prompt, then the previous round's last token)
        have no keys/values anywhere.

        Draft: the inputs, then each drafted token, go through layers < draft_exit (writing their
        keys/values there) and wait at the exit; the exit's greedy token is the next draft. The
        last draft is pushed through the draft layers too, without a head, so verification also
        scores it. Verify: everything waiting at the exit goes through layers >= draft_exit in
        one batched call per layer, giving the full model's greedy token after each of the last
        length + 1 positions. The longest prefix of drafts equal to those is accepted, then the
        full model's token after it (its "bonus" token, with no keys/values yet: the next round's
        input). Every layer is cropped to the accepted prefix, so the draft layers' keys/values of
        accepted tokens are kept and reused by the verifier: each layer runs once per token."""
        base = self.fed
        self._embed(inputs)
        self._climb(0, draft_exit)
        drafts: list[int] = []
        for _ in range(length):
            drafts.append(_greedy(self._logits(draft_exit, 1)))
            self._embed(drafts[-1:])
            self._climb(0, draft_exit)
        self._climb(draft_exit, self.num_layers)
        full = self._logits(self.num_layers, length + 1).argmax(dim=-1).tolist()
        self.waiting[self.num_layers] = None
        agreed = 0
        while agreed < length and drafts[agreed] == full[agreed]:
            agreed += 1
        self.fed = base + len(inputs) + agreed
        for index in range(self.num_layers):
            self.cache.crop(index, self.fed)
        return drafts[:agreed] + [full[agreed]], agreed


@torch.no_grad()
def teacher_forced_agreement(model: SortedDecoder, prompt_ids: Sequence[int], tokens: Sequence[int]) -> float:
    """The fraction of generated positions where the full model, given the same prefix (the
    prompt and the tokens generated before it), predicts the generated token: one full forward
    over prompt + tokens. Unlike matching the full model's own greedy text up to the first
    divergence, one early mistake does not count against every later position."""
    if not tokens:
        raise UserError("no generated tokens to compare with the full model")
    sequence = list(prompt_ids) + list(tokens[:-1])
    ids = torch.tensor([sequence], device=model.hf.device)
    predicted = model(TokenBatch(ids))[0, len(prompt_ids) - 1:].argmax(dim=-1)
    return float((predicted == torch.tensor(list(tokens), device=predicted.device)).float().mean())
