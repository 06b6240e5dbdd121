"""Decoding speed of every mode against full greedy, in one process on the same prompts.

Speed-ups of self-speculation depend on the acceptance rate, so each speculative row carries it,
and each lossless claim is checked (`identical`: the same tokens as full greedy on every prompt).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..models.transformer import SortedDecoder
from .engine import AUTO, DraftExit, DraftLen, ExitDecoder, Generation, teacher_forced_agreement
from .library import library_assistant_early_exit, library_greedy

WARMUP_TOKENS = 8
INTERVAL_RESAMPLES = 1000  # bootstrap resamples of a row's paired ratios for its speed-up's 95% interval
Runner = Callable[[list[int], int], Generation]


def _warm_up(run: Runner, prompts: list[list[int]], max_new_tokens: int) -> None:
    """One short generation first: first calls pay for allocations and lazy initialisation."""
    run(prompts[0], min(WARMUP_TOKENS, max_new_tokens))


def _generations(run: Runner, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]:
    """Every prompt's generation, after a warm-up."""
    _warm_up(run, prompts, max_new_tokens)
    return [run(prompt, max_new_tokens) for prompt in prompts]


def _pooled_agreement(model: SortedDecoder, prompts: list[list[int]], generations: list[Generation]) -> float:
    """Teacher-forced agreement with the full model over all generated tokens of all prompts."""
    agreeing = sum(teacher_forced_agreement(model, p, g.tokens) * len(g.tokens) for p, g in zip(prompts, generations))
    return agreeing / sum(len(g.tokens) for g in generations)


def _pooled_breakdown(generations: list[Generation]) -> dict:
    """The generations' PhaseClock breakdowns as one: each figure weighted by its tokens."""
    total = sum(len(g.tokens) for g in generations)

    def pool(parts: list[tuple[object, int]]):
        first = parts[0][0]
        if isinstance(first, dict):
            return {key: pool([(part[key], n) for part, n in parts]) for key in first}
        known = [(value, n) for value, n in parts if value is not None]
        if not known:
            return None
        return sum(value * n for value, n in known) / sum(n for _, n in known)

    pooled = pool([(g.stats["breakdown"], len(g.tokens)) for g in generations])
    pooled["rounds"] = sum(g.stats["breakdown"]["rounds"] for g in generations)
    pooled["tokens"] = total
    return pooled


@dataclass
class _Case:
    """One row of the bench: what it is, how it generates, and what its generations add to it."""

    row: dict
    run: Runner
    describe: Callable[[list[Generation]], dict] = lambda runs: {}


