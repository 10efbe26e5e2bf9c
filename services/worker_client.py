"""The caller's side of the bound workers: discovery, work splitting, blob reuse and fail-over.

``WorkerPool.evaluate`` is a drop-in for ``gls_core.training.points.evaluate_members`` over the
whole proposal: members are split into contiguous block-aligned shares, one per live worker, and
every member is computed with the same block shapes as in process, so the assembled result is
bit-identical whichever worker computed which share, and however often a share was re-sent.

That holds when the workers choose their kernels alike: a job's steps carry its kernel plan, which
every worker follows. The plan is made by the job's first step, sent whole to one worker that
chooses as it is configured and answers its choices (``make_plan``).

Requests are assembled from pre-serialised parts (protobuf messages concatenate), so each large
tensor is encoded and hashed once per call, whatever the number of shares and retries. A worker
is sent a blob inline until it has answered a request that carried it; afterwards the hash alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis
import torch

from gls_core.bounds import KernelPlan
from gls_core.errors import Interrupted
from gls_core.nets.spec import NetSpec
from gls_core.training.estimators import Evaluated, Proposal
from gls_core.training.objective import Objective
from gls_core.training.points import block_ranges

from .codec import (
    content_hash,
    objective_to_proto,
    proposal_fields,
    relaxation_to_proto,
    spec_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from .discovery import live_workers
from .proto.gls.v1 import bound_worker_pb2
from .rich_status import Reason, error_info
from .settings import Settings
from .tls import peer_channel

log = logging.getLogger(__name__)

SERVICE = "/gls.v1.BoundWorker/"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""Codes after which a share goes to another worker (as does RESOURCE_EXHAUSTED from a full worker)."""
POLL_S = 0.25
"""How often a call in progress asks its ``should_stop`` (a cancelled job stops within about this, plus one block)."""
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
"""Reconnect quickly: a restarted worker is usable again within a retry or two."""


class NoWorkersError(RuntimeError):
    """No bound worker answered within the pool's bounded number of attempts."""


Progress = Callable[[int, int], None]
"""(members done, members in the step): called as each share of a step comes back."""


class WorkerRejectedError(RuntimeError):
    """A worker refused a request for a reason re-sending cannot fix (e.g. INVALID_ARGUMENT)."""

    def __init__(self, address: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"bound worker {address} answered {code.name}: {details}")
        self.address, self.code, self.details = address, code, details


@dataclass
class CallStats:
    """One share: where it ran and where its time went (seconds; attempts > 1 means it was re-sent)."""

    rpc: str
    start: int
    stop: int
    address: str = ""
    attempts: int = 0
    resent_inline: bool = False
    serialise_s: float = 0.0
    rpc_s: float = 0.0
    compute_s: float = 0.0
    deserialise_s: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0


@dataclass
class StepStats:
    """One ``evaluate`` or ``bounds`` call. ``overhead_s`` is what the pool added to the slowest worker's compute."""

    rpc: str
    wall_s: float = 0.0
    discover_s: float = 0.0
    encode_s: float = 0.0
    assemble_s: float = 0.0
    calls: list[CallStats] = field(default_factory=list)

    @property
    def compute_s(self) -> float:
        return max((call.compute_s for call in self.calls), default=0.0)

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.wall_s - self.compute_s)

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class _Blob:
    """A tensor serialised once as a request field: inline (with its hash) and by hash only."""

    sha256: str
    inline: bytes
    by_hash: bytes


@dataclass
class _Share:
    start: int
    stop: int
    own: bytes  # share-specific scalar fields, serialised
    blobs: list[_Blob] = field(default_factory=list)


