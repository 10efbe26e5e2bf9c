"""Recovery after kills: one training job through `gls cluster up`, undisturbed and with each process SIGKILLed.

    python bench/fault_recovery.py                         # every fault, default settings
    python bench/fault_recovery.py --faults worker,redis   # a subset

``python -m services.cli cluster up --workers 2`` runs on 127.0.0.1 in a temporary directory (its own
redis-server with its append-only file, 2 bound workers, a coordinator, the gateway). A small
deterministic PGPE job (cnn3-tiny on the built-in ``digits``, the e2e tests' config with more steps
per epoch) runs once undisturbed; its downloaded weights are the reference. Then, for each fault,
the same job runs again and, once it has acknowledged ``--kill-at-step`` steps, one process is
SIGKILLed:

- ``worker``: bound worker 0 (the supervisor restarts it);
- ``coordinator``: the coordinator (the supervisor restarts it; the new one takes the job over once
  the old claim is ``GLS_JOB_STALE_S`` old);
- ``coordinator-standby``: the coordinator that runs the job, while a second
  ``python -m services.coordinator`` stands by;
- ``redis``: the redis-server (the supervisor restarts it on the same port, data directory and AOF);
- ``supervisor``: the ``gls cluster up`` process itself. Its children get SIGTERM from the kernel
  (``PR_SET_PDEATHSIG``); once they are gone, ``gls cluster up`` starts again on the same run
  directory (so the same Redis AOF) and the job continues there.

The job's status is polled over REST (``GlsClient``) every ``--poll-s``. Time to resume is from the
kill until the job's step counter passes the step the kill left: read over REST just before the kill,
or, where the killed process was the only one committing, read from Redis once it is gone (from the
append-only file for the supervisor, before ``gls cluster up`` starts again). A step counts as
acknowledged once it is in ``GET /v1/jobs/{id}/metrics``; one is lost when a row read before the kill
is missing from, or different in, the finished job's rows. Every process is stopped by pid at the end
and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import torch

from gls_core.training import load_model
from services.client import ClientError, GlsClient
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
PR_SET_PDEATHSIG = 1
FAULTS = ("worker", "coordinator", "coordinator-standby", "redis", "supervisor")
TIMING_KEYS = ("epoch_time_s", "time", "seconds", "wall_s", "step_time_s")

CONFIG: dict[str, Any] = {
    "seed": 11, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny", "init": "kaiming"},
    "warmup": {"estimator": "pgd", "epochs": 1, "lr": 0.02},
    "schedule": {"epochs": 2, "lr": 0.01, "lr_milestones": [1], "eps_ramp_epochs": 0, "steps_per_epoch": 10},
    "pgpe": {"popsize": 16, "sigma_init": 0.01},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
    "block_members": 4,
    "device": "cpu",
}


def _die_with_parent() -> None:
    """In the child: SIGTERM when this script dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Supervisor:
    """``gls cluster up`` as a child process on one run directory; it may be killed and started again."""

    run_dir: Path
    workers: int
    worker_token: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    known_pids: set[int] = field(default_factory=set)

    @property
    def cluster_file(self) -> Path:
        return self.run_dir / "cluster.json"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("GLS_") and key != "REDIS_URL"}
        env.update(GLS_TOKENS=f"{TOKEN}=bench", GLS_WORKER_TOKEN=self.worker_token, GLS_DEVICE="cpu",
                   PYTHONUNBUFFERED="1")
        data_dir = os.environ.get("GLS_DATA_DIR") or str(ROOT.parent / "shared" / "data")
        if Path(data_dir).is_dir():
            env["GLS_DATA_DIR"] = data_dir
        return env

    def start(self, timeout: float = 150.0) -> float:
        """Start ``gls cluster up`` and wait for its cluster.json; the seconds it took."""
        self.cluster_file.unlink(missing_ok=True)
        self.starts += 1
        started = time.monotonic()
        with (self.run_dir.parent / f"supervisor-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "cluster", "up", "--workers", str(self.workers),
                 "--run-dir", str(self.run_dir), "--threads", "1"],
                cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = started + timeout
        while not self.cluster_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gls cluster up did not come up; see {self.run_dir.parent}/supervisor-*.log")
            time.sleep(0.1)
        self.pids()
        return time.monotonic() - started

    def info(self) -> dict[str, Any]:
        for _ in range(50):  # the supervisor rewrites the file when it restarts a child
            with suppress(FileNotFoundError, json.JSONDecodeError):
                info: dict[str, Any] = json.loads(self.cluster_file.read_text())
                return info
            time.sleep(0.02)
        raise RuntimeError(f"cannot read {self.cluster_file}")

    def pids(self) -> dict[str, int]:
        pids = {name: int(pid) for name, pid in self.info()["pids"].items()}
        self.known_pids.update(pids.values())
        return pids

    @property
    def gateway_url(self) -> str:
        return str(self.info()["gateway_url"])

    def kill(self) -> None:
        """SIGKILL the supervisor itself."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its children), then SIGKILL any child of ours still alive."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with suppress(RuntimeError):
            self.pids()
        for pid in self.known_pids:
            if alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Sample:
    t: float
    step: int | None
    status: str
    coordinator: str


@dataclass
class Outcome:
    fault: str
    job_id: str
    theta: torch.Tensor | None
    status: str
    rows: list[dict[str, Any]]
    samples: list[Sample]
    kill_step: int = 0
    before_rows: list[dict[str, Any]] = field(default_factory=list)
    t_kill: float = 0.0
    coordinator_before: str = ""
    frozen_step: int | None = None
    """The step counter once the kill took effect, where the killed process was the only one committing."""
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return [int(row["step"]) for row in self.rows if row.get("kind") == "step"]

    def resume_s(self) -> float | None:
        """Seconds from the kill until a poll shows a step beyond the one the kill left."""
        base = max(self.kill_step, self.frozen_step or 0)
        for sample in self.samples:
            if sample.t > self.t_kill and sample.step is not None and sample.step > base:
                return sample.t - self.t_kill
        return None

    def first_answer_s(self) -> float | None:
        """Seconds from the kill until the gateway first answered a poll."""
        return next((s.t - self.t_kill for s in self.samples if s.t > self.t_kill and s.step is not None), None)

    def takeover(self) -> tuple[float, str] | None:
        """Seconds from the kill until another coordinator holds the job, and its name."""
        return next(((s.t - self.t_kill, s.coordinator) for s in self.samples if s.t > self.t_kill
                     and s.step is not None and s.coordinator not in ("", self.coordinator_before)), None)

    def regressions(self) -> int:
        """Polls after the kill whose step counter was below the step read before it."""
        return sum(1 for s in self.samples if s.t > self.t_kill and s.step is not None and s.step < self.kill_step)


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in TIMING_KEYS}


def lost_steps(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[int]:
    """Step rows read before the kill that are missing from, or differ in, the finished job's rows."""
    final = {int(row["step"]): comparable(row) for row in after if row.get("kind") == "step"}
    return [int(row["step"]) for row in before
            if row.get("kind") == "step" and final.get(int(row["step"])) != comparable(row)]