def bench_decode(model: SortedDecoder, prompts: Sequence[Sequence[int]], max_new_tokens: int, exits: Sequence[int] = (),
                 thresholds: Sequence[float] = (), speculative_settings: Sequence[tuple[DraftExit, DraftLen, int, float]] = (),
                 library_exits: Sequence[int] = (), temperature: float = 0.0, rounds: int = 1) -> dict:
    """Rows for full greedy (the reference), the same through the library's layer modules where
    the layout has lean decoding steps (models/hf_layouts.py), each exit alone, early exit at each threshold,
    self-speculation at each (draft exit, draft length, draft width, draft stop; the first two may
    be "auto", a width above 1 drafts a tree, a stop above 0 ends a chain at the first draft the
    exit is less sure of), and transformers'
    greedy and assistant_early_exit at each exit (library defaults for its draft length); each
    with speedup = its tokens/s over full greedy's, the median over prompts and rounds of the
    two measured back to back on the same prompt (`_measure_interleaved`), and tokens_per_second
    the median over the `rounds`. "pick" is the lossless setting of highest speed-up;
    "auto_against_fixed" sets the automatic settings beside the best fixed one. Where a round's
    time goes (`breakdown`, engine.PhaseClock): the automatic rows time themselves as they run;
    full greedy and the best fixed setting are rerun once on a timed decoder for it. With a
    `temperature` > 0, also full sampling and each chain of drafts (width 1) sampled at it (the
    speculative-sampling rule: the same distribution, not the same draws), each with
    `over_full_sampling`, its tokens/s over full sampling's."""
    prompts = [[int(t) for t in p] for p in prompts]
    decoder = ExitDecoder(model)
    greedy: list[list[int]] = []  # full greedy's tokens per prompt, once measured

    def keep_greedy(runs: list[Generation]) -> dict:  # described first, before the rows compared with it
        greedy.extend(g.tokens for g in runs)
        return {}

    def identical(runs: list[Generation]) -> dict:
        return {"identical": all(g.tokens == expected for g, expected in zip(runs, greedy))}

    cases = [_Case({"mode": "full", "label": "full greedy"}, lambda p, n: decoder.full(p, n), keep_greedy)]
    if model.lean_decoding:  # what the layout's lean steps save, beside them
        library_layers = ExitDecoder(model, library_layers=True)
        cases.append(_Case({"mode": "full_library_layers", "label": "full greedy, library layers"},
                           lambda p, n: library_layers.full(p, n), identical))
    cases += [_Case({"mode": "exit", "label": f"exit {depth}", "exit": depth}, lambda p, n, depth=depth: decoder.exit(p, n, depth),
                    lambda runs: {"agreement": _pooled_agreement(model, prompts, runs)}) for depth in exits]
    cases += [_Case({"mode": "early_exit", "label": f"early exit t={threshold:g}", "threshold": threshold},
                    lambda p, n, threshold=threshold: decoder.early_exit(p, n, threshold),
                    lambda runs: _early_exit_fields(model, prompts, runs)) for threshold in thresholds]
    cases += _speculative_cases(decoder, speculative_settings, temperature, identical)
    library_cases, library_unsupported = _library_cases(model, prompts, library_exits, identical)
    rows = _measure_interleaved(cases + library_cases, prompts, max_new_tokens, rounds)
    timed = ExitDecoder(model, timed=True)
    rows[0]["breakdown"] = _pooled_breakdown(_generations(lambda p, n: timed.full(p, n), prompts, max_new_tokens))
    best_fixed = _best_fixed(rows)
    if best_fixed is not None:
        best_fixed["breakdown"] = _pooled_breakdown(_generations(
            lambda p, n: timed.speculative(p, n, best_fixed["draft_exit"], best_fixed["draft_len"], draft_width=best_fixed["draft_width"],
                                           draft_stop=best_fixed["draft_stop"]),
            prompts, max_new_tokens))
    context = int(model.config.max_position_embeddings)
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "num_layers": len(model.layers), "rounds": rounds,
            "new_tokens_per_prompt": [min(max_new_tokens, context - len(p)) for p in prompts],
            "threads": torch.get_num_threads(), "rows": rows, "pick": _pick(rows), "library_unsupported": library_unsupported,
            "auto_against_fixed": _auto_against_fixed(rows, best_fixed)}


def _speculative_cases(decoder: ExitDecoder, settings: Sequence[tuple[DraftExit, DraftLen, int, float]], temperature: float,
                       identical: Callable[[list[Generation]], dict]) -> list[_Case]:
    """A greedy row per (exit, length, width, stop) setting; with a temperature, full sampling and
    each chain setting sampled at it."""
    cases = [_Case({"mode": "speculative", "label": _label(e, k, w, s), "draft_exit": e, "draft_len": k, "draft_width": w, "draft_stop": s},
                   lambda p, n, e=e, k=k, w=w, s=s: decoder.speculative(p, n, e, k, draft_width=w, draft_stop=s),
                   lambda runs: {**_speculative_fields(runs), **identical(runs)})
             for e, k, w, s in settings]
    if temperature > 0:
        cases.append(_Case({"mode": "full_sampled", "label": f"full, sampled T={temperature:g}", "temperature": temperature},
                           lambda p, n: decoder.full(p, n, temperature=temperature)))
        cases += [_Case({"mode": "speculative_sampled", "label": f"{_label(e, k, w, s)}, sampled T={temperature:g}", "draft_exit": e,
                         "draft_len": k, "draft_stop": s, "temperature": temperature},
                        lambda p, n, e=e, k=k, s=s: decoder.speculative(p, n, e, k, temperature=temperature, draft_stop=s),
                        _speculative_fields) for e, k, w, s in settings if w == 1]
    return cases