@dataclass
class _Work:
    rpc: str
    fixed: bytes  # fields common to every share, serialised
    blobs: list[_Blob]
    shares: list[_Share]
    timeout_s: float | None = None  # one call's limit (default: settings.rpc_timeout_s)
    stopped: threading.Event = field(default_factory=threading.Event)  # set: send nothing more, cancel the calls
    calls: set[grpc.Future] = field(default_factory=set)  # in flight, to cancel when stopped
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, call: grpc.Future) -> None:
        with self.lock:
            self.calls.add(call)
            stopped = self.stopped.is_set()
        if stopped:
            call.cancel()

    def untrack(self, call: grpc.Future) -> None:
        with self.lock:
            self.calls.discard(call)

    def stop(self) -> None:
        """Nothing more is sent, and the calls in flight are cancelled (their workers stop at the next block)."""
        with self.lock:
            self.stopped.set()
            calls = list(self.calls)
        for call in calls:
            call.cancel()


def _blob(message_type: Callable[..., Any], name: str, tensor: torch.Tensor) -> _Blob:
    encoded = tensor_to_proto(tensor)
    sha = content_hash(encoded)
    inline = message_type(**{name: bound_worker_pb2.Blob(sha256=sha, tensor=encoded)}).SerializeToString()
    by_hash = message_type(**{name: bound_worker_pb2.Blob(sha256=sha)}).SerializeToString()
    return _Blob(sha, inline, by_hash)


def split_evenly(parts: int, shares: int) -> list[tuple[int, int]]:
    """``parts`` consecutive units into ``shares`` contiguous runs whose sizes differ by at most one."""
    shares = max(1, min(shares, parts))
    base, extra = divmod(parts, shares)
    runs, first = [], 0
    for index in range(shares):
        last = first + base + (index < extra)
        runs.append((first, last))
        first = last
    return runs


