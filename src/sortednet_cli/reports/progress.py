"""Training progress: a rich bar with ETA on a terminal, plain lines (also with ETA) elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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
            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, epoch=self._epoch(done_steps), info="")

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
            self.bar.update(self.task, completed=done, epoch=self._epoch(done), info=self.info)
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
