"""A watchdog beside the training loop: a step stuck in native code cannot report itself.

The loop tells the watchdog when each optimizer step starts and ends; a daemon thread checks
the running step every few seconds and warns once when it has run far longer than the recent
median (trainer.stall_factor times it, and at least trainer.stall_seconds). PyTorch's kernels
release the GIL, so the thread runs even while the loop is stuck inside one.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from typing import Callable, Optional

RECENT_STEPS = 50
# Before any step has finished there is no median: the first step also warms up kernels and
# caches, so it gets a more patient threshold.
FIRST_STEP_PATIENCE = 5


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


class StallWatchdog:
    """Warns (through `warn`) when the running step exceeds its threshold, with the text the loop
    gave for that step (what it trains, what to do), built only when a warning is due."""

    def __init__(
        self,
        warn: Callable[[str], None],
        factor: float,
        min_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.warn = warn
        self.factor = factor
        self.min_seconds = min_seconds
        self.clock = clock
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self._lock = threading.Lock()
        self._running: Optional[tuple[int, float, Callable[[], str]]] = None  # (step, start time, description)
        self._warned_step: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def enabled(self) -> bool:
        return self.factor > 0 and self.min_seconds > 0

    def threshold(self) -> float:
        with self._lock:
            recent = list(self.recent)
        if not recent:
            return FIRST_STEP_PATIENCE * self.min_seconds
        return max(self.min_seconds, self.factor * statistics.median(recent))

    def step_started(self, step: int, description: Callable[[], str]) -> None:
        with self._lock:
            self._running = (step, self.clock(), description)

    def step_finished(self) -> None:
        with self._lock:
            if self._running is None:
                return
            step, started, _ = self._running
            took = self.clock() - started
            self._running = None
            self.recent.append(took)
            stalled = self._warned_step == step
        if stalled:
            self.warn(f"step {step} finished after {format_duration(took)}; training goes on")

    def check(self) -> bool:
        """Warn if the running step is over its threshold (once per step); True if it is."""
        threshold = self.threshold()
        with self._lock:
            if self._running is None:
                return False
            step, started, description = self._running
            elapsed = self.clock() - started
            if elapsed <= threshold or self._warned_step == step:
                return elapsed > threshold
            self._warned_step = step
            median = statistics.median(self.recent) if self.recent else None
        usual = f"{elapsed / median:.0f}x the recent median of {median:.2f} s" if median else "the first step of this process"
        self.warn(f"step {step} has run for {format_duration(elapsed)} ({usual}); {description()}")
        return True

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check()

    def __enter__(self) -> "StallWatchdog":
        if self.enabled:
            interval = min(5.0, self.min_seconds / 4)
            self._thread = threading.Thread(target=self._watch, args=(interval,), name="sortednet-stall-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
