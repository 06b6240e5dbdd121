"""describe's memory estimate as a table and memory.json (engine/memory.py computes it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.table import Table

from ..jsonfiles import write_json

GIB = 1024 ** 3


def plan_summary(plan) -> str:
    offload = ", CPU offload" if plan.cpu_offload else ""
    checkpointing = "on" if plan.gradient_checkpointing else "off"
    ranks = f"{plan.world_size} rank" + ("s" if plan.world_size > 1 else "")
    return (f"{plan.strategy} on {ranks}, {plan.precision}, gradient checkpointing {checkpointing}{offload}, "
            f"{plan.batch_size} x {plan.seq_len} tokens per rank and draw")


def memory_table(estimate) -> tuple[Table, str]:
    """The lines in GiB, and the total per rank (with what fsdp's CPU offload keeps on the host)."""
    table = Table(title=f"memory per rank for the full model ({estimate.parameters:,} parameters), estimated: {plan_summary(estimate.plan)}")
    for column, justify in (("", "left"), ("GiB", "right"), ("what", "left")):
        table.add_column(column, justify=justify)
    for line in estimate.lines:
        table.add_row(line.name + (" (host)" if line.on_host else ""), f"{line.bytes / GIB:.2f}", line.note)
    total = f"total per rank: {estimate.device_bytes / GIB:.2f} GiB on the device"
    if estimate.host_bytes:
        total += f", {estimate.host_bytes / GIB:.2f} GiB in host memory"
    return table, total + " (not counted: the CUDA context and allocator fragmentation)"


def write_memory_json(estimate, path: Path) -> Path:
    write_json(path, {
        "plan": dataclasses.asdict(estimate.plan),
        "parameters": estimate.parameters,
        "lines": [dataclasses.asdict(line) for line in estimate.lines],
        "device_bytes": estimate.device_bytes,
        "host_bytes": estimate.host_bytes,
        "device_gib": estimate.device_bytes / GIB,
    })
    return path
