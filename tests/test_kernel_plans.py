"""A run's or job's kernel plan, with timing on (the deployed default): kernel choices never change its weights.

The processes here pin kernels with ``GLS_KERNELS`` to stand for machines whose timing prefers other
candidates: ``PINS`` holds a candidate that applies to every call of each operation, so a process
pinned that way always chooses alike, and ``OTHER_PINS`` prefers the native kernels. PGPE's raw
fitness carries the last bits of every loss into the update, so the two choices train different
weights (the first test), unless the run's plan decides.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from servers import RedisServer, free_port
from test_bound_worker import wait_until
from test_coordinator import run_coordinator, settings_for, trained_weights, wait_for

from gls_core.training import Trainer, load_model, parse_config, read_metrics
from gls_core.training.checkpoint import read_kernel_plan, read_position
from services.discovery import live_workers
from services.store import Store

ROOT = Path(__file__).resolve().parents[1]
PINS = "transpose=grouped,forward=grouped,concretize=materialize,relax-concretize=stepwise"
OTHER_PINS = "transpose=native,forward=dense,concretize=native,relax-concretize=native"
CONFIG: dict[str, Any] = {
    "seed": 5, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny", "init": "kaiming"},
    "schedule": {"epochs": 1, "lr": 0.01, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 3},
    "pgpe": {"popsize": 16, "sigma_init": 0.01, "ranking": "raw"},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
    "block_members": 4, "device": "cpu", "threads": 1,
}


def timed_with(pins: str) -> dict[str, str]:
    """The environment of a process that measures its kernels (the deployed default) and pins ``pins``."""
    return {**os.environ, "GLS_KERNEL_TUNING": "1", "GLS_KERNELS": pins, "GLS_THREADS": "1"}


def last_steps(plan: dict[str, str]) -> set[str]:
    """The candidates a plan takes for the last back-substitution step (where the two pin sets differ in bits)."""
    return {name for key, name in plan.items() if key.startswith("('relax-concretize'")}


def test_the_two_kernel_choices_train_different_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without one plan, two processes that choose like PINS and like OTHER_PINS do not agree."""
    weights = []
    for index, pins in enumerate((PINS, OTHER_PINS)):
        monkeypatch.setenv("GLS_KERNELS", pins)
        trainer = Trainer(parse_config(CONFIG), tmp_path / str(index))
        weights.append(trainer.run().theta)
        assert trainer.kernel_plan is not None
        assert last_steps(trainer.kernel_plan) == ({"stepwise"} if pins == PINS else {"native"})
    assert not torch.equal(*weights)


@dataclass
class WorkerProcess:
    """``python -m services.bound_worker`` with its own kernel pins, registered in Redis."""

    process: subprocess.Popen[bytes]
    address: str

    @staticmethod
    def start(redis_url: str, pins: str, log: Path) -> WorkerProcess:
        port = free_port()
        env = {**timed_with(pins), "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(port),
               "GLS_REDIS_URL": redis_url, "GLS_HEARTBEAT_S": "0.2", "GLS_HEARTBEAT_TTL_S": "1.0",
               "GLS_DEVICE": "cpu", "GLS_WORKER_GRACE_S": "1"}
        with log.open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "services.bound_worker"], cwd=ROOT, env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
        return WorkerProcess(process, f"127.0.0.1:{port}")

    def stop(self) -> None:
        """SIGTERM: the worker deregisters and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_workers(store: Store, addresses: set[str]) -> None:
    wait_until(lambda: {info.address for info in live_workers(store.redis)} == addresses, timeout=90.0)


def test_two_workers_that_choose_kernels_differently_share_a_job_bit_for_bit(redis_server: RedisServer,
                                                                            tmp_path: Path) -> None:
    """The job's first step runs whole on one worker, whose choices become the job's plan; every later share
    follows it on either worker, so the weights are those of a job that worker ran alone."""
    store = Store(redis_server.client())
    workers = {pins: WorkerProcess.start(redis_server.url, pins, tmp_path / f"worker-{index}.log")
               for index, pins in enumerate((PINS, OTHER_PINS))}
    try:
        wait_for_workers(store, {worker.address for worker in workers.values()})
        coordinator, thread = run_coordinator(settings_for(redis_server))
        try:
            shared = store.submit_job("alice", CONFIG)
            wait_for(store, shared.id, lambda job: job.status.finished)
            stats = coordinator.pool.last_step_stats()
            assert stats is not None
            assert {call.address for call in stats.calls} == {worker.address for worker in workers.values()}
            plan = store.kernel_plan(shared.id)
            assert plan is not None and last_steps(plan) in ({"stepwise"}, {"native"})
            maker = PINS if last_steps(plan) == {"stepwise"} else OTHER_PINS
            workers.pop(OTHER_PINS if maker == PINS else PINS).stop()
            wait_for_workers(store, {workers[maker].address})
            alone = store.submit_job("alice", CONFIG)
            wait_for(store, alone.id, lambda job: job.status.finished)
        finally:
            coordinator.stop()
            thread.join(10)
        assert store.kernel_plan(alone.id) == plan
        assert torch.equal(trained_weights(store, shared.id), trained_weights(store, alone.id))
    finally:
        for worker in workers.values():
            worker.stop()


STOP_AFTER = ("import sys, torch; from gls_core.training import Trainer, load_config; torch.set_num_threads(1); "
              "Trainer(load_config(sys.argv[1]), sys.argv[2]).run(stop_after_steps=int(sys.argv[3]))")


def run(args: list[str], pins: str) -> None:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=timed_with(pins), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_resume_in_a_fresh_process_that_chooses_other_kernels_ends_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """The plan made by the first step is committed with the checkpoint; the resumed process follows it, not
    its own pins or timing."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "schedule": {**CONFIG["schedule"], "epochs": 2}}))
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(["-m", "gls_core.cli", "train", str(config), "--out", str(whole)], PINS)
    run(["-c", STOP_AFTER, str(config), str(split), "4"], PINS)  # interrupted mid-epoch, after 4 of 6 steps
    position = read_position(split)
    assert position.step == 4 and not position.finished
    plan = read_kernel_plan(split)
    assert plan is not None and last_steps(plan) == {"stepwise"}
    run(["-m", "gls_core.cli", "train", str(config), "--out", str(split), "--resume"], OTHER_PINS)
    assert read_position(split).finished
    assert read_kernel_plan(split) == plan == read_kernel_plan(whole)
    assert torch.equal(load_model(split)[1], load_model(whole)[1])
    strip = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in read_metrics(whole)]
    assert [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in read_metrics(split)] == strip
