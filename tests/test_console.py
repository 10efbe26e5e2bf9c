"""The progress reporter's plain lines (logs without a terminal): rate and ETA from this process's steps."""

import importlib
import io

import pytest
from rich.console import Console

from gls_core.cli.console import Reporter, duration

console_module = importlib.import_module("gls_core.cli.console")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(console_module.time, "monotonic", fake)
    return fake


def lines_of(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_a_resumed_run_reports_the_rate_of_the_steps_trained_since_it_started(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 2000, completed=1000, every=5, stream=stream) as bar:
        clock.now += 10
        bar.update(1010, "loss 1.0")
    first = lines_of(buffer)[0]
    assert "step 1010/2000 (50.5%) loss 1.0" in first
    assert "1.00 steps/s" in first, first  # 10 steps in 10 s, not 1010 steps in 10 s
    assert f"ETA {duration(990)}" in first, first


def test_lines_come_at_most_every_period_and_once_at_the_end(clock: Clock) -> None:
    buffer = io.StringIO()
    stream = Console(file=buffer, force_terminal=False, width=200)
    with Reporter("run", 100, every=30, stream=stream) as bar:
        for step in range(1, 51):
            clock.now += 1
            bar.update(step)
    lines = lines_of(buffer)
    assert [line.split(" run ")[1].split(" |")[0] for line in lines] == ["step 30/100 (30.0%)", "step 50/100 (50.0%)"]
    assert "1.00 steps/s" in lines[-1]
