"""selected.json, selection.png and the terminal summary of a selection."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..jsonfiles import write_json
from ..sorted.selection import COST_COLUMNS
from ..tasks.base import Metric
from .grid_report import draw_heatmap, heatmap_style


def write_selection(result: dict, rows: list[dict], title: str, run_dir: Path, metric: Metric) -> None:
    write_json(run_dir / "selected.json", result)
    save_selection_plot(result, rows, title, run_dir / "selection.png", metric)


def save_selection_plot(result: dict, rows: list[dict], title: str, path: Path, metric: Metric) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = COST_COLUMNS[result["bar"]["cost"]]
    key = metric.name
    bar = result["bar"][key]
    scale = 100 if metric.is_fraction else 1
    n_widths = len({r["width"] for r in rows})
    fig, (scatter, heat) = plt.subplots(1, 2, figsize=(6 + max(5.0, 0.75 * n_widths + 2), 5.2), gridspec_kw={"width_ratios": [1, max(1.0, n_widths / 8)]})
    above = [r for r in rows if metric.at_least_as_good(r[key], bar)]
    below = [r for r in rows if not metric.at_least_as_good(r[key], bar)]
    scatter.scatter([r[cost] for r in below], [scale * r[key] for r in below], s=14, color="#bbbbbb", label="below the bar")
    scatter.scatter([r[cost] for r in above], [scale * r[key] for r in above], s=16, color="#1f77b4", label="selected")
    front = result["pareto"]
    if front:
        scatter.plot([r[cost] for r in front], [scale * r[key] for r in front], "-o", color="#d62728", ms=4, label="Pareto front")
    scatter.axhline(scale * bar, color="black", ls="--", lw=1, label=f"bar {metric.format(bar, 1)}")
    scatter.set_xlabel({"mflops": "MFLOPs per example", "params": "parameters", "latency_ms_bs1": "latency (ms/example, batch 1)"}[cost])
    scatter.set_ylabel(f"{key} (%)" if metric.is_fraction else key)
    scatter.set_title(f"{len(above)} of {len(rows)} sub-models selected", fontsize=10)
    scatter.legend(fontsize=8, loc="lower right" if metric.higher_is_better else "upper right")
    scatter.grid(alpha=0.3)
    draw_heatmap(heat, rows, bar=bar, **heatmap_style(metric))
    heat.set_title("grid, cells below the bar masked", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_selection(console: Console, result: dict, metric: Metric) -> None:
    bar = result["bar"]
    key = metric.name
    pieces = []
    if bar["min_relative"] is not None:
        pieces.append(f"{100 * bar['min_relative']:.0f}% of baseline {metric.format(bar['baseline'])}")
    if bar["metric_bar"] is not None:
        pieces.append(f"absolute {metric.format(bar['metric_bar'])}")
    console.print(f"bar: {metric.format(bar[key])} ({' and '.join(pieces)}), cost: {bar['cost']}", highlight=False)
    if not result["selected"]:
        best = result["best"]
        console.print(
            f"no sub-model reaches the bar; the best is width {best['width']:g} depth {best['depth']} "
            f"at {metric.format(best[key])}",
            highlight=False,
        )
        return
    cost = COST_COLUMNS[bar["cost"]]
    cheapest = result["selected"][0]
    console.print(
        f"selected {len(result['selected'])} sub-models, {len(result['pareto'])} on the Pareto front; "
        f"cheapest: width {cheapest['width']:g} depth {cheapest['depth']} ({cheapest[cost]:g} {bar['cost']}, "
        f"{metric.format(cheapest[key])})",
        highlight=False,
    )
    if result["budget"]:
        pick = result["budget"]["best"]
        if pick:
            console.print(f"within budget {result['budget']['limit']:g} {bar['cost']}: width {pick['width']:g} depth {pick['depth']} at {metric.format(pick[key])}", highlight=False)
        else:
            console.print(f"no sub-model fits within budget {result['budget']['limit']:g} {bar['cost']}", highlight=False)
