"""Automatic selection (paper Fig. 2c): every sub-model at or above a bar on the task's metric,
no search.

Works on grid rows (dicts with width, depth, the metric's column, relative and cost columns), so
it serves any model and task. "Above the bar" follows the metric's direction: for a
lower-is-better metric (a language model's loss) the bar is a ceiling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..errors import UserError
from .submodel import depth_order_key, parse_depth

if TYPE_CHECKING:  # a task's Metric; this module only uses its methods
    from ..tasks.base import Metric

COST_COLUMNS = {"mflops": "mflops", "params": "params", "latency": "latency_ms_bs1"}


def check_bar(metric: Metric, metric_bar: Optional[float], min_relative: Optional[float]) -> None:
    """Fail early (before any evaluation) on a bar that cannot be met or makes no sense."""
    if metric_bar is None and min_relative is None:
        raise UserError("give select.metric_bar and/or select.min_relative")
    if metric_bar is not None and not metric.in_range(metric_bar):
        raise UserError(f"select.metric_bar must be in {metric.range_text()} (the range of {metric.described()}), got {metric_bar}")
    if min_relative is not None and not 0 < min_relative <= 1:
        raise UserError(f"select.min_relative must be in (0, 1] (a fraction of the baseline), got {min_relative}")


def selection_bar(metric: Metric, baseline: float, metric_bar: Optional[float], min_relative: Optional[float]) -> dict:
    """The bar: the stricter of the absolute one (`select.metric_bar`, in the metric's units: a
    floor when higher is better, a ceiling when lower is) and the relative one (`min_relative` of
    the baseline, by the metric's `relative`)."""
    check_bar(metric, metric_bar, min_relative)
    candidates = []
    if metric_bar is not None:
        candidates.append(metric_bar)
    if min_relative is not None:
        candidates.append(min_relative * baseline if metric.higher_is_better else baseline / min_relative)
    return {metric.name: max(candidates) if metric.higher_is_better else min(candidates),
            "metric_bar": metric_bar, "min_relative": min_relative, "baseline": baseline}


def _better_or_equal(metric: Metric, a: dict, b: dict) -> bool:
    return metric.at_least_as_good(a[metric.name], b[metric.name])


def _ranking(metric: Metric, cost: str):
    """Sort key: cheapest first, then the better metric value."""
    sign = -1 if metric.higher_is_better else 1
    return lambda r: (r[cost], sign * r[metric.name])


def pareto_front(rows: list[dict], cost: str, metric: Metric) -> list[dict]:
    """Rows no other row beats: none is at most as costly and at least as good while strictly
    better in one of the two. Exact ties are all kept. Sorted by cost."""
    key = metric.name
    front = []
    for row in rows:
        dominated = any(
            other[cost] <= row[cost] and _better_or_equal(metric, other, row)
            and (other[cost] < row[cost] or other[key] != row[key])
            for other in rows
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=_ranking(metric, cost))


def select(rows: list[dict], metric: Metric, baseline: float, metric_bar: Optional[float], min_relative: Optional[float], cost_name: str, budget: Optional[float] = None) -> dict:
    cost = COST_COLUMNS[cost_name]
    if any(row.get(cost) is None for row in rows):
        raise UserError(f"select.cost={cost_name} needs the {cost} column filled (run eval-grid with eval.latency=true)")
    bar = selection_bar(metric, baseline, metric_bar, min_relative)
    passes = lambda r: metric.at_least_as_good(r[metric.name], bar[metric.name])  # noqa: E731
    passing = sorted((r for r in rows if passes(r)), key=_ranking(metric, cost))
    narrowest = {}
    for row in sorted(passing, key=lambda r: r["width"]):
        narrowest.setdefault(row["depth"], row)
    best = min(rows, key=lambda r: (-r[metric.name] if metric.higher_is_better else r[metric.name], r[cost]))
    result = {
        "bar": {**bar, "cost": cost_name},
        "selected": passing,
        "pareto": pareto_front(passing, cost, metric),
        "narrowest_per_depth": [narrowest[d] for d in sorted(narrowest, key=lambda d: depth_order_key(parse_depth(d)))],
        "best": best,
        "budget": None,
    }
    if budget is not None:
        affordable = [r for r in rows if r[cost] <= budget]
        pick = min(affordable, key=lambda r: (-r[metric.name] if metric.higher_is_better else r[metric.name], r[cost])) if affordable else None
        result["budget"] = {"limit": budget, "cost": cost_name, "best": pick, "passes_bar": bool(pick and passes(pick))}
    return result
