"""The transformers baselines: `generate` greedy, and its own self-speculation
(`assistant_early_exit`), on the same weights as ExitDecoder.

The library's early-exit assistant shares the weights but not the cache: it sets
num_hidden_layers = E for drafting and keeps a second cache for the draft layers, so the first E
layers run twice for every accepted token. The assistant reads its draft length from the model's
stored generation config (not from `generate`'s arguments) and the "heuristic" schedule writes the
final length back there, so both are set for one call and restored (with the layer count, which
the assistant leaves lowered when it fails on a layout).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch

from ..errors import UserError
from ..models.transformer import SortedDecoder
from ..values import is_int
from .engine import Generation, check_request

SCHEDULES = (None, "constant", "heuristic", "heuristic_transient")


@contextmanager
def _assistant_settings(model: SortedDecoder, draft_len: Optional[int], schedule: Optional[str]) -> Iterator[None]:
    config = model.hf.generation_config
    saved = (config.num_assistant_tokens, config.num_assistant_tokens_schedule)
    layers = model.hf.config.num_hidden_layers  # the assistant lowers it while drafting and leaves it so when drafting fails
    if draft_len is not None:
        config.num_assistant_tokens = draft_len
    if schedule is not None:
        config.num_assistant_tokens_schedule = schedule
    try:
        yield
    finally:
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = saved
        model.hf.config.num_hidden_layers = layers


@torch.no_grad()
def _generate(model: SortedDecoder, prompt_ids: Sequence[int], max_new_tokens: int, mode: str, **options) -> Generation:
    """Greedy `generate` that stops only at the length: no eos (min_new_tokens as well, in case
    the stored config brings one back), and the context limit applied as in ExitDecoder."""
    context = int(model.config.max_position_embeddings)
    prompt, limit = check_request(prompt_ids, max_new_tokens, context, int(model.config.vocab_size))
    ids = torch.tensor([prompt], device=model.hf.device)
    started = time.perf_counter()
    tokens: list[int] = []
    if limit > 0:
        out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit, min_new_tokens=limit,
                                do_sample=False, eos_token_id=None, pad_token_id=0, **options)
        tokens = out[0, len(prompt):].tolist()
    seconds = time.perf_counter() - started
    stats = {"mode": mode, "new_tokens": len(tokens), "seconds": seconds,
             "tokens_per_second": len(tokens) / seconds if seconds > 0 else 0.0,
             "stop_reason": "max_new_tokens" if limit == max_new_tokens else "context_limit"}
    if limit < max_new_tokens:
        stats["context_limit"] = context
    return Generation(tokens, stats)


def library_greedy(model: SortedDecoder, prompt_ids: Sequence[int], max_new_tokens: int) -> Generation:
    """`model.hf.generate`, greedy, no assistant: the library's own decoding speed."""
    return _generate(model, prompt_ids, max_new_tokens, "library_greedy")


def library_assistant_early_exit(model: SortedDecoder, prompt_ids: Sequence[int], max_new_tokens: int, exit: int,
                                 draft_len: Optional[int] = None, schedule: Optional[str] = None) -> Generation:
    """`model.hf.generate(..., assistant_early_exit=exit)`, greedy. draft_len / schedule set the
    assistant's num_assistant_tokens / num_assistant_tokens_schedule for this call; None keeps the
    library's defaults (20 tokens, "constant", plus its confidence cut-off at 0.4)."""
    layers = len(model.layers)
    if not is_int(exit) or not 1 <= exit < layers:
        raise UserError(f"assistant_early_exit must be in 1..{layers - 1} (the model has {layers} layers), not {exit!r}")
    if draft_len is not None and (not is_int(draft_len) or draft_len < 1):
        raise UserError(f"the library's draft length must be an int >= 1, not {draft_len!r}")
    if schedule not in SCHEDULES:
        raise UserError(f"the library's draft schedule is one of {', '.join(s for s in SCHEDULES if s)}, not {schedule!r}")
    with _assistant_settings(model, draft_len, schedule):
        generation = _generate(model, prompt_ids, max_new_tokens, "library_assistant_early_exit", assistant_early_exit=exit)
    generation.stats.update(exit=exit, draft_len=draft_len, schedule=schedule)
    return generation
