"""The progress reporter's plain lines (logs without a terminal): rate and ETA from this process's steps.

The reporter reads time from the clock it is given; these tests give it one they advance by hand.
"""

import io

import pytest
from rich.console import Console

from gls_core.cli.console import Reporter, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines_of(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_a_resumed_run_reports_the_rate_of_the_steps_trained_since_it_started(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 2000, completed=1000, every=5, stream=stream, clock=clock) as bar:
        clock.now += 10
        bar.update(1010, "loss 1.0")
    first = lines_of(buffer)[0]
    assert "step 1010/2000 (50.5%) loss 1.0" in first
    assert "1.00 steps/s" in first, first  # 10 steps in 10 s, not 1010 steps in 10 s
    assert f"ETA {duration(990)}" in first, first


def test_lines_come_at_most_every_period_and_once_at_the_end(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 100, every=30, stream=stream, clock=clock) as bar:
        for step in range(1, 51):
            clock.now += 1
            bar.update(step)
    lines = lines_of(buffer)
    assert [line.split(" run ")[1].split(" |")[0] for line in lines] == ["step 30/100 (30.0%)", "step 50/100 (50.0%)"]
    assert "1.00 steps/s" in lines[-1]


def test_the_eta_uses_the_current_stages_recent_rate_not_the_warmups(clock: Clock) -> None:
    """80 warm-up steps at 10 per second, then 20 main steps at 5 s each: the ETA follows the main steps."""
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 100, every=0, stream=stream, clock=clock, stages=[("warmup", 80), ("main", 20)]) as bar:
        for step in range(1, 81):
            clock.now += 0.1
            bar.update(step)
        assert bar.rates.estimate() is not None
        at_warmup_end = lines_of(buffer)[-1]
        # the main stage has not run: counted at the warm-up's rate, and the line says so
        assert "10.00 steps/s, ETA 2s if main runs at warmup's rate" in at_warmup_end, at_warmup_end
        for step in range(81, 84):
            clock.now += 5.0
            bar.update(step)
    lines = lines_of(buffer)
    assert lines[-1].endswith(f"step 83/100 (83.0%) | 0.20 steps/s, ETA {duration(17 * 5)}"), lines[-1]
    # what an average over the whole run would have said: 83 steps in 23 s, so 17 steps in about 5 s
    assert f"ETA {duration(17 * 23 / 83)}" not in lines[-1]


def test_the_rate_is_the_last_minute_of_the_stage(clock: Clock) -> None:
    """A stage that slows down (another job starts on the machine) shows within the window."""
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 1000, every=0, stream=stream, clock=clock) as bar:
        for step in range(1, 301):  # 300 steps at 1 s
            clock.now += 1.0
            bar.update(step)
        for step in range(301, 331):  # then 30 steps at 4 s: two minutes, twice the window
            clock.now += 4.0
            bar.update(step)
    assert lines_of(buffer)[-1].endswith(f"step 330/1000 (33.0%) | 0.25 steps/s, ETA {duration(670 * 4)}")


def test_no_eta_before_a_step_of_the_stage_is_timed(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("verify", 10, every=0, stream=stream, clock=clock, unit="input") as bar:
        bar.update(status="starting")
        clock.now += 3
        bar.update(2)
    lines = lines_of(buffer)
    assert lines[0].endswith("verify input 0/10 (0.0%) starting"), lines[0]
    assert lines[1].endswith("input 2/10 (20.0%) starting | 0.67 inputs/s, ETA 12s"), lines[1]


def test_a_resume_inside_the_main_stage_times_only_the_main_stage(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 100, completed=90, every=0, stream=stream, clock=clock,
                  stages=[("warmup", 80), ("main", 20)]) as bar:
        clock.now += 6
        bar.update(92)
    assert lines_of(buffer)[-1].endswith("step 92/100 (92.0%) | 0.33 steps/s, ETA 24s")


def test_the_bar_on_a_terminal_shows_the_same_eta(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=True, width=200)
    with Reporter("run", 100, stream=stream, clock=clock, stages=[("warmup", 80), ("main", 20)]) as bar:
        for step in range(1, 81):
            clock.now += 0.1
            bar.update(step)
        for step in range(81, 84):
            clock.now += 5.0
            bar.update(step, "main loss 0.5")
    final = [line for line in buffer.getvalue().splitlines() if "83/100" in line][-1]
    assert "main loss 0.5" in final and f"ETA {duration(17 * 5)}" in final, final
