"""Decoding with the exits of a sorted decoder: the full model, one exit, confidence-based early
exit and lossless self-speculation (greedy over a chain or a tree of drafts, or sampled with the
speculative-sampling rule), all over one KV cache.

Sorted training makes every depth a usable LM with the shared final norm and head, so one set of
weights can draft, verify and exit early. That needs a cache whose layers hold different lengths
(a token that stopped at exit e has no keys/values above e), which the library's `generate` does
not keep; this module runs the layers one at a time through the model's layout
(models/hf_layouts.py): the library's own layer modules, or, where the layout has one, the same
layer's arithmetic inlined op for op (its lean step: bitwise the same output, without the
per-call plumbing that dominates a layer call at batch 1 and a small hidden size). Every mode
runs under inference mode, which skips autograd's per-op bookkeeping.

What a token costs besides arithmetic is kept down: the cache is preallocated to the generation
(hf_compat.LayerCache writes into a slice), position ids and rotary tables are built once per
generation and sliced, a layer's mask once per round, and drafted tokens stay on the device until
the round's one read-back (the accepted count decides the crop).

Batch size 1, full width. Greedy self-speculation is token-identical to greedy decoding of the
full model in float32 (lower precisions can flip near-ties between the batched verification and
the one-token-at-a-time reference); sampled self-speculation follows the full model's
distribution exactly, but not its seeded draws.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch

from ..errors import UserError
from ..values import is_int, is_number
from ..models import hf_compat
from ..models import family_of
from ..models.transformer import SortedDecoder, TokenBatch
from .tree import DraftTree

AUTO = "auto"
DraftExit = Union[int, str]
"""The layers that draft (an int) or "auto" (chosen every round by choose_draft)."""
DraftLen = Union[int, str]
"""Tokens drafted per round (an int >= 1) or "auto" (chosen every round by choose_draft)."""

MAX_DRAFT_LEN = 16  # auto drafts at most this many tokens per round
PRIOR_POSITIONS = 32  # the prompt positions whose exits' agreement starts the acceptance estimates
PRIOR_WEIGHT = 4.0  # ...counted as this many drafts: the generated text, not the prompt, is what drafts must match
PROBE_EVERY = 8  # while auto drafts nothing, every 8th round drafts one token, so acceptance stays measured


@dataclass
class Generation:
    """The new token ids and how they were made. `stats` is JSON-able: mode, new_tokens, seconds
    and tokens_per_second (the wall time of the generation loop, prefill included), stop_reason
    ("max_new_tokens", "eos" or "context_limit", then also `context_limit`), plus the mode's own
    (and `breakdown`, PhaseClock.summary, when the decoder was timed or chose its drafts)."""

    tokens: list[int]
    stats: dict = field(default_factory=dict)


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


# --- sampling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Warp:
    """Sampling's distribution from logits: softmax(logits / temperature) over the top_k best
    (every token when top_k is None). Speculative sampling warps the draft's and the full model's
    logits alike, so its output follows the full model's warped distribution."""

    temperature: float
    top_k: Optional[int] = None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, vocab] logits -> [n, vocab] probabilities (float32)."""
        scores = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            cutoff = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < cutoff, float("-inf"))
        return torch.softmax(scores, dim=-1)


def sampling_warp(temperature: float, top_k: Optional[int]) -> Optional[Warp]:
    """The checked sampling settings: None (greedy) at temperature 0."""
    if not is_number(temperature) or temperature < 0:
        raise UserError(f"temperature must be >= 0, not {temperature}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise UserError(f"top_k must be an int >= 1, not {top_k!r}")
    return None if temperature == 0 else Warp(float(temperature), top_k)


def draft_acceptance(exit_logits: torch.Tensor, full_logits: torch.Tensor, warp: Optional[Warp], width: int = 1) -> float:
    """The summed chance, over [n, vocab] rows, that a draft from the exit is accepted: greedy,
    1 where the full model's argmax is among the exit's `width` best (its argmax for a chain of
    drafts); sampled, sum over tokens of min(p_full, p_exit) (the speculative-sampling
    acceptance rule's expectation)."""
    if warp is None:
        best = exit_logits.topk(min(width, exit_logits.shape[-1]), dim=-1).indices
        return float((best == full_logits.argmax(-1, keepdim=True)).any(-1).sum())
    return float(torch.minimum(warp.probabilities(exit_logits), warp.probabilities(full_logits)).sum())


# --- where the time goes, and the draft it suggests ------------------------------------------------


class PhaseClock:
    """Where a generation's time goes, by phase: prefill (the prompt's pass), draft (the layers
    below the draft exit, one token at a time), verify (the layers from the draft exit up; every
    layer in full and exit decoding), head (the shared final norm and LM head at any exit), and
    bookkeeping: the rest of the loop (embedding, picking and comparing tokens, crops, choosing
    drafts, Python). Layer and head calls are also counted by how many positions each ran, which
    is what DecodeCosts is measured from. On a GPU every mark synchronises the device, so a phase
    is what ran in it, not what it launched."""

    PHASES = ("prefill", "draft", "verify", "head")

    def __init__(self, device: torch.device):
        self._synchronize = torch.cuda.synchronize if device.type == "cuda" else None
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.calls: dict[tuple[str, int], list] = {}  # ("layer" | "head", positions) -> [calls, seconds], prefill left out
        self.embedded = [0, 0.0]  # embedding calls, seconds (bookkeeping)
        self.rounds = 0
        self.started = self.now()

    def now(self) -> float:
        if self._synchronize is not None:
            self._synchronize()
        return time.perf_counter()

    def add(self, phase: str, kind: str, positions: int, seconds: float) -> None:
        self.seconds[phase] += seconds
        if phase != "prefill":
            entry = self.calls.setdefault((kind, positions), [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def mean(self, kind: str, positions: int) -> Optional[float]:
        calls, seconds = self.calls.get((kind, positions), (0, 0.0))
        return seconds / calls if calls else None

    def per_extra_position(self, kind: str, single: float) -> Optional[float]:
        """Seconds each position beyond the first adds to a call (calls over several positions
        against the one-position mean), or None before any such call."""
        extra = sum(calls * (positions - 1) for (k, positions), (calls, _) in self.calls.items() if k == kind and positions > 1)
        if not extra:
            return None
        seconds = sum(s - calls * single for (k, positions), (calls, s) in self.calls.items() if k == kind and positions > 1)
        return max(0.0, seconds / extra)

    def bookkeeping(self) -> float:
        """Seconds so far in none of the phases (embedding included)."""
        return max(0.0, self.now() - self.started - sum(self.seconds.values()))

    def summary(self, tokens: int) -> dict:
        """The breakdown, JSON-able: ms per generated token of each phase and of bookkeeping, their
        shares of the generation's time, and the layer calls (count, positions, mean ms)."""
        total = self.now() - self.started
        phases = dict(self.seconds, bookkeeping=max(0.0, total - sum(self.seconds.values())))
        layer_calls = {p: c for (k, p), c in self.calls.items() if k == "layer"}
        calls = sum(c[0] for c in layer_calls.values())
        single = layer_calls.get(1, (0, 0.0))
        several = [(p, c) for p, c in layer_calls.items() if p > 1]
        several_calls = sum(c[0] for _, c in several)
        per_token = (lambda s: 1000 * s / tokens) if tokens else (lambda s: 0.0)
        return {
            "ms_per_token": {name: per_token(s) for name, s in phases.items()},
            "share": {name: s / total if total > 0 else 0.0 for name, s in phases.items()},
            "rounds": self.rounds,
            "layer_calls_per_token": calls / tokens if tokens else 0.0,
            "layer_ms_one_position": 1000 * single[1] / single[0] if single[0] else None,
            "verify_calls": several_calls,
            "verify_positions_per_call": sum(p * c[0] for p, c in several) / several_calls if several_calls else None,
            "layer_ms_several_positions": 1000 * sum(c[1] for _, c in several) / several_calls if several_calls else None,
            "embed_ms_per_call": 1000 * self.embedded[1] / self.embedded[0] if self.embedded[0] else None,
        }


@dataclass(frozen=True)
class DecodeCosts:
    """Seconds of the pieces of a speculative round, the chooser's cost model: a layer call over one
    position and each further position of the same call (verification runs length + 1 positions
    at once), the head likewise, the bookkeeping of one draft step (embedding and picking a
    token) and of one round (comparing, cropping, choosing)."""

    layer: float
    layer_per_position: float
    head: float
    head_per_position: float
    step: float
    round: float

    def round_seconds(self, num_layers: int, exit: int, length: int, width: int = 1) -> float:
        """A round of `length` drafts from exit `exit`: length + 1 passes through the draft
        layers (the round's input, then each draft: `width` positions at once for a tree) with a
        head after each but the last, then one call of every deeper layer and of the head over
        the 1 + length * width positions. Length 0 is one step of full greedy decoding."""
        wider = width - 1
        draft = ((length + 1) * (exit * self.layer + self.step) + length * exit * wider * self.layer_per_position
                 + length * self.head + max(0, length - 1) * wider * self.head_per_position)
        drafted = length * width
        verify = (num_layers - exit) * (self.layer + drafted * self.layer_per_position) + self.head + drafted * self.head_per_position
        return draft + verify + self.round

    @classmethod
    def measured(cls, clock: PhaseClock) -> "DecodeCosts":
        """From what the clock has measured so far; what it has not yet measured is taken as the
        ratios of GUESS to the layer cost (all of GUESS before the first one-position layer call)."""
        layer = clock.mean("layer", 1)
        if layer is None:
            return GUESS
        ratio = lambda name: getattr(GUESS, name) / GUESS.layer * layer  # noqa: E731
        head = clock.mean("head", 1)
        head = ratio("head") if head is None else head
        layer_per_position = clock.per_extra_position("layer", layer)
        head_per_position = clock.per_extra_position("head", head)
        calls, seconds = clock.embedded
        round_seconds = (clock.bookkeeping() - seconds) / clock.rounds if clock.rounds else None
        return cls(layer=layer,
                   layer_per_position=ratio("layer_per_position") if layer_per_position is None else layer_per_position,
                   head=head,
                   head_per_position=ratio("head_per_position") if head_per_position is None else head_per_position,
                   step=seconds / calls if calls else ratio("step"),
                   round=max(0.0, round_seconds) if round_seconds is not None else ratio("round"))


# Before anything is measured, in units of a one-position layer call: a call over n positions
# costs about 1 + 0.15 (n - 1) of one at this scale (docs/performance.md), the head about a layer.
GUESS = DecodeCosts(layer=1.0, layer_per_position=0.15, head=1.0, head_per_position=0.15, step=0.1, round=0.5)


def expected_tokens(acceptance: float, length: int) -> float:
    """Tokens a round yields on average when each draft is accepted with probability `acceptance`
    given that those before it were: the accepted drafts, then the full model's own token,
    1 + a + a^2 + ... + a^length."""
    return sum(acceptance ** i for i in range(length + 1))


def choose_draft(costs: DecodeCosts, acceptance: Mapping[int, float], num_layers: int, lengths: Sequence[int],
                 width: int = 1) -> tuple[int, int]:
    """The (exit, length), over the exits of `acceptance` and the `lengths`, that maximises
    expected tokens per second, expected_tokens / costs.round_seconds (DEL's criterion); ties go
    to the shallower exit and the shorter draft. It runs before every round, so each exit's
    lengths are scanned incrementally (from one draft on, a round's cost is linear in its length)."""
    allowed = set(lengths)
    best, best_rate = None, -1.0
    for exit in sorted(acceptance):
        base = costs.round_seconds(num_layers, exit, 0, width)
        first = costs.round_seconds(num_layers, exit, 1, width)
        per_draft = costs.round_seconds(num_layers, exit, 2, width) - first
        tokens, term = 0.0, 1.0
        for length in range(max(allowed) + 1):
            tokens += term
            term *= acceptance[exit]
            if length in allowed:
                rate = tokens / (base if length == 0 else first + (length - 1) * per_draft)
                if rate > best_rate:
                    best, best_rate = (exit, length), rate
    return best


class AcceptanceEstimates:
    """Per candidate exit, the chance that a draft is accepted given that those before it were:
    Laplace's (accepted + 1) / (tested + 2), counting the prompt's positions (how often the
    exit's next token agreed with the full model's there, worth PRIOR_WEIGHT drafts in all) and
    every draft verified since."""

    def __init__(self, exits: Sequence[int]):
        self.accepted = dict.fromkeys(exits, 0.0)
        self.tested = dict.fromkeys(exits, 0.0)

    def add(self, exit: int, accepted: float, tested: float) -> None:
        self.accepted[exit] += accepted
        self.tested[exit] += tested

    def rates(self) -> dict[int, float]:
        return {e: (self.accepted[e] + 1) / (self.tested[e] + 2) for e in self.accepted}


# --- the decoder ---------------------------------------------------------------------------------


class ExitDecoder:
    """Batch-1 decoding over the full-width layers of a SortedDecoder, one layer at a time.

    The state of one generation is `cache` (a LayerCache whose layers may hold different lengths)
    and `waiting[j]`: the hidden states (a list of [1, n, hidden] pieces, in position order)
    entering layer j of the positions cache.length(j) .. cache.length(j - 1) - 1 (for j = 0: up
    to the last embedded position). Running layer j takes its whole queue in one batched call --
    at positions starting at cache.length(j), under a causal mask over the cached keys -- writes
    their keys/values and appends the outputs to waiting[j + 1]. A position that stopped at an
    exit therefore waits at that exit, and the next token that goes deeper carries it through the
    layers it missed: its keys/values are computed exactly, from its own state, never copied from
    another layer.

    `timed`: every generation carries its PhaseClock breakdown in `stats["breakdown"]` (on a GPU
    that synchronises at every phase mark; choosing drafts automatically always does).
    `library_layers`: run every layer through the library's module, not the layout's lean step
    (the same output; bench-decode measures what the lean steps save). Call `model.eval()`
    first (dropout).
    """

    def __init__(self, model: SortedDecoder, timed: bool = False, library_layers: bool = False):
        if not family_of(model).decodes:
            raise UserError(f"decoding needs a model whose family decodes, not {type(model).__name__}")
        self.model = model
        self.hf = model.hf
        self.device = model.hf.device
        self.layers = model.layers
        self.num_layers = len(self.layers)
        self.context = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self.timed = timed
        self._steps = [model.decode_step(index, lean=not library_layers) for index in range(self.num_layers)]
        self._sliceable_positions = model.positions_sliceable
        self._reset(1)

    # --- the state of one generation ---------------------------------------------------------

    def _reset(self, capacity: int, spare: int = 0) -> None:
        self.cache = hf_compat.LayerCache(self.num_layers, capacity + spare)
        self.waiting: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers + 1)]
        self.fed = 0
        self._position_ids = torch.arange(capacity, device=self.device)[None]
        self._table = None  # the rotary table of every position (where sliceable)
        self._rows = None  # the position embeddings of the last (start, count) asked, shared by the layers of one call
        self._table_key: Optional[tuple[int, int]] = None
        self._masks: dict = {}  # window -> (queries, keys, mask) of the last call
        self._phase = "prefill"
        self.clock: Optional[PhaseClock] = None

    def _start(self, clocked: bool) -> float:
        self.clock = PhaseClock(self.device) if clocked or self.timed else None
        return time.perf_counter()

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], device=self.device)

    def _embed(self, ids: torch.Tensor) -> None:
        """New tokens ([1, n] ids on the device) join the queue of the first layer."""
        clock = self.clock
        began = clock.now() if clock else 0.0
        count = ids.shape[1]
        self.waiting[0].append(self.model.embed(ids, self._position_ids[:, self.fed:self.fed + count]))
        self.fed += count
        if clock:
            clock.embedded[0] += 1
            clock.embedded[1] += clock.now() - began

    def _position_embeddings(self, hidden: torch.Tensor, start: int, count: int):
        """Rotary (cos, sin) of positions start .. start+count-1: rows of one table built for the
        whole generation where the layout allows it, otherwise built per (start, count) and shared
        by the layers that ask the same."""
        if self._table_key != (start, count):
            if not self._sliceable_positions:
                self._rows = self.model.positions(hidden, self._position_ids[:, start:start + count])
            else:
                if self._table is None:
                    self._table = self.model.positions(hidden, self._position_ids)
                self._rows = self.model.slice_positions(self._table, start, count)
            self._table_key = (start, count)
        return self._rows

    def _mask(self, index: int, count: int, keys: int, hidden: torch.Tensor):
        """Layer `index`'s mask for `count` queries over `keys` keys; the layers of one batched
        call (the same window, queries and keys) share one."""
        window = self.model.windows[index]
        last = self._masks.get(window)
        if last is None or last[0] != count or last[1] != keys:
            last = (count, keys, self.model.layer_mask(index, None, count, keys, hidden))
            self._masks[window] = last
        return last[2]

    def _run_layer(self, index: int) -> None:
        """Layer `index` over every position waiting for it, in one call."""
        queued = self.waiting[index]
        hidden = queued[0] if len(queued) == 1 else torch.cat(queued, dim=1)
        self.waiting[index] = []
        start, count = self.cache.lengths[index], hidden.shape[1]
        clock = self.clock
        began = clock.now() if clock else 0.0
        out = self._steps[index](hidden, self._mask(index, count, start + count, hidden),
                                 self._position_embeddings(hidden, start, count), self.cache)
        if clock:
            clock.add(self._phase, "layer", count, clock.now() - began)
        self.waiting[index + 1].append(out)

    def _climb(self, first: int, stop: int, phase: str) -> None:
        """Run layers first .. stop-1 over whatever waits for them."""
        self._phase = phase
        for index in range(first, stop):
            if self.waiting[index]:
                self._run_layer(index)

    def _logits(self, depth: int, count: int) -> torch.Tensor:
        """Next-token logits [count, vocab] of the last `count` positions waiting at exit `depth`."""
        queued = self.waiting[depth]
        hidden = queued[-1] if queued[-1].shape[1] >= count else torch.cat(queued, dim=1)
        return self._head(hidden[:, -count:])

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [n, vocab] of hidden states [1, n, hidden] at any exit."""
        clock = self.clock
        began = clock.now() if clock else 0.0
        logits = self.model.logits(hidden)[0]
        if clock:
            clock.add("prefill" if self._phase == "prefill" else "head", "head", hidden.shape[1], clock.now() - began)
        return logits

    # --- checks and bookkeeping ----------------------------------------------------------------

    def _begin(self, prompt_ids: Sequence[int], max_new_tokens: int, spare: int = 0) -> tuple[list[int], int]:
        """The prompt as a list and how many tokens fit (max_new_tokens clipped to the context);
        the cache and tables sized to them (no position past prompt + new tokens is ever fed),
        the cache with `spare` slots more (a draft tree's nodes beside each other)."""
        prompt, limit = check_request(prompt_ids, max_new_tokens, self.context, self.vocab_size)
        self._reset(len(prompt) + limit, spare)
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
        if self.clock is not None:
            stats["breakdown"] = self.clock.summary(len(tokens))
        return Generation(tokens, stats)

    # --- modes -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def full(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
             seed: int = 0, eos_id: Optional[int] = None) -> Generation:
        """The whole model: greedy, or sampled at `temperature` over the `top_k` best."""
        return self._single_exit("full", prompt_ids, max_new_tokens, self.num_layers, temperature, top_k, seed, eos_id)

    @torch.inference_mode()
    def exit(self, prompt_ids: Sequence[int], max_new_tokens: int, exit_layer: int, temperature: float = 0.0,
             top_k: Optional[int] = None, seed: int = 0, eos_id: Optional[int] = None) -> Generation:
        """Exit `exit_layer` as its own LM: only its first layers run, deeper ones never do."""
        self._check_exit(exit_layer, "exit", self.num_layers)
        return self._single_exit("exit", prompt_ids, max_new_tokens, exit_layer, temperature, top_k, seed, eos_id)

    def _single_exit(self, mode: str, prompt_ids: Sequence[int], max_new_tokens: int, depth: int, temperature: float,
                     top_k: Optional[int], seed: int, eos_id: Optional[int]) -> Generation:
        warp = sampling_warp(temperature, top_k)
        prompt, limit = self._begin(prompt_ids, max_new_tokens)
        generator = None if warp is None else torch.Generator(device=self.device).manual_seed(seed)
        started = self._start(False)
        picked: list[torch.Tensor] = []
        ids = self._ids(prompt)
        phase = "prefill"
        while len(picked) < limit:
            self._embed(ids)
            self._climb(0, depth, phase)
            logits = self._logits(depth, 1)
            token = logits.argmax(-1) if warp is None else torch.multinomial(warp.probabilities(logits), 1, generator=generator)[:, 0]
            self.waiting[depth] = []  # no deeper layer will ever need these states
            picked.append(token)
            ids, phase = token.view(1, 1), "verify"
            if eos_id is not None and int(token) == eos_id:
                break
        tokens = torch.cat(picked).tolist() if picked else []  # the one read-back without an eos to watch for
        extra = {"exit": depth} if mode == "exit" else {}
        if warp is not None:
            extra.update(temperature=temperature, top_k=top_k, seed=seed)
        return self._finish(mode, tokens, started, max_new_tokens, eos_id, **extra)

    @torch.inference_mode()
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
        started = self._start(False)
        tokens: list[int] = []
        exits_used: list[int] = []
        inputs = prompt
        self._phase = "prefill"
        while len(tokens) < limit:
            self._embed(self._ids(inputs))
            for index in range(self.num_layers):
                self._run_layer(index)
                depth = index + 1
                if depth in candidates:
                    logits = self._logits(depth, 1)
                    if depth == self.num_layers or float(torch.softmax(logits.float(), dim=-1).max()) >= threshold:
                        break
            if depth == self.num_layers:
                self.waiting[depth] = []
            token = int(logits.argmax())
            tokens.append(token)
            exits_used.append(depth)
            inputs = [token]
            self._phase = "verify"
            if token == eos_id:
                break
        mean_exit = sum(exits_used) / len(exits_used) if exits_used else 0.0
        return self._finish("early_exit", tokens, started, max_new_tokens, eos_id, threshold=threshold,
                            exits=sorted(candidates), exits_used=exits_used, mean_exit_layer=mean_exit)

    @torch.inference_mode()
    def speculative(self, prompt_ids: Sequence[int], max_new_tokens: int, draft_exit: DraftExit = AUTO, draft_len: DraftLen = AUTO,
                    temperature: float = 0.0, top_k: Optional[int] = None, seed: int = 0, eos_id: Optional[int] = None,
                    draft_width: int = 1, draft_stop: float = 0.0) -> Generation:
        """Lossless self-speculative decoding: exit `draft_exit` drafts, the full model verifies
        (see `_speculative_round`). Greedy at temperature 0 (token-identical to full greedy);
        otherwise sampled by the speculative-sampling rule, distributed exactly as sampling the
        full model at the same temperature and top_k. "auto" for the exit and/or the length:
        every round takes the (exit, length) choose_draft says, from the costs measured so far
        in this generation and the acceptance estimated per exit (AcceptanceEstimates); a length
        of 0 is a step of plain full decoding. `draft_width` > 1 (greedy only) drafts a tree,
        `draft_width` nodes per level and `draft_len` levels deep (`_tree_round`); acceptance is
        then counted per level. `draft_stop` > 0 (chains only) ends a round's drafting early, at
        the first position where the exit's top probability is below it (Draft & Verify's
        adaptive draft-exiting): `draft_len` is then the most a round drafts."""
        warp = sampling_warp(temperature, top_k)
        exits, lengths = self._draft_choices(draft_exit, draft_len, draft_width, warp, draft_stop)
        prompt, limit = self._begin(prompt_ids, max_new_tokens, spare=max(lengths) * draft_width if draft_width > 1 else 0)
        generator = None if warp is None else torch.Generator(device=self.device).manual_seed(seed)
        choosing = len(exits) > 1 or len(lengths) > 1
        started = self._start(choosing)
        estimates = AcceptanceEstimates(exits) if choosing else None
        self._prefill(prompt[:-1], estimates, warp, draft_width)
        tokens: list[int] = []
        rounds = drafted = accepted = 0
        draft_lengths: list[int] = []
        draft_exits: list[int] = []
        inputs = prompt[-1:]
        while len(tokens) < limit:
            room = limit - len(tokens) - 1  # a round yields up to length + 1
            usable = sorted({min(k, room) for k in lengths})
            exit, length = (exits[0], usable[0]) if estimates is None else self._choose(estimates, usable, room, rounds, draft_width)
            if draft_width > 1:
                new, agreed = self._tree_round(inputs, exit, length, draft_width)
            else:
                new, agreed, length = self._speculative_round(inputs, exit, length, warp, generator, draft_stop)
            if estimates is not None and length:
                estimates.add(exit, agreed, agreed + (agreed < length))  # tested up to the first rejection
            rounds, drafted, accepted = rounds + 1, drafted + length, accepted + agreed
            draft_lengths.append(length)
            draft_exits.append(exit)
            if self.clock is not None:
                self.clock.rounds = rounds
            if eos_id is not None and eos_id in new:
                tokens.extend(new[: new.index(eos_id) + 1])
                break
            tokens.extend(new)
            inputs = new[-1:]
        extra = {"draft_exit": draft_exit, "draft_len": draft_len, "draft_width": draft_width, "draft_stop": draft_stop, "rounds": rounds, "drafted": drafted, "accepted": accepted,
                 "acceptance_rate": accepted / drafted if drafted else None,
                 "tokens_per_verification": len(tokens) / rounds if rounds else 0.0, "draft_lengths": draft_lengths}
        if draft_exit == AUTO:
            extra["draft_exits"] = draft_exits
        if choosing:
            extra["chosen"] = [f"E={e} K={k}: {n}" for (e, k), n in Counter(zip(draft_exits, draft_lengths)).most_common()]
        if warp is not None:
            extra.update(temperature=temperature, top_k=top_k, seed=seed)
        return self._finish("speculative", tokens, started, max_new_tokens, eos_id, **extra)

    def _draft_choices(self, draft_exit: DraftExit, draft_len: DraftLen, draft_width: int, warp: Optional[Warp],
                       draft_stop: float) -> tuple[list[int], list[int]]:
        """The checked draft settings: the exits and the lengths a round may take."""
        exits = list(range(1, self.num_layers)) if draft_exit == AUTO else [draft_exit]
        if draft_exit != AUTO:
            self._check_exit(draft_exit, "draft_exit", self.num_layers - 1)
        if draft_len == AUTO:
            lengths = list(range(MAX_DRAFT_LEN + 1))
        elif is_int(draft_len) and draft_len >= 1:
            lengths = [draft_len]
        else:
            raise UserError(f"draft_len must be an int >= 1 or 'auto', not {draft_len!r}")
        if not is_int(draft_width) or draft_width < 1:
            raise UserError(f"draft_width must be an int >= 1, not {draft_width!r}")
        if draft_width > 1 and warp is not None:
            raise UserError("a draft tree (draft_width > 1) is verified greedily: sample (temperature > 0) with draft_width=1")
        if not is_number(draft_stop) or not 0 <= draft_stop < 1:
            raise UserError(f"draft_stop must be a probability in [0, 1) (0: drafts of the full length), not {draft_stop!r}")
        if draft_stop > 0 and draft_width > 1:
            raise UserError("draft_stop ends a chain of drafts: use it with draft_width=1")
        return exits, lengths

    def _prefill(self, ids: list[int], estimates: Optional[AcceptanceEstimates], warp: Optional[Warp], width: int) -> None:
        """The prompt but its last token through every layer in one call each (that token opens
        the first round). With estimates, also each candidate exit's agreement with the full
        model (for a tree of `width`: the full model's token among the exit's `width` best) over
        the last PRIOR_POSITIONS of these positions: the estimates' prior."""
        if not ids:
            return
        self._phase = "prefill"
        self._embed(self._ids(ids))
        states = {}
        for index in range(self.num_layers):
            self._run_layer(index)
            if estimates is not None and index + 1 in estimates.tested:
                states[index + 1] = self.waiting[index + 1][-1][:, -PRIOR_POSITIONS:]
        if estimates is not None:
            clock = self.clock
            began = clock.now()
            full = self.model.logits(self.waiting[self.num_layers][-1][:, -PRIOR_POSITIONS:])[0]
            weight = min(1.0, PRIOR_WEIGHT / full.shape[0])
            for exit, hidden in states.items():
                estimates.add(exit, weight * draft_acceptance(self.model.logits(hidden)[0], full, warp, width), weight * full.shape[0])
            clock.add("prefill", "head", full.shape[0], clock.now() - began)
        self.waiting[self.num_layers] = []

    def _choose(self, estimates: AcceptanceEstimates, lengths: list[int], room: int, rounds: int, width: int) -> tuple[int, int]:
        """This round's (exit, length): choose_draft on the costs measured so far; while it says
        0, every PROBE_EVERY-th round drafts one token (one level) from the best exit for one
        draft, so the exits' acceptance keeps being measured."""
        costs = DecodeCosts.measured(self.clock)
        rates = estimates.rates()
        exit, length = choose_draft(costs, rates, self.num_layers, lengths, width)
        if length == 0 and room > 0 and rounds % PROBE_EVERY == PROBE_EVERY - 1:
            exit, length = choose_draft(costs, rates, self.num_layers, [1], width)
        return exit, length

    def _speculative_round(self, inputs: list[int], draft_exit: int, length: int, warp: Optional[Warp],
                           generator: Optional[torch.Generator], draft_stop: float = 0.0) -> tuple[list[int], int, int]:
        """One round; returns (new tokens, accepted drafts, drafts). On entry every layer's cache holds
        the same accepted prefix and `inputs` (the prompt's last token, then the previous round's
        last token) have no keys/values anywhere.

        Draft: the inputs, then each drafted token, go through layers < draft_exit (writing their
        keys/values there) and wait at the exit; the exit's token (greedy, or drawn from its warped
        distribution q) is the next draft, unless the exit's top probability (of q when sampling)
        is below `draft_stop`: drafting then ends there, after fewer than `length` drafts (a rule
        that reads only the draft's own distribution, so acceptance stays exact). The last draft
        is pushed through the draft layers too,
        without a head, so verification also scores it. Verify: everything waiting at the exit
        goes through layers >= draft_exit in one batched call per layer, giving the full model's
        next-token logits after each of the last length + 1 positions. Greedy: the longest prefix
        of drafts equal to the full model's argmax is accepted, then the full model's token after
        it. Sampled: draft i (given those before it were accepted) is accepted with probability
        min(1, p_i(x_i) / q_i(x_i)); the first rejected one is replaced by a draw from the
        normalised max(0, p_i - q_i), and if none is rejected a draw from p after the last draft
        follows -- so every token is distributed as the full model's (Leviathan et al. 2023,
        Chen et al. 2023). Every layer is then cropped to the accepted prefix, so the draft layers'
        keys/values of accepted tokens are kept and reused by the verifier: each layer runs once
        per token. The drafts stay on the device; the round reads back once (and once per draft
        with `draft_stop`)."""
        base = self.fed
        self._embed(self._ids(inputs))
        self._climb(0, draft_exit, "draft")
        drafts: list[torch.Tensor] = []
        draft_probabilities: list[torch.Tensor] = []
        for _ in range(length):
            logits = self._logits(draft_exit, 1)
            probabilities = None if warp is None and not draft_stop else (
                torch.softmax(logits.float(), dim=-1) if warp is None else warp.probabilities(logits))
            if draft_stop and float(probabilities.max()) < draft_stop:
                break
            if warp is None:
                token = logits.argmax(-1)
            else:
                draft_probabilities.append(probabilities)
                token = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
            drafts.append(token)
            self._embed(token.view(1, 1))
            self._climb(0, draft_exit, "draft")
        length = len(drafts)
        self._climb(draft_exit, self.num_layers, "verify")
        logits = self._logits(self.num_layers, length + 1)
        self.waiting[self.num_layers] = []
        if warp is None:
            values = torch.cat([*drafts, logits.argmax(-1)]).tolist()
            proposed, full = values[:length], values[length:]
            agreed = 0
            while agreed < length and proposed[agreed] == full[agreed]:
                agreed += 1
            new = proposed[:agreed] + [full[agreed]]
        else:
            new, agreed = self._accept_sampled(drafts, draft_probabilities, warp.probabilities(logits), generator)
        self.fed = base + len(inputs) + agreed
        for index in range(self.num_layers):
            self.cache.crop(index, self.fed)
        return new, agreed, length

    def _tree_round(self, inputs: list[int], draft_exit: int, depth: int, width: int) -> tuple[list[int], int]:
        """One greedy round over a tree of drafts (decode/tree.py); returns (new tokens, accepted
        levels). The same state on entry and exit as `_speculative_round`.

        Draft: the input (node 0) goes through layers < draft_exit as usual; then, level by
        level, the exit's logits after the deepest level grow the tree by `width` nodes, which go
        through the draft layers in one call per layer (at their positions, each seeing the
        prefix and its ancestors). Verify: all nodes through layers >= draft_exit in one call
        per layer, which gives the full model's next token after every node; the path of nodes
        whose tokens are those choices is accepted, then the full model's token after its end.
        Every layer keeps the prefix, node 0 and the path's keys/values, moved next to each other."""
        start = self.fed
        self._embed(self._ids(inputs))
        self._climb(0, draft_exit, "draft")
        states = self.waiting[draft_exit]
        self.waiting[draft_exit] = []
        tree = DraftTree(start, width, depth, self.vocab_size, states[0].dtype, self.device)
        positions = tree.positions()
        table = self.model.positions(states[0], positions) if self._sliceable_positions else None
        for _ in range(depth):
            first, count = tree.grow(self._head(states[-1]))
            hidden = self.model.embed(tree.tokens[None, first:first + count], positions[:, first:first + count])
            states.append(self._tree_layers(0, draft_exit, hidden, tree, first, positions, table, "draft"))
        hidden = self._tree_layers(draft_exit, self.num_layers, torch.cat(states, dim=1), tree, 0, positions, table, "verify")
        path, new = tree.accepted(self._head(hidden).argmax(-1))
        self.fed = start + 1 + len(path)
        if path:
            self.cache.keep_all(start + 1, torch.tensor(path, device=self.device) + start)
        else:
            for index in range(self.num_layers):
                self.cache.crop(index, start + 1)
        return new, len(path)

    def _tree_layers(self, first_layer: int, stop: int, hidden: torch.Tensor, tree: DraftTree, first: int, positions: torch.Tensor,
                     table, phase: str) -> torch.Tensor:
        """Layers first_layer .. stop-1, one call each, over the tree's nodes first .. first + n - 1
        (n = hidden's positions), under the tree's masks; their position embeddings are rows of
        `table` (the round's, where the layout's tables slice) or built here."""
        self._phase = phase
        count = hidden.shape[1]
        if table is not None:
            position_embeddings = self.model.slice_positions(table, first, count)
        else:
            position_embeddings = self.model.positions(hidden, positions[:, first:first + count])
        masks: dict = {}
        clock = self.clock
        for index in range(first_layer, stop):
            window = self.model.windows[index]
            if window not in masks:
                masks[window] = tree.mask(first, count, window, positions)
            began = clock.now() if clock else 0.0
            hidden = self._steps[index](hidden, masks[window], position_embeddings, self.cache)
            if clock:
                clock.add(phase, "layer", count, clock.now() - began)
        return hidden

    def _accept_sampled(self, drafts: list[torch.Tensor], draft_probabilities: list[torch.Tensor], full: torch.Tensor,
                        generator: torch.Generator) -> tuple[list[int], int]:
        """The speculative-sampling rule over one round at once: `full` is p [length + 1, vocab].
        Each row's replacement is drawn up front (the one used is independent of the acceptance
        draws), so the round reads back once."""
        length = len(drafts)
        fallback = full
        if length:
            proposed = torch.cat(drafts)
            q = torch.cat(draft_probabilities)
            p = full[:-1]
            rows = torch.arange(length, device=full.device)
            uniform = torch.rand(length, generator=generator, device=full.device)
            accept = uniform * q[rows, proposed] < p[rows, proposed]  # probability min(1, p / q)
            residual = (p - q).clamp_min(0)
            # Where p <= q everywhere (p == q) a rejection has probability 0; any row will do there.
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)
            fallback = torch.cat([residual, full[-1:]])
        replacements = torch.multinomial(fallback, 1, generator=generator)[:, 0]
        if not length:
            return replacements.tolist(), 0
        values = torch.cat([accept.long(), proposed, replacements]).tolist()
        accepted, proposed_ids, replacement_ids = values[:length], values[length:2 * length], values[2 * length:]
        agreed = 0
        while agreed < length and accepted[agreed]:
            agreed += 1
        return proposed_ids[:agreed] + [replacement_ids[agreed]], agreed


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