class WorkerPool:
    """Bound workers found in Redis (``live_workers``) plus ``settings.static_workers``; one channel per address."""

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None, *, max_attempts: int = 6,
                 backoff_s: float = 0.1, known_blobs: int = 256, threads: int = 64) -> None:
        self.settings = settings
        # The shared secret of GLS_WORKER_TOKEN, sent with every call (services/bound_worker/auth.py checks it).
        self._metadata = (("authorization", f"Bearer {settings.worker_token}"),) if settings.worker_token else ()
        # GLS_INTERNAL_TLS_*: read now, so that a bad file stops the caller before it serves or claims anything.
        self._tls = settings.internal_tls
        self.redis = redis_client
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.known_blobs = known_blobs
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._in_flight: dict[str, int] = {}
        self._known: dict[str, OrderedDict[str, None]] = {}
        self._cooling: dict[str, float] = {}
        self._redis_addresses: list[str] = []
        self._redis_failing = False
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker-pool")
        self._last: StepStats | None = None

    # ------------------------------------------------------------------------------------ membership

    def addresses(self) -> list[str]:
        """Live workers in Redis (by id), then the static addresses; closes the channels of departed ones."""
        found = self._redis_addresses
        if self.redis is not None:
            try:
                found = [info.address for info in live_workers(self.redis)]
                if self._redis_failing:
                    log.info("worker discovery in redis works again")
                self._redis_failing = False
            except (redis.RedisError, OSError) as error:
                if not self._redis_failing:
                    log.warning("worker discovery in redis failed (%s); using the last known workers", error)
                self._redis_failing = True
        addresses = list(dict.fromkeys([*found, *self.settings.static_workers]))
        with self._lock:
            self._redis_addresses = found
            for address in [a for a in self._channels if a not in addresses and not self._in_flight.get(a)]:
                self._channels.pop(address).close()
                self._known.pop(address, None)
        return addresses

    def _healthy_first(self, addresses: list[str]) -> list[str]:
        now = time.monotonic()
        with self._lock:
            healthy = [a for a in addresses if self._cooling.get(a, 0.0) <= now]
        return healthy or addresses

    def _pick(self, excluded: set[str]) -> str | None:
        candidates = self._healthy_first([a for a in self.addresses() if a not in excluded])
        if not candidates:
            return None
        with self._lock:
            return min(candidates, key=lambda a: self._in_flight.get(a, 0))

    # ------------------------------------------------------------------------------------- transport

    def _acquire(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = peer_channel(address, self._tls, self.settings.internal_tls_server_name,
                                       [*self.settings.grpc_options, *CHANNEL_OPTIONS])
                self._channels[address] = channel
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
            return channel

    def _release(self, address: str) -> None:
        with self._lock:
            self._in_flight[address] -= 1

    def _knows(self, address: str) -> set[str]:
        with self._lock:
            return set(self._known.get(address, ()))

    def _remember(self, address: str, hashes: list[str]) -> None:
        with self._lock:
            known = self._known.setdefault(address, OrderedDict())
            for sha in hashes:
                known[sha] = None
                known.move_to_end(sha)
            while len(known) > self.known_blobs:
                known.popitem(last=False)

    def _forget(self, address: str) -> None:
        with self._lock:
            self._known.pop(address, None)

    def _call(self, address: str, work: _Work, share: _Share, stats: CallStats, inline: bool) -> bytes:
        blobs = [*work.blobs, *share.blobs]
        started = time.perf_counter()
        known = set() if inline else self._knows(address)
        payload = b"".join([work.fixed, share.own,
                            *(blob.by_hash if blob.sha256 in known else blob.inline for blob in blobs)])
        sent = time.perf_counter()
        stats.serialise_s += sent - started
        stats.request_bytes = len(payload)
        channel = self._acquire(address)
        try:
            timeout = work.timeout_s or self.settings.rpc_timeout_s
            call = channel.unary_unary(SERVICE + work.rpc).future(payload, timeout=timeout, metadata=self._metadata)
            work.track(call)
            try:
                data: bytes = call.result()
            finally:
                work.untrack(call)
        finally:
            self._release(address)
            stats.rpc_s += time.perf_counter() - sent
        self._remember(address, [blob.sha256 for blob in blobs])
        stats.response_bytes = len(data)
        return data

    def _run_share(self, work: _Work, share: _Share, address: str | None) -> tuple[bytes, CallStats]:
        """Send one share until a worker answers it: re-sent inline on a missing blob, elsewhere on failure."""
        stats = CallStats(work.rpc, share.start, share.stop)
        excluded: set[str] = set()
        inline, failures, last_error = False, 0, "no bound worker is registered in redis or configured"
        while failures < self.max_attempts:
            if work.stopped.is_set():
                raise Interrupted(f"{work.rpc} [{share.start}, {share.stop}) was stopped by its caller")
            if address is None:
                address = self._pick(excluded)
                if address is None:  # everyone failed: wait, then give them all another chance
                    time.sleep(min(2.0, self.backoff_s * 2 ** failures))
                    failures += 1
                    excluded.clear()
                    continue
            stats.attempts += 1
            try:
                data = self._call(address, work, share, stats, inline)
                stats.address = address
                return data, stats
            except grpc.FutureCancelledError:
                continue  # cancelled by work.stop(): the loop's first check raises Interrupted
            except grpc.RpcError as error:
                if work.stopped.is_set():
                    continue
                code, details, info = error.code(), error.details() or "", error_info(error)
            if info is not None and info[0] == Reason.MISSING_BLOB and not inline:
                self._forget(address)  # it restarted or evicted: everything goes inline once
                inline = stats.resent_inline = True
                continue
            # grpc's own concurrency limit answers before any handler runs, so it carries no reason of ours
            busy = code == grpc.StatusCode.RESOURCE_EXHAUSTED and info is None and "Concurrent RPC limit" in details
            if code not in RETRYABLE and not busy:
                raise WorkerRejectedError(address, code, details)
            log.warning("bound worker %s failed on %s [%d, %d): %s %s; re-sending", address, work.rpc, share.start,
                        share.stop, code.name, details)
            last_error = f"{address}: {code.name} {details}"
            with self._lock:
                self._cooling[address] = time.monotonic() + self.settings.heartbeat_ttl_s
            excluded.add(address)
            address, inline = None, False
            failures += 1
        raise NoWorkersError(f"no bound worker could evaluate {work.rpc} [{share.start}, {share.stop}) after "
                             f"{self.max_attempts} attempts; last error: {last_error}")

    def _discover(self, step: StepStats) -> list[str]:
        """Workers to split the next call across (those not cooling down after a failure, if any)."""
        started = time.perf_counter()
        addresses = self._healthy_first(self.addresses())
        step.discover_s = time.perf_counter() - started
        return addresses

    def _dispatch(self, work: _Work, addresses: list[str], step: StepStats,
                  should_stop: Callable[[], bool] | None = None, progress: Callable[[int], None] | None = None
                  ) -> list[bytes]:
        """Run the shares, one per worker at a time: the first ones round-robin (a lone share to the least busy
        worker), each later one to whichever worker is least busy when a share comes back.

        ``progress`` gets the members done so far as each share comes back. The first failure, or
        ``should_stop()`` (polled every :data:`POLL_S`), stops the work: nothing more is sent, the calls in
        flight are cancelled, and the failure (:class:`Interrupted` for a stop) is raised.
        """
        limit = max(1, len(addresses))

        def first_choice(index: int) -> str | None:
            return addresses[index % len(addresses)] if len(work.shares) > 1 and index < limit else None

        results: list[tuple[bytes, CallStats] | None] = [None] * len(work.shares)
        running: dict[Future[tuple[bytes, CallStats]], int] = {}
        waiting = list(range(len(work.shares)))
        done = 0
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    index = waiting.pop(0)
                    running[self._executor.submit(self._run_share, work, work.shares[index], first_choice(index))] \
                        = index
                finished, _ = wait(running, timeout=POLL_S if should_stop is not None else None,
                                   return_when=FIRST_COMPLETED)
                for future in finished:
                    index = running.pop(future)
                    results[index] = future.result()
                    done += work.shares[index].stop - work.shares[index].start
                    if progress is not None:
                        progress(done)
                if should_stop is not None and (waiting or running) and should_stop():
                    raise Interrupted(f"{work.rpc} stopped by its caller after {done} members")
        except BaseException:
            work.stop()
            for future in running:
                future.cancel()
            wait(running)  # the calls in flight end at once, cancelled
            raise
        step.calls = [result[1] for result in results if result is not None]
        return [result[0] for result in results if result is not None]

    # ------------------------------------------------------------------------------------ operations

    def evaluate(self, spec: NetSpec, proposal: Proposal, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                 eps: float, seed: int, block: int, kernel_plan: KernelPlan | None = None, *,
                 make_plan: bool = False, should_stop: Callable[[], bool] | None = None,
                 progress: Progress | None = None) -> Evaluated:
        """What ``evaluate_members(spec, proposal, objective, x, y, eps, seed, block)`` returns, computed remotely.

        The members go out in block-aligned shares, ``settings.shares_per_worker`` per live worker, one share
        per worker at a time, so a faster worker takes more and ``progress(done, members)`` is called as
        each comes back. ``should_stop`` is polled while the shares run: when it says so the calls in
        flight are cancelled, their workers stop within a block, and :class:`Interrupted` is raised.

        Every share follows ``kernel_plan`` when given. With ``make_plan`` (and no plan) the first block goes
        alone to one worker, which chooses its kernels as it is configured; every other block follows those
        choices, which come back as ``Evaluated.kernel_plan``. With neither, each worker chooses as configured.
        """
        if seed != proposal.seed:
            raise ValueError(f"the wire carries one seed: job seed {seed} differs from proposal seed {proposal.seed}")
        if make_plan and kernel_plan is not None:
            raise ValueError("a kernel plan is either followed or made, not both")
        blocks = block_ranges(proposal.count, block)
        step = StepStats("EvaluatePoints")
        started = time.perf_counter()
        addresses = self._discover(step)
        Request = bound_worker_pb2.PointsRequest
        blobs = [_blob(Request, "centre", proposal.centre), _blob(Request, "sigma", proposal.sigma),
                 _blob(Request, "inputs", x), _blob(Request, "labels", y)]

        def fixed(plan: KernelPlan | None) -> bytes:
            request = Request(block=block, eps=eps, **proposal_fields(proposal))
            spec_to_proto(spec, out=request.spec)
            objective_to_proto(objective, out=request.objective)
            if plan is not None:
                request.kernel_plan.SetInParent()  # an empty plan is still a plan to follow
                request.kernel_plan.choices.update(plan)
            return request.SerializeToString()

        def shares(first: int, last: int, count: int) -> list[_Share]:
            runs = [(blocks[first + a][0], blocks[first + b - 1][1]) for a, b in split_evenly(last - first, count)]
            return [_Share(start, stop, Request(start=start, stop=stop).SerializeToString()) for start, stop in runs]

        def run(work: _Work, members_before: int) -> list[tuple[_Share, bytes, CallStats]]:
            report = None if progress is None else (lambda done: progress(members_before + done, proposal.count))
            answers = self._dispatch(work, addresses, step, should_stop, report)
            return list(zip(work.shares, answers, step.calls, strict=True))

        step.encode_s = time.perf_counter() - started - step.discover_s
        plan, answered, head = kernel_plan, [], 0
        if make_plan:
            answered = run(_Work("EvaluatePoints", fixed(None), blobs, shares(0, 1, 1)), 0)
            plan = dict(bound_worker_pb2.PointsResponse.FromString(answered[0][1]).kernel_plan.choices)
            head = 1
        if head < len(blocks):
            pieces = len(addresses) * self.settings.shares_per_worker
            answered += run(_Work("EvaluatePoints", fixed(plan), blobs, shares(head, len(blocks), pieces)),
                            blocks[head][0])
        step.calls = [stats for _, _, stats in answered]
        assembled = time.perf_counter()
        losses, grads = [], []
        for share, data, stats in answered:
            decoded = time.perf_counter()
            response = bound_worker_pb2.PointsResponse.FromString(data)
            count = share.stop - share.start
            losses.append(tensor_from_proto(response.losses, "losses"))
            if proposal.needs_grads:
                grads.append(tensor_from_proto(response.gradients, "gradients"))
            if losses[-1].shape != (count,) or (grads and grads[-1].shape != (count, proposal.centre.numel())):
                raise RuntimeError(f"bound worker {stats.address} answered members [{share.start}, {share.stop}) "
                                   "with results of the wrong shape")
            stats.compute_s = response.compute_seconds
            stats.deserialise_s = time.perf_counter() - decoded
        device = proposal.centre.device
        result = Evaluated(torch.cat(losses).to(device), torch.cat(grads).to(device) if proposal.needs_grads else None,
                           plan)
        step.assemble_s = time.perf_counter() - assembled
        step.wall_s = time.perf_counter() - started
        self._last = step
        return result

    def bounds(self, spec: NetSpec, params: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None = None,
               eps: float | torch.Tensor = 0.0, method: str = "deeppoly", options: dict[str, Any] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``compute_bounds`` (margins when ``labels`` are given) with the inputs split across the workers."""
        batch = x.shape[0]
        if batch == 0:
            raise ValueError("x is an empty batch")
        per_input = isinstance(eps, torch.Tensor) and eps.dim() > 0
        step = StepStats("Bounds")
        started = time.perf_counter()
        addresses = self._discover(step)
        Request = bound_worker_pb2.BoundsRequest
        request = Request()
        spec_to_proto(spec, out=request.spec)
        relaxation_to_proto(method, options, out=request.relaxation)
        if not per_input:
            request.perturbation.eps = float(eps)
        shares = []
        for start, stop in split_evenly(batch, len(addresses)):
            own = Request()
            if per_input:
                assert isinstance(eps, torch.Tensor)
                own.perturbation.eps_per_input.CopyFrom(tensor_to_proto(eps[start:stop]))
            blobs = [_blob(Request, "inputs", x[start:stop])]
            if labels is not None:
                blobs.append(_blob(Request, "labels", labels[start:stop]))
            shares.append(_Share(start, stop, own.SerializeToString(), blobs))
        work = _Work("Bounds", request.SerializeToString(), [_blob(Request, "params", params)], shares)
        step.encode_s = time.perf_counter() - started - step.discover_s
        answers = self._dispatch(work, addresses, step)
        assembled = time.perf_counter()
        lowers, uppers = [], []
        for data, stats in zip(answers, step.calls):
            decoded = time.perf_counter()
            response = bound_worker_pb2.BoundsResponse.FromString(data)
            lowers.append(tensor_from_proto(response.lower, "lower"))
            uppers.append(tensor_from_proto(response.upper, "upper"))
            stats.compute_s = response.compute_seconds
            stats.deserialise_s = time.perf_counter() - decoded
        device = x.device
        lower, upper = torch.cat(lowers, dim=-2).to(device), torch.cat(uppers, dim=-2).to(device)
        step.assemble_s = time.perf_counter() - assembled
        step.wall_s = time.perf_counter() - started
        self._last = step
        return lower, upper

    def verify(self, spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
               eps: float | torch.Tensor, timeout_s: float) -> Iterator[bound_worker_pb2.VerifyVerdict]:
        """Complete verification of each input, one input per call spread over the workers; verdicts in order.

        A generator: each verdict is yielded as soon as it and those before it are decided, and closing
        it cancels the calls, those in flight included.
        """
        batch = x.shape[0]
        if batch == 0:
            raise ValueError("x is an empty batch")
        per_input = isinstance(eps, torch.Tensor) and eps.dim() > 0
        Request = bound_worker_pb2.VerifyRequest
        request = Request(timeout_seconds=timeout_s)
        spec_to_proto(spec, out=request.spec)
        if not per_input:
            request.perturbation.eps = float(eps)
        shares = []
        for index in range(batch):
            own = Request()
            if per_input:
                assert isinstance(eps, torch.Tensor)
                own.perturbation.eps_per_input.CopyFrom(tensor_to_proto(eps[index:index + 1]))
            shares.append(_Share(index, index + 1, own.SerializeToString(),
                                 [_blob(Request, "inputs", x[index:index + 1]),
                                  _blob(Request, "labels", labels[index:index + 1])]))
        # The call may take the whole per-input limit plus its attack and MILP set-up.
        work = _Work("Verify", request.SerializeToString(), [_blob(Request, "params", theta)], shares,
                     timeout_s=timeout_s * 1.5 + 30)
        addresses = self._healthy_first(self.addresses())
        futures = [self._executor.submit(self._run_share, work, share, addresses[i % len(addresses)] if addresses
                                         else None) for i, share in enumerate(shares)]
        try:
            for future in futures:
                data, _ = future.result()
                verdicts = bound_worker_pb2.VerifyResponse.FromString(data).verdicts
                if len(verdicts) != 1:
                    raise RuntimeError(f"a bound worker answered {len(verdicts)} verdicts for one input")
                yield verdicts[0]
        finally:
            work.stop()  # the calls in flight are cancelled: their workers stop searching at the next batch
            for future in futures:
                future.cancel()

    # --------------------------------------------------------------------------------------- lifecycle

    def last_step_stats(self) -> StepStats | None:
        """Timings of the most recent ``evaluate`` or ``bounds`` call."""
        return self._last

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CallStats", "NoWorkersError", "StepStats", "WorkerPool", "WorkerRejectedError"]
