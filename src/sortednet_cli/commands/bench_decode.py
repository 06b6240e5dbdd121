"""sortednet bench-decode"""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from ..cli import hydra_command
from ..decode.bench import bench_decode, plot_decode
from ..engine.eval_grid import open_decoder
from ..errors import UserError
from ..jsonfiles import write_json
from ..reports.console import make_console
from ..tasks import build_task


def validation_prompts(decoder_run, count: int, length: int) -> list[list[int]]:
    """`count` windows of `length` tokens spread evenly over the run's validation text."""
    task = build_task(decoder_run.run.cfg.data, decoder_run.run.cfg.model, decoder_run.run.device, state=decoder_run.run.task_state)
    return task.prompt_windows(count, length)


def default_draft_exits(depth: int) -> list[int]:
    return sorted({max(1, round(depth * f)) for f in (0.25, 1 / 3, 0.5)} - {depth})


def speed_table(result: dict) -> Table:
    """Every row's tokens/s, speed-up over full greedy with its 95% interval, acceptance and
    whether it reproduced full greedy."""
    medians = f", medians of {result['rounds']} interleaved rounds" if result["rounds"] > 1 else ""
    table = Table(title=f"decoding at batch 1, {result['threads']} threads (speed-up over full greedy{medians})")
    for column in ("setting", "tokens/s", "speed-up", "95% interval", "acceptance", "tokens/verify", "agreement", "same as greedy"):
        table.add_column(column)
    percent = lambda v: "" if v is None else f"{v:.1%}"  # noqa: E731
    for row in result["rows"]:
        low, high = row["speedup_interval"]
        table.add_row(row["label"], f"{row['tokens_per_second']:.1f}", f"{row['speedup']:.2f}x", f"{low:.2f}-{high:.2f}",
                      percent(row.get("acceptance_rate")),
                      "" if row.get("tokens_per_verification") is None else f"{row['tokens_per_verification']:.2f}",
                      percent(row.get("agreement")), "" if row.get("identical") is None else ("yes" if row["identical"] else "NO"))
    return table


def breakdown_table(rows: list[dict]) -> Table:
    """Where a generation's time goes, ms per generated token (engine.PhaseClock), for the rows
    that were timed."""
    table = Table(title="where the time goes (ms per generated token; full greedy's layers count as verify)")
    for column in ("setting", "total", "prefill", "draft", "verify", "head", "bookkeeping", "layer calls/token",
                   "ms/layer call, 1 position", "ms/verify call (positions)"):
        table.add_column(column)
    number = lambda v, digits=3: "" if v is None else f"{v:.{digits}f}"  # noqa: E731
    for row in rows:
        breakdown = row.get("breakdown")
        if breakdown is None:
            continue
        phases = breakdown["ms_per_token"]
        several = breakdown["layer_ms_several_positions"]
        table.add_row(row["label"], number(sum(phases.values())), *(number(phases[p]) for p in ("prefill", "draft", "verify", "head", "bookkeeping")),
                      number(breakdown["layer_calls_per_token"], 2), number(breakdown["layer_ms_one_position"]),
                      "" if several is None else f"{several:.3f} ({breakdown['verify_positions_per_call']:.1f})")
    return table


@hydra_command("bench_decode")
def main(cfg: DictConfig) -> None:
    console = make_console()
    decoder_run = open_decoder(cfg.checkpoint, cfg.device.value, cfg.threads, console)
    settings, depth = cfg.bench, decoder_run.depth
    prompts = [decoder_run.encode(p) for p in settings.prompts] or validation_prompts(decoder_run, settings.prompt_count, settings.prompt_tokens)
    exits = list(settings.exits) if settings.exits is not None else list(range(1, depth + 1))
    draft_exits = list(settings.draft_exits) if settings.draft_exits is not None else default_draft_exits(depth)
    library_exits = list(settings.library_exits) if settings.library_exits is not None else draft_exits
    widths = list(settings.draft_widths)
    if not widths or any(w < 1 for w in widths):
        raise UserError(f"bench.draft_widths must be a list of ints >= 1 (1: a chain of drafts, more: a tree), not {widths}")
    stops = list(settings.draft_stops)
    if not stops or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1 for v in stops):
        raise UserError(f"bench.draft_stops must be a list of probabilities in [0, 1) (0: drafts of the full length), not {stops}")
    chains_at = lambda w: stops if w == 1 else [0.0]  # noqa: E731  (a stop ends a chain; trees keep their depth)
    speculative = [(e, k, w, s) for w in widths for s in chains_at(w) for e in draft_exits for k in OmegaConf.to_container(settings.draft_lens)]
    if settings.auto:
        speculative += [("auto", "auto", w, s) for w in widths for s in chains_at(w)]
    context = decoder_run.model.config.max_position_embeddings
    new_tokens = min(settings.max_new_tokens, min(context - len(p) for p in prompts))
    clipped = f" (bench.max_new_tokens={settings.max_new_tokens} clipped by the model's {context}-token context)" if new_tokens < settings.max_new_tokens else ""
    console.print(f"bench-decode on {decoder_run.run.device} ({cfg.threads or 'default'} threads): {len(prompts)} prompts x "
                  f"{new_tokens} new tokens{clipped}, {depth}-layer decoder {decoder_run.run.path}", highlight=False)
    if settings.temperature < 0:
        raise UserError(f"bench.temperature must be >= 0 (0: greedy rows only), not {settings.temperature}")
    if settings.rounds < 1:
        raise UserError(f"bench.rounds must be >= 1, not {settings.rounds}")
    result = bench_decode(decoder_run.model, prompts, settings.max_new_tokens, exits, list(settings.thresholds), speculative, library_exits,
                          settings.temperature, settings.rounds)
    result["checkpoint"] = str(decoder_run.run.path)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_json(run_dir / "decode.json", result)
    plot_decode(result, run_dir / "decode.png", title=f"self-speculative decoding, {depth}-layer decoder")

    console.print(speed_table(result))
    pick = result["pick"]
    alike = f"; as fast within its 95% interval: {', '.join(pick['as_fast_within_noise'])}" if pick["as_fast_within_noise"] else ""
    console.print(f"pick: {pick['label']} ({pick['reason']}{alike})", highlight=False)
    for entry in result["auto_against_fixed"]:
        within = ", within its 95% interval" if entry["within_best_interval"] else ""
        console.print(f"{entry['label']}: {entry['speedup']:.2f}x full greedy, {entry['ratio']:.2f}x the best fixed setting "
                      f"({entry['best_fixed']}, {entry['best_fixed_speedup']:.2f}x{within})", highlight=False)
    sampled = [r for r in result["rows"] if r["mode"] == "speculative_sampled"]
    if sampled:
        best = max(sampled, key=lambda r: r["over_full_sampling"])
        console.print(f"sampled: {best['label']} {best['over_full_sampling']:.2f}x full sampling at "
                      f"{100 * (best['acceptance_rate'] or 0):.0f}% acceptance (distributed as the full model's samples)", highlight=False)
    console.print(breakdown_table(result["rows"]))
    if result["library_unsupported"]:
        console.print(result["library_unsupported"], highlight=False, markup=False)
    console.print(f"wrote {run_dir / 'decode.json'}, {run_dir / 'decode.png'}", highlight=False)
