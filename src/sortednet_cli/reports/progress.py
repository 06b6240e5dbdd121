"""Training progress: a rich bar with ETA on a terminal, plain lines (also with ETA) elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _BarAndInfo(Progress):
    """The bar on one line and the latest loss, lr and sub-model on the next, so an 80-column
    terminal shows both in full."""

    info = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.info:
            yield Text(self.info, style="dim")


class TrainProgress:
    def __init__(self, console: Console, total_steps: int, done_steps: int, steps_per_epoch: int, log_every: int):
        self.console = console
        self.total = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.log_every = max(1, log_every)
        self.start_done = done_steps
        self.start_time = time.perf_counter()
        self.info = ""
        self.bar = None
        if console.is_terminal:
            self.bar = _BarAndInfo(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, epoch=self._epoch(done_steps))

    def _epoch(self, done: int) -> str:
        epochs = -(-self.total // self.steps_per_epoch)
        return f"{min(done // self.steps_per_epoch + 1, epochs)}/{epochs}"

    def __enter__(self) -> "TrainProgress":
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def set_info(self, text: str) -> None:
        self.info = text

    def update(self, done: int) -> None:
        """`done` optimizer steps are complete."""
        if self.bar:
            self.bar.info = self.info
            self.bar.update(self.task, completed=done, epoch=self._epoch(done))
        elif done % self.log_every == 0 or done == self.total:
            elapsed = time.perf_counter() - self.start_time
            rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(
                f"epoch {self._epoch(done)} step {done}/{self.total} "
                f"elapsed {format_seconds(elapsed)} ETA {format_seconds(eta)} {self.info}",
                highlight=False,
            )


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN: no rate yet
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
