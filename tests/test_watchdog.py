"""The stall watchdog's arithmetic, on a fake clock."""

from sortednet_cli.engine.watchdog import FIRST_STEP_PATIENCE, StallWatchdog


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def watchdog(factor=50, min_seconds=60):
    clock, warnings = Clock(), []
    return StallWatchdog(warnings.append, factor, min_seconds, clock=clock), clock, warnings


def run_steps(dog, clock, durations, first=1):
    for step, seconds in enumerate(durations, start=first):
        dog.step_started(step, lambda: f"step {step} trains w=0.05")
        clock.now += seconds
        dog.check()
        dog.step_finished()


def test_threshold_is_the_larger_of_factor_times_median_and_the_floor():
    dog, clock, warnings = watchdog()
    assert dog.threshold() == FIRST_STEP_PATIENCE * 60
    run_steps(dog, clock, [0.2] * 10)
    assert dog.threshold() == 60  # 50 x 0.2 s = 10 s is under the floor
    run_steps(dog, clock, [3.0] * 30, first=11)
    assert dog.threshold() == 150  # 50 x the median of the recent steps
    assert warnings == []


def test_a_stuck_step_is_reported_once_naming_its_step():
    dog, clock, warnings = watchdog()
    run_steps(dog, clock, [0.2] * 5)
    dog.step_started(6, lambda: "it trains w=0.05 d=1-1-1")
    clock.now += 59
    assert not dog.check() and warnings == []
    clock.now += 2
    assert dog.check() and dog.check()
    assert warnings == ["step 6 has run for 1m 01s (305x the recent median of 0.20 s); it trains w=0.05 d=1-1-1"]
    clock.now += 600
    dog.step_finished()
    assert warnings[-1] == "step 6 finished after 11m 01s; training goes on"


def test_zero_turns_the_watchdog_off():
    dog, _, _ = watchdog(min_seconds=0)
    with dog:
        assert not dog.enabled and dog._thread is None