def resp_commands(data: bytes) -> list[list[bytes]]:
    """The commands of an append-only file (RESP arrays of bulk strings); a torn last command is dropped."""
    commands: list[list[bytes]] = []
    at = 0
    try:
        while at < len(data) and data[at:at + 1] == b"*":
            end = data.index(b"\r\n", at)
            count, at = int(data[at + 1:end]), end + 2
            parts = []
            for _ in range(count):
                end = data.index(b"\r\n", at)
                size, at = int(data[at + 1:end]), end + 2
                if at + size + 2 > len(data):
                    raise ValueError("torn command")
                parts.append(data[at:at + size])
                at += size + 2
            commands.append(parts)
    except ValueError:
        pass
    return commands


def aof_step(redis_dir: Path, job_id: str) -> int | None:
    """The job's step counter as the append-only files hold it (committed transactions only)."""
    key = f"gls:job:{job_id}".encode()
    step: int | None = None
    pending: list[int] | None = None
    for path in sorted((redis_dir / "appendonlydir").glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[2])):
        for command in resp_commands(path.read_bytes()):
            name = command[0].upper()
            if name == b"MULTI":
                pending = []
            elif name == b"EXEC":
                for value in pending or []:
                    step = value
                pending = None
            elif name == b"HSET" and command[1] == key:
                fields = dict(zip(command[2::2], command[3::2], strict=True))
                if b"step" in fields:
                    value = int(fields[b"step"])
                    if pending is None:
                        step = value
                    else:
                        pending.append(value)
    return step


