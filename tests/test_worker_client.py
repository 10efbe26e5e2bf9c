"""WorkerPool against real in-process workers on loopback (and a real redis-server for discovery):
the assembled result is bit-identical to evaluate_members however the work was split or re-sent."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from servers import RedisServer, free_port

import gls_core
from gls_core.data import load_dataset
from gls_core.errors import Interrupted
from gls_core.training.estimators import Evaluated, Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from services.bound_worker import RunningWorker, serve
from services.discovery import live_workers
from services.settings import Settings
from services.worker_client import NoWorkersError, WorkerPool, WorkerRejectedError, split_evenly

SPEC = gls_core.network("cnn3-tiny", "digits")
DIGITS = load_dataset("digits", "train")
X, Y = DIGITS.x[:16], DIGITS.y[:16]
THETA = gls_core.kaiming_uniform(SPEC, generator=torch.Generator().manual_seed(1))
EPS, SEED, BLOCK = 0.05, 9, 4
ALPHA = Objective("certified", "alpha-crown", {"steps": 1, "step_size": 0.5, "init": 0.5})
DEEPPOLY = Objective("certified", "deeppoly")


def worker_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"worker_host": "127.0.0.1", "worker_port": 0, "worker_register": False}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def pool_for(*workers: RunningWorker, **overrides: object) -> WorkerPool:
    settings = Settings(worker_addresses=",".join(w.address for w in workers), rpc_timeout_s=30,
                        heartbeat_ttl_s=1.0, **overrides)  # type: ignore[arg-type]
    return WorkerPool(settings, backoff_s=0.05)


def pgpe(count: int = 16, step: int = 2) -> Proposal:
    return Proposal(step=step, seed=SEED, centre=THETA, sigma=torch.full_like(THETA, 0.02), count=count,
                    symmetric=True, needs_grads=False)


def rgs() -> Proposal:
    return Proposal(step=3, seed=SEED, centre=THETA, sigma=torch.full_like(THETA, 0.01), count=6, symmetric=False,
                    needs_grads=True)


def same(a: Evaluated, b: Evaluated) -> bool:
    grads_equal = (a.grads is None and b.grads is None) or (
        a.grads is not None and b.grads is not None and torch.equal(a.grads, b.grads))
    return torch.equal(a.losses, b.losses) and grads_equal


@pytest.fixture
def workers() -> Iterator[list[RunningWorker]]:
    running = [serve(worker_settings()), serve(worker_settings())]
    yield running
    for worker in running:
        worker.stop()


@pytest.mark.parametrize("per_worker", [1, 4])
@pytest.mark.parametrize(("proposal", "objective"), [(pgpe(), ALPHA), (rgs(), DEEPPOLY)], ids=["pgpe", "rgs"])
def test_one_or_two_workers_equal_in_process(proposal: Proposal, objective: Objective, per_worker: int,
                                             workers: list[RunningWorker]) -> None:
    expected = evaluate_members(SPEC, proposal, objective, X, Y, EPS, SEED, BLOCK)
    with pool_for(workers[0], shares_per_worker=per_worker) as one, \
            pool_for(*workers, shares_per_worker=per_worker) as two:
        assert same(one.evaluate(SPEC, proposal, objective, X, Y, EPS, SEED, BLOCK), expected)
        assert same(two.evaluate(SPEC, proposal, objective, X, Y, EPS, SEED, BLOCK), expected)
        stats = two.last_step_stats()
    assert stats is not None
    shares = [(call.start, call.stop) for call in stats.calls]
    if proposal.count == 6:  # two blocks: one share each, however many are allowed
        assert shares == [(0, 4), (4, 6)]
    else:  # four blocks: one share per worker, or one per block
        assert shares == ([(0, 8), (8, 16)] if per_worker == 1 else [(0, 4), (4, 8), (8, 12), (12, 16)])
    assert {call.address for call in stats.calls} == {w.address for w in workers}
    for call in stats.calls:
        assert call.attempts == 1 and call.compute_s > 0 and call.rpc_s >= call.compute_s
        assert call.serialise_s > 0 and call.deserialise_s > 0 and call.request_bytes > 0
    assert 0 <= stats.overhead_s < stats.wall_s and stats.encode_s > 0


def test_blobs_go_inline_once_then_by_hash(workers: list[RunningWorker]) -> None:
    with pool_for(workers[0]) as pool:
        pool.evaluate(SPEC, pgpe(4), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
        first = pool.last_step_stats()
        pool.evaluate(SPEC, pgpe(4, step=5), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
        second = pool.last_step_stats()
    assert first is not None and second is not None
    assert first.calls[0].request_bytes > 5000 > second.calls[0].request_bytes


def test_discovery_through_redis(redis_server: RedisServer) -> None:
    settings = worker_settings(worker_register=True, redis_url=redis_server.url, heartbeat_s=0.1,
                               heartbeat_ttl_s=1.0)
    running = [serve(settings), serve(settings)]
    client = redis_server.client()
    try:
        deadline = time.monotonic() + 10
        while len(live_workers(client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        expected = evaluate_members(SPEC, pgpe(), ALPHA, X, Y, EPS, SEED, BLOCK)
        with WorkerPool(Settings(rpc_timeout_s=30), client) as pool:
            assert sorted(pool.addresses()) == sorted(w.address for w in running)
            assert same(pool.evaluate(SPEC, pgpe(), ALPHA, X, Y, EPS, SEED, BLOCK), expected)
            stats = pool.last_step_stats()
            assert stats is not None and {c.address for c in stats.calls} == {w.address for w in running}
            running[1].stop()  # deregisters: the next call uses the one that is left
            assert pool.addresses() == [running[0].address]
            assert same(pool.evaluate(SPEC, pgpe(), ALPHA, X, Y, EPS, SEED, BLOCK), expected)
    finally:
        for worker in running:
            worker.stop()


def _evaluate_in_background(pool: WorkerPool, proposal: Proposal, objective: Objective, x: torch.Tensor,
                            y: torch.Tensor) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = pool.evaluate(SPEC, proposal, objective, x, y, EPS, SEED, BLOCK)
        except Exception as error:  # surfaced by the test below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_worker_stopped_mid_call_has_its_share_re_sent(workers: list[RunningWorker]) -> None:
    x, y = DIGITS.x[:96], DIGITS.y[:96]  # enough work that the share is still running when its worker stops
    proposal = pgpe(32)
    expected = evaluate_members(SPEC, proposal, ALPHA, x, y, EPS, SEED, BLOCK)
    with pool_for(*workers) as pool:
        thread, outcome = _evaluate_in_background(pool, proposal, ALPHA, x, y)
        _wait_for(lambda: workers[1].service.in_flight > 0)
        workers[1].stop(grace=0)
        thread.join(60)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert isinstance(result, Evaluated) and same(result, expected)
        stats = pool.last_step_stats()
        assert stats is not None
        moved = [call for call in stats.calls if call.attempts > 1]
        assert len(moved) == 1 and moved[0].address == workers[0].address
        # the dead address stays in the static list: later calls avoid it while it cools down
        assert same(pool.evaluate(SPEC, proposal, ALPHA, x, y, EPS, SEED, BLOCK), expected)


def test_a_restarted_worker_gets_missing_blobs_inline(workers: list[RunningWorker]) -> None:
    proposal = pgpe(8)
    expected = evaluate_members(SPEC, proposal, DEEPPOLY, X, Y, EPS, SEED, BLOCK)
    port = workers[0].port
    with pool_for(workers[0]) as pool:
        assert same(pool.evaluate(SPEC, proposal, DEEPPOLY, X, Y, EPS, SEED, BLOCK), expected)
        workers[0].stop()
        workers[0] = serve(worker_settings(worker_port=port))  # same address, empty cache
        assert same(pool.evaluate(SPEC, proposal, DEEPPOLY, X, Y, EPS, SEED, BLOCK), expected)
        stats = pool.last_step_stats()
    assert stats is not None and stats.calls[0].resent_inline


def test_bounds_split_across_workers_equal_compute_bounds(workers: list[RunningWorker]) -> None:
    population = pgpe(6).points()
    radii = torch.linspace(0.0, 0.08, X.shape[0])
    with pool_for(*workers) as pool:
        lower, upper = pool.bounds(SPEC, population, X, Y, EPS, "deeppoly")
        stats = pool.last_step_stats()
        single_lower, single_upper = pool.bounds(SPEC, THETA, X, None, radii, "alpha-crown", {"steps": 2})
    C = gls_core.margin_spec(Y, 10)
    expected = gls_core.compute_bounds(SPEC, X, EPS, "deeppoly", C=C, params=population, sides="upper")
    assert torch.equal(upper, expected[1])  # with labels, only the margins' upper bounds are computed
    assert bool((lower == -math.inf).all())
    assert stats is not None and [(c.start, c.stop) for c in stats.calls] == [(0, 8), (8, 16)]
    expected = gls_core.compute_bounds(SPEC, X, radii, "alpha-crown", params=THETA, steps=2)
    assert single_lower.shape == (16, 10)
    assert torch.equal(single_lower, expected[0]) and torch.equal(single_upper, expected[1])


def test_rejections_are_raised_not_retried(workers: list[RunningWorker]) -> None:
    with pool_for(*workers) as pool, pytest.raises(WorkerRejectedError, match=r"INVALID_ARGUMENT: inputs: must lie"):
        pool.evaluate(SPEC, pgpe(), DEEPPOLY, X + 2, Y, EPS, SEED, BLOCK)
    with pool_for(*workers) as pool, pytest.raises(ValueError, match="one seed"):
        pool.evaluate(SPEC, pgpe(), DEEPPOLY, X, Y, EPS, SEED + 1, BLOCK)


def test_no_workers_is_a_clear_error() -> None:
    with WorkerPool(Settings(), max_attempts=2, backoff_s=0.01) as pool, \
            pytest.raises(NoWorkersError, match="no bound worker is registered"):
        pool.evaluate(SPEC, pgpe(), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
    nobody = f"127.0.0.1:{free_port()}"
    with WorkerPool(Settings(worker_addresses=nobody), max_attempts=3, backoff_s=0.01) as pool, \
            pytest.raises(NoWorkersError, match=f"after 3 attempts; last error: {nobody}: UNAVAILABLE"):
        pool.bounds(SPEC, THETA, X, Y, EPS, "ibp")


def test_split_evenly() -> None:
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(2, 5) == [(0, 1), (1, 2)]
    assert split_evenly(4, 0) == [(0, 4)]


def test_progress_is_reported_as_each_share_comes_back(workers: list[RunningWorker]) -> None:
    reports: list[tuple[int, int]] = []
    expected = evaluate_members(SPEC, pgpe(16), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
    with pool_for(workers[0], shares_per_worker=4) as pool:
        result = pool.evaluate(SPEC, pgpe(16), DEEPPOLY, X, Y, EPS, SEED, BLOCK,
                               progress=lambda done, members: reports.append((done, members)))
    assert same(result, expected)
    assert reports == [(4, 16), (8, 16), (12, 16), (16, 16)]  # one worker: the shares come back in order


def test_a_plan_is_made_on_the_first_block_and_followed_by_the_rest(workers: list[RunningWorker]) -> None:
    """The step that makes the plan sends its first block alone; the others follow the plan, on both workers."""
    reports: list[int] = []
    expected = evaluate_members(SPEC, pgpe(16), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
    with pool_for(*workers, shares_per_worker=1) as pool:
        result = pool.evaluate(SPEC, pgpe(16), DEEPPOLY, X, Y, EPS, SEED, BLOCK, make_plan=True,
                               progress=lambda done, _: reports.append(done))
        stats = pool.last_step_stats()
    assert same(result, expected) and result.kernel_plan is not None
    assert stats is not None and [(c.start, c.stop) for c in stats.calls] == [(0, 4), (4, 12), (12, 16)]
    assert {c.address for c in stats.calls[1:]} == {w.address for w in workers}
    assert reports[0] == 4 and sorted(reports) == reports and reports[-1] == 16


def test_should_stop_cancels_the_calls_and_the_worker_stops_between_blocks(workers: list[RunningWorker]) -> None:
    """A stop while a share computes: Interrupted at once, the worker abandons the share before its end (it
    serves nothing and counts one abandoned call), and the pool works as before afterwards."""
    x, y = DIGITS.x[:96], DIGITS.y[:96]
    proposal = pgpe(1024)  # 256 blocks in one share: seconds, far more than the 0.25 s poll interval
    worker = workers[0].service
    with pool_for(workers[0], shares_per_worker=1) as pool:
        with pytest.raises(Interrupted, match="stopped by its caller"):
            pool.evaluate(SPEC, proposal, ALPHA, x, y, EPS, SEED, BLOCK, should_stop=lambda: worker.in_flight > 0)
        _wait_for(lambda: worker.in_flight == 0)
        assert (worker.served, worker.abandoned) == (0, 1)
        expected = evaluate_members(SPEC, pgpe(8), DEEPPOLY, X, Y, EPS, SEED, BLOCK)
        assert same(pool.evaluate(SPEC, pgpe(8), DEEPPOLY, X, Y, EPS, SEED, BLOCK), expected)