def _label(draft_exit: DraftExit, draft_len: DraftLen, width: int, stop: float = 0.0) -> str:
    return f"E={draft_exit} K={draft_len}" + (f" W={width}" if width > 1 else "") + (f" stop={stop:g}" if stop else "")


def _measure_interleaved(cases: list[_Case], prompts: list[list[int]], max_new_tokens: int, rounds: int) -> list[dict]:
    """Every case on every prompt once per round, interleaved prompt by prompt: each case runs
    once first as a warm-up, then in every round each prompt goes through all the cases in turn,
    so a case and the reference it is compared with run within moments of each other on the
    same prompt (a CPU whose speed wanders from one second to the next moves both alike). The
    first case is the reference of `speedup`, the median over (round, prompt) of the case's
    tokens/s over the reference's there, with `speedup_interval` its 95% interval
    (median_interval; and the full_sampled row, where there is one, of `over_full_sampling`);
    `tokens_per_second` is the median over rounds of a round's tokens over its seconds."""
    for case in cases:
        _warm_up(case.run, prompts, max_new_tokens)
    runs: list[list[list[Generation]]] = [[] for _ in cases]  # case -> round -> one generation per prompt
    for _ in range(max(1, rounds)):
        for generations in runs:
            generations.append([])
        for prompt in prompts:
            for index, case in enumerate(cases):
                runs[index][-1].append(case.run(prompt, max_new_tokens))

    def rate(generation: Generation) -> float:
        return len(generation.tokens) / generation.stats["seconds"] if generation.stats["seconds"] > 0 else 0.0

    def ratios_over(reference: int, index: int) -> list[float]:
        pairs = [(rate(mine), rate(theirs)) for round_mine, round_theirs in zip(runs[index], runs[reference])
                 for mine, theirs in zip(round_mine, round_theirs)]
        return [r / ref if ref else 0.0 for r, ref in pairs]

    sampled_reference = next((i for i, case in enumerate(cases) if case.row["mode"] == "full_sampled"), None)
    rows = []
    for index, case in enumerate(cases):
        tokens = [sum(len(g.tokens) for g in generations) for generations in runs[index]]
        seconds = [sum(g.stats["seconds"] for g in generations) for generations in runs[index]]
        round_rates = [n / t if t > 0 else 0.0 for n, t in zip(tokens, seconds)]
        ratios = ratios_over(0, index)
        row = {**case.row, "tokens": sum(tokens), "seconds": sum(seconds), "tokens_per_second": statistics.median(round_rates),
               "speedup": statistics.median(ratios), "speedup_interval": median_interval(ratios)}
        if len(round_rates) > 1:
            row["round_tokens_per_second"] = round_rates
        if sampled_reference is not None and case.row["mode"] in ("full_sampled", "speculative_sampled"):
            row["over_full_sampling"] = statistics.median(ratios_over(sampled_reference, index))
        row.update(case.describe(runs[index][-1]))
        rows.append(row)
    return rows