class Bench:
    """One cluster (``gls cluster up`` on its own run directory) and the jobs run on it."""

    def __init__(self, folder: Path, workers: int, poll_s: float, kill_at: int, job_timeout: float) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(folder / "cluster", workers, secrets.token_urlsafe(24))
        self.poll_s, self.kill_at, self.job_timeout = poll_s, kill_at, job_timeout
        self.standby: subprocess.Popen[bytes] | None = None

    def redis_step(self, job_id: str, timeout: float = 30.0) -> int | None:
        """The job's step counter read from Redis directly, waiting up to ``timeout`` for Redis to answer."""
        client = redis.Redis.from_url(str(self.supervisor.info()["redis_url"]), socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    value = client.hget(f"gls:job:{job_id}", "step")
                    return None if value is None else int(value)
                except redis.RedisError:
                    time.sleep(0.02)
            return None
        finally:
            client.close()

    def client(self) -> GlsClient:
        return GlsClient(self.supervisor.gateway_url, TOKEN, timeout=5.0)

    def poll(self, client: GlsClient, job_id: str) -> Sample:
        try:
            job = client.job(job_id)
            return Sample(time.monotonic(), int(job["step"]), str(job["status"]), str(job.get("coordinator", "")))
        except ClientError as error:
            return Sample(time.monotonic(), None, f"error {error.status}", "")

    def run_job(self, fault: str | None) -> Outcome:
        """Submit the job, inject ``fault`` after ``kill_at`` acknowledged steps, follow it to the end."""
        samples: list[Sample] = []
        client = self.client()
        job_id = str(client.submit(CONFIG)["id"])
        outcome = Outcome(fault or "none", job_id, None, "", [], samples)
        deadline = time.monotonic() + self.job_timeout
        injected = fault is None
        try:
            while time.monotonic() < deadline:
                sample = self.poll(client, job_id)
                samples.append(sample)
                if sample.status in ("succeeded", "failed", "cancelled"):
                    break
                if not injected and sample.step is not None and sample.step >= self.kill_at:
                    outcome.before_rows = client.metrics(job_id)  # read last: every step up to the kill
                    acked = [int(row["step"]) for row in outcome.before_rows if row.get("kind") == "step"]
                    outcome.kill_step = max([sample.step, *acked])
                    outcome.coordinator_before = sample.coordinator
                    outcome.t_kill = time.monotonic()
                    client = self.inject(fault, sample, outcome, client)
                    if outcome.frozen_step is not None and outcome.frozen_step != outcome.kill_step:
                        outcome.notes.append("a step was committed after the last read, before the kill took "
                                             "effect; the time counts from that step")
                    injected = True
                    continue
                time.sleep(self.poll_s)
            else:
                outcome.notes.append(f"not finished after {self.job_timeout:.0f} s")
            final = self.poll(client, job_id)
            outcome.status = final.status
            outcome.rows = client.metrics(job_id)
            if final.status == "succeeded":
                path = client.download_model(job_id, self.folder / f"{job_id}.safetensors")
                outcome.theta = load_model(path)[1]
        finally:
            client.close()
        return outcome

    def inject(self, fault: str | None, last: Sample, outcome: Outcome, client: GlsClient) -> GlsClient:
        """Kill what ``fault`` names; returns the client to poll with from now on."""
        pids = self.supervisor.pids()
        if fault == "worker":
            os.kill(pids["worker-0"], signal.SIGKILL)
        elif fault in ("coordinator", "coordinator-standby"):
            standby = self.standby
            held_by_standby = fault == "coordinator-standby" and standby is not None and last.coordinator == "standby"
            victim = standby.pid if held_by_standby and standby is not None else pids["coordinator"]
            os.kill(victim, signal.SIGKILL)
            if fault == "coordinator-standby":
                outcome.notes.append(f"the {'standby' if held_by_standby else 'supervised'} coordinator held the job "
                                     "and was killed")
            self.wait_exit([victim], 10.0)
            time.sleep(0.05)  # whatever it had sent Redis before dying is processed by now
            outcome.frozen_step = self.redis_step(outcome.job_id)
        elif fault == "redis":
            os.kill(pids["redis"], signal.SIGKILL)
            outcome.frozen_step = self.redis_step(outcome.job_id)  # the restarted redis, before any new commit
            outcome.timings["redis answered again after, s"] = time.monotonic() - outcome.t_kill
        elif fault == "supervisor":
            children = list(pids.values())
            self.supervisor.kill()
            client.close()
            exited = self.wait_exit(children, 45.0)
            if exited is None:
                left = [pid for pid in children if alive(pid)]
                outcome.notes.append(f"{len(left)} children outlived the killed supervisor 45 s; SIGKILLed")
                for pid in left:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.wait_exit(left, 10.0)
            else:
                outcome.timings["all children exited (SIGTERM from the kernel) after, s"] = exited
            outcome.frozen_step = aof_step(self.supervisor.run_dir / "redis", outcome.job_id)
            took = self.supervisor.start()
            outcome.timings["the restarted cluster up served after a further, s"] = took
            return self.client()
        return client

    @staticmethod
    def wait_exit(pids: list[int], timeout: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not any(alive(pid) for pid in pids):
                return time.monotonic() - started
            time.sleep(0.05)
        return None

    def start_standby(self) -> None:
        """A second coordinator, outside the supervisor, on the cluster's Redis and workers."""
        env = {**self.supervisor.env(), "GLS_REDIS_URL": str(self.supervisor.info()["redis_url"]),
               "GLS_COORDINATOR_ID": "standby", "GLS_THREADS": "1"}
        log_path = self.folder / f"standby-coordinator-{len(list(self.folder.glob('standby-*.log'))) + 1}.log"
        with log_path.open("wb") as log:
            self.standby = subprocess.Popen([sys.executable, "-m", "services.coordinator"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while "waiting for jobs" not in log_path.read_text(errors="replace"):
            if self.standby.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the standby coordinator did not start; see {log_path}")
            time.sleep(0.1)

    def stop_standby(self) -> None:
        if self.standby is not None and self.standby.poll() is None:
            self.standby.send_signal(signal.SIGTERM)
            try:
                self.standby.wait(30)
            except subprocess.TimeoutExpired:
                self.standby.kill()
                self.standby.wait(10)
        self.standby = None


def step_interval(outcome: Outcome) -> float:
    """Median seconds between the step counter's advances in an undisturbed run."""
    firsts: dict[int, float] = {}
    for sample in outcome.samples:
        if sample.step is not None and sample.step not in firsts:
            firsts[sample.step] = sample.t
    times = [firsts[step] for step in sorted(firsts)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return statistics.median(gaps) if gaps else float("nan")


def spread(values: list[float]) -> str:
    """``median`` or ``median (min-max)`` of one value per repeat."""
    if not values:
        return "-"
    middle = f"{statistics.median(values):.1f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.1f}-{max(values):.1f})"


def summarise(fault: str, outcomes: list[Outcome], reference: Outcome) -> list[str]:
    """One table row for the repeats of one fault."""
    runs = len(outcomes)
    resumed = [r for r in (o.resume_s() for o in outcomes) if r is not None]
    equal = sum(1 for o in outcomes if o.theta is not None and reference.theta is not None
                and torch.equal(o.theta, reference.theta))
    lost = [step for o in outcomes for step in lost_steps(o.before_rows, o.rows)]
    reference_rows = [comparable(r) for r in reference.rows if r.get("kind") == "step"]
    expected = list(range(1, len(reference.steps) + 1))
    kill_steps = sorted({o.kill_step for o in outcomes})
    notes = [f"killed after step {kill_steps[0]}" + (f"-{kill_steps[-1]}" if len(kill_steps) > 1 else "")
             + f" of {len(expected)}"]
    if len(resumed) < runs:
        notes.append(f"NOT RESUMED in {runs - len(resumed)} of {runs} runs")
    unfinished = [o.status for o in outcomes if o.status != "succeeded"]
    if unfinished:
        notes.append(f"job ended {', '.join(unfinished)}")
    down = [a for a in (o.first_answer_s() for o in outcomes) if a is not None and a > 1.0]
    if down:
        bounded = sum(1 for o in outcomes if o.resume_s() is not None and o.resume_s() == o.first_answer_s())
        notes.append(f"REST unreachable for {spread(down)} s" + (
            f" (in {bounded}/{runs} runs the step had advanced by its first answer)" if bounded else ""))
    takeovers = [t for t in (o.takeover() for o in outcomes) if t is not None]
    if takeovers:
        standby = sum(1 for _, name in takeovers if name == "standby")
        who = f"the standby in {standby}/{runs} runs, else a supervised one" if standby or any(
            o.fault == "coordinator-standby" for o in outcomes) else "the restarted one"
        notes.append(f"a new coordinator ({who}) held the job after {spread([t for t, _ in takeovers])} s")
    keys = sorted({key for o in outcomes for key in o.timings})
    notes.extend(f"{key.replace(', s', '')} {spread([o.timings[key] for o in outcomes if key in o.timings])} s"
                 for key in keys)
    good_rows = sum(1 for o in outcomes if o.steps == expected)
    same_rows = sum(1 for o in outcomes if [comparable(r) for r in o.rows if r.get("kind") == "step"]
                    == reference_rows)
    notes.append(f"step rows 1..{len(expected)} each once: {good_rows}/{runs}")
    notes.append(f"step metrics equal to the undisturbed run: {same_rows}/{runs}")
    regressions = sum(o.regressions() for o in outcomes)
    if regressions:
        notes.append(f"STEP COUNTER WENT BACK in {regressions} polls")
    counted: dict[str, int] = {}
    for o in outcomes:
        for note in o.notes:
            counted[note] = counted.get(note, 0) + 1
    notes.extend(note if count == runs else f"{note} ({count}/{runs})" for note, count in counted.items())
    return [fault, spread(resumed) if resumed else "not resumed",
            "yes" if equal == runs else f"NO ({runs - equal} of {runs} differ)",
            str(len(lost)) + (f" (steps {lost})" if lost else ""), "; ".join(notes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {FAULTS}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-at-step", type=int, default=12, help="kill once this many steps are acknowledged")
    parser.add_argument("--repeats", type=int, default=1, help="runs per fault (table: median and range)")
    parser.add_argument("--poll-s", type=float, default=0.1)
    parser.add_argument("--job-timeout", type=float, default=150.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {FAULTS}")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")

    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="gls-faults-"))
    table: list[list[str]] = []
    reference: Outcome | None = None
    interval = float("nan")
    try:
        for fault in faults:  # a fresh cluster for each fault: its restart budget and state are its own
            bench = Bench(folder / fault, args.workers, args.poll_s, args.kill_at_step, args.job_timeout)
            try:
                up_s = bench.supervisor.start()
                print(f"{fault}: gls cluster up ({args.workers} workers) ready in {up_s:.1f} s", flush=True)
                if reference is None:
                    reference = bench.run_job(None)
                    if reference.status != "succeeded" or reference.theta is None:
                        raise SystemExit(f"the undisturbed job ended {reference.status}")
                    interval = step_interval(reference)
                    print(f"undisturbed: {len(reference.steps)} steps in "
                          f"{reference.samples[-1].t - reference.samples[0].t:.1f} s, median {interval:.2f} s "
                          "between steps", flush=True)
                outcomes: list[Outcome] = []
                for repeat in range(args.repeats):
                    if fault == "coordinator-standby":
                        bench.start_standby()
                    try:
                        outcome = bench.run_job(fault)
                    finally:
                        bench.stop_standby()
                    outcomes.append(outcome)
                    print(f"{fault} #{repeat + 1}: resumed after {outcome.resume_s()} s, "
                          f"lost {lost_steps(outcome.before_rows, outcome.rows)}", flush=True)
                table.append(summarise(fault, outcomes, reference))
            finally:
                bench.stop_standby()
                bench.supervisor.stop()
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if reference is None:
        return
    fields = Settings.model_fields
    settings = (f"GLS_JOB_STALE_S {fields['job_stale_s'].default}, GLS_HEARTBEAT_S {fields['heartbeat_s'].default}, "
                f"GLS_HEARTBEAT_TTL_S {fields['heartbeat_ttl_s'].default} (defaults); the supervisor checks every 1 s")
    print()
    print(f"{datetime.date.today()}: cnn3-tiny digits PGPE, {len(reference.steps)} steps, checkpoint every step, "
          f"{args.workers} workers, {os.cpu_count()} cores, {args.repeats} run(s) per fault; {settings}; "
          f"undisturbed step interval {interval:.2f} s; whole run {time.monotonic() - started:.0f} s")
    print()
    print("| fault | time to resume (s) | weights equal | acknowledged steps lost | notes |")
    print("| --- | --- | --- | --- | --- |")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
