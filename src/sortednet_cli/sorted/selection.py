"""Automatic selection (paper Fig. 2c): every sub-model at or above an accuracy bar, no search.

Works on grid rows (dicts with width, depth, accuracy, relative and cost columns), so it serves
any model whose grid has those columns.
"""

from __future__ import annotations

from typing import Optional

from ..errors import UserError
from .submodel import depth_order_key, parse_depth

COST_COLUMNS = {"mflops": "mflops", "params": "params", "latency": "latency_ms_bs1"}


def check_bar(min_accuracy: Optional[float], min_relative: Optional[float]) -> None:
    """Fail early (before any evaluation) on a bar that cannot be met or makes no sense."""
    if min_accuracy is None and min_relative is None:
        raise UserError("give select.min_accuracy and/or select.min_relative")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise UserError(f"select.min_accuracy must be in [0, 1] (accuracy is a fraction), got {min_accuracy}")
    if min_relative is not None and not 0 < min_relative <= 1:
        raise UserError(f"select.min_relative must be in (0, 1] (a fraction of the baseline), got {min_relative}")


def accuracy_bar(baseline: float, min_accuracy: Optional[float], min_relative: Optional[float]) -> dict:
    """The bar: the higher of the absolute and the relative one, whichever are given."""
    check_bar(min_accuracy, min_relative)
    candidates = []
    if min_accuracy is not None:
        candidates.append(min_accuracy)
    if min_relative is not None:
        candidates.append(min_relative * baseline)
    return {"accuracy": max(candidates), "min_accuracy": min_accuracy, "min_relative": min_relative, "baseline": baseline}


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """Rows no other row beats: none is at most as costly and at least as accurate while
    strictly better in one of the two. Exact ties are all kept. Sorted by cost."""
    front = []
    for row in rows:
        dominated = any(
            other[cost] <= row[cost] and other["accuracy"] >= row["accuracy"]
            and (other[cost] < row[cost] or other["accuracy"] > row["accuracy"])
            for other in rows
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: (r[cost], -r["accuracy"]))


def select(rows: list[dict], baseline: float, min_accuracy: Optional[float], min_relative: Optional[float], cost_name: str, budget: Optional[float] = None) -> dict:
    cost = COST_COLUMNS[cost_name]
    if any(row.get(cost) is None for row in rows):
        raise UserError(f"select.cost={cost_name} needs the {cost} column filled (run eval-grid with eval.latency=true)")
    bar = accuracy_bar(baseline, min_accuracy, min_relative)
    passing = sorted((r for r in rows if r["accuracy"] >= bar["accuracy"]), key=lambda r: (r[cost], -r["accuracy"]))
    narrowest = {}
    for row in sorted(passing, key=lambda r: r["width"]):
        narrowest.setdefault(row["depth"], row)
    best = max(rows, key=lambda r: (r["accuracy"], -r[cost]))
    result = {
        "bar": {**bar, "cost": cost_name},
        "selected": passing,
        "pareto": pareto_front(passing, cost),
        "narrowest_per_depth": [narrowest[d] for d in sorted(narrowest, key=lambda d: depth_order_key(parse_depth(d)))],
        "best": best,
        "budget": None,
    }
    if budget is not None:
        affordable = [r for r in rows if r[cost] <= budget]
        pick = max(affordable, key=lambda r: (r["accuracy"], -r[cost])) if affordable else None
        result["budget"] = {"limit": budget, "cost": cost_name, "best": pick, "passes_bar": bool(pick and pick["accuracy"] >= bar["accuracy"])}
    return result