def median_interval(values: Sequence[float], resamples: int = INTERVAL_RESAMPLES, seed: int = 0) -> list[float]:
    """[low, high]: a 95% percentile-bootstrap interval of the median of `values` (resampled with
    replacement, seeded, so a bench's numbers are reproducible from its pairs). It tells which
    rows of one run differ by more than their prompts and the machine's jitter do (on this
    project's VM the best row moved 0.1-0.2x from run to run); a shift of the whole machine
    between runs moves every row alike and is not in it."""
    if len(values) == 1:
        return [values[0], values[0]]
    draw = random.Random(seed).choices
    medians = sorted(statistics.median(draw(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def _early_exit_fields(model: SortedDecoder, prompts: list[list[int]], runs: list[Generation]) -> dict:
    exits_used = [e for g in runs for e in g.stats["exits_used"]]
    return {"mean_exit_layer": sum(exits_used) / len(exits_used), "agreement": _pooled_agreement(model, prompts, runs)}


def _speculative_fields(runs: list[Generation]) -> dict:
    """Acceptance and tokens per round of a speculative row; for an automatic one, where its
    time went (the generations timed themselves) and what it chose."""
    drafted = sum(g.stats["drafted"] for g in runs)
    fields = {"acceptance_rate": sum(g.stats["accepted"] for g in runs) / drafted if drafted else None,
              "tokens_per_verification": sum(len(g.tokens) for g in runs) / sum(g.stats["rounds"] for g in runs)}
    if "breakdown" in runs[0].stats:
        fields.update(breakdown=_pooled_breakdown(runs), chosen=_chosen(runs))
    return fields


def _library_cases(model: SortedDecoder, prompts: list[list[int]], library_exits: Sequence[int],
                   identical: Callable[[list[Generation]], dict]) -> tuple[list[_Case], Optional[str]]:
    """transformers' greedy and its assistant_early_exit at each exit, and why the latter could
    not run on this architecture (None when it ran): a two-token probe decides before any timing."""
    cases = [_Case({"mode": "library_greedy", "label": "transformers greedy"}, lambda p, n: library_greedy(model, p, n), identical)]
    for depth in library_exits:
        try:
            library_assistant_early_exit(model, prompts[0], 2, depth)
        except (IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
            # The library's early-exit assistant does not run on every architecture (GPT-2 and
            # GPT-NeoX index a cache of the draft's depth with the full depth's layer ids).
            return cases, f"transformers' assistant_early_exit fails on {model.config.model_type}: {type(exc).__name__}: {exc}"
        cases.append(_Case({"mode": "library_assistant_early_exit", "label": f"transformers E={depth}", "exit": depth},
                           lambda p, n, depth=depth: library_assistant_early_exit(model, p, n, depth), identical))
    return cases, None


def _chosen(generations: list[Generation]) -> list[str]:
    """How often each (exit, length) was chosen, over every prompt, most frequent first."""
    counts = Counter()
    for g in generations:
        counts.update(zip(g.stats.get("draft_exits") or [g.stats["draft_exit"]] * g.stats["rounds"], g.stats["draft_lengths"]))
    return [f"E={e} K={k}: {n}" for (e, k), n in counts.most_common()]


def _best_fixed(rows: list[dict]) -> Optional[dict]:
    """The lossless speculative row of highest speed-up whose exit and length were both fixed."""
    fixed = [r for r in rows if r["mode"] == "speculative" and AUTO not in (r["draft_exit"], r["draft_len"]) and r["identical"]]
    return max(fixed, key=lambda r: r["speedup"]) if fixed else None


def _auto_against_fixed(rows: list[dict], best_fixed: Optional[dict]) -> list[dict]:
    """Each speculative row with an automatic choice, against the best fixed setting measured."""
    if best_fixed is None:
        return []
    return [{"label": r["label"], "speedup": r["speedup"], "best_fixed": best_fixed["label"], "best_fixed_speedup": best_fixed["speedup"],
             "ratio": r["speedup"] / best_fixed["speedup"], "identical": r["identical"],
             "within_best_interval": best_fixed["speedup_interval"][0] <= r["speedup"]}
            for r in rows if r["mode"] == "speculative" and AUTO in (r["draft_exit"], r["draft_len"])]


def agreement_with_full(model: SortedDecoder, sub_model: SortedDecoder, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> float:
    """How often the full `model` agrees with `sub_model` (a sub-model extracted from it): the
    teacher-forced agreement of the sub-model's greedy continuation of each prompt, pooled over
    every generated token (the grid's `agreement` column; 1 for the full model itself, but for
    float near-ties between its cached and its batched computation)."""
    prompts = [[int(t) for t in p] for p in prompts]
    decoder = ExitDecoder(sub_model)
    return _pooled_agreement(model, prompts, [decoder.full(prompt, max_new_tokens) for prompt in prompts])


def ms_per_decoded_token(model: SortedDecoder, prompt: Sequence[int], repeats: int, new_tokens: int = 32) -> float:
    """ms per token of greedy decoding at batch 1 with a KV cache, the prompt's prefill left out:
    (time for `new_tokens` - time for 1) / (new_tokens - 1), median over `repeats`."""
    decoder = ExitDecoder(model)
    prompt = [int(t) for t in prompt]
    new_tokens = max(2, min(new_tokens, model.config.max_position_embeddings - len(prompt)))
    decoder.full(prompt, 4)  # warm-up
    per_token = []
    for _ in range(max(1, repeats)):
        one = decoder.full(prompt, 1).stats["seconds"]
        many = decoder.full(prompt, new_tokens).stats["seconds"]
        per_token.append(max(0.0, many - one) / (new_tokens - 1))
    return 1000 * statistics.median(per_token)


def _pick(rows: list[dict]) -> dict:
    """The fastest of full greedy and the speculative settings that reproduced it exactly, by
    speed-up over full greedy (with interleaved rounds the median of per-round ratios, which a
    drifting CPU moves less than the rows' median tokens/s); `as_fast_within_noise`, the others
    whose speed-up reaches the low end of the pick's 95% interval."""
    full = rows[0]
    speculative = [r for r in rows if r["mode"] == "speculative"]
    lossless = [r for r in speculative if r["identical"]]
    best = max([full, *lossless], key=lambda r: r["speedup"])
    if best is not full:
        reason = (f"{best['label']}: {best['speedup']:.2f}x full greedy at {100 * (best['acceptance_rate'] or 0):.0f}% "
                  f"acceptance, token-identical on every prompt")
    elif not speculative:
        reason = "full greedy: no self-speculative setting was measured"
    elif not lossless:
        reason = "full greedy: no self-speculative setting reproduced its output (check the dtype: float32 is exact)"
    else:
        fastest = max(lossless, key=lambda r: r["speedup"])
        reason = f"full greedy: the fastest lossless speculative setting, {fastest['label']}, reached only {fastest['speedup']:.2f}x"
    low = best["speedup_interval"][0]
    alike = [r["label"] for r in [full, *lossless] if r is not best and r["speedup"] >= low]
    return {"label": best["label"], "mode": best["mode"], "speedup": best["speedup"], "reason": reason, "as_fast_within_noise": alike}


def plot_decode(result: dict, path: Union[str, Path], title: Optional[str] = None) -> None:
    """Speed-up (with its 95% interval) against acceptance rate of the speculative settings, with
    full greedy (1.0) and the best transformers assistant_early_exit as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    points = [r for r in rows if r["mode"] == "speculative" and r["acceptance_rate"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = ["#1f77b4" if r["identical"] else "#d62728" for r in points]
    ax.scatter([100 * r["acceptance_rate"] for r in points], [r["speedup"] for r in points], color=colors, s=22, zorder=3)
    for r, color in zip(points, colors):  # the speed-up's 95% interval
        low, high = r["speedup_interval"]
        ax.vlines(100 * r["acceptance_rate"], low, high, color=color, lw=1, alpha=0.5, zorder=2)
    for r in points:
        ax.annotate(r["label"], (100 * r["acceptance_rate"], r["speedup"]), xytext=(4, 3), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, color="black", lw=1, label="full greedy (ours)")
    library = [r for r in rows if r["mode"] == "library_assistant_early_exit"]
    if library:
        best = max(library, key=lambda r: r["speedup"])
        ax.axhline(best["speedup"], color="#ff7f0e", ls="--", lw=1, label=f"{best['label']} assistant_early_exit")
    ax.set_xlabel("acceptance rate (%)")
    ax.set_ylabel("speed-up over full greedy (tokens/s)")
    ax.set_title(title or f"self-speculative decoding, {result['prompts']} prompts x {result['max_new_tokens']} tokens", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
