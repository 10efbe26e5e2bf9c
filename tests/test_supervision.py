"""The supervisor's restart policy on real child processes: at once the first time, then a growing back-off,
and the other children keep running; a dead coordinator is replaced by its spare."""

import sys
import time
from pathlib import Path

from services.cluster import SPARE, Child, Cluster, backoff


def child(name: str, code: str, tmp_path: Path, standing_by: bool = False) -> Child:
    return Child(name, [sys.executable, "-c", code], {}, tmp_path / f"{name}.log", standing_by=standing_by)


def cluster_of(tmp_path: Path, *children: Child) -> Cluster:
    cluster = Cluster(tmp_path, "redis://unused", "token", "http://127.0.0.1:1", "127.0.0.1:2")
    cluster.children = {c.name: c for c in children}
    for c in children:
        c.start()
    return cluster


def wait_exited(c: Child) -> None:
    assert c.process is not None
    c.process.wait(30)


def test_backoff_is_none_at_first_then_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in range(9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_child_that_keeps_exiting_backs_off_while_the_others_keep_running(tmp_path: Path) -> None:
    crashing = child("worker-0", "raise SystemExit(3)", tmp_path)
    steady = child("gateway", "import time; time.sleep(60)", tmp_path)
    cluster = cluster_of(tmp_path, crashing, steady)
    try:
        now = 1000.0
        wait_exited(crashing)
        assert cluster.supervise(now) == ["worker-0 exited; restarted"]  # the first crash: at once
        first_pid = steady.process.pid if steady.process else None
        for restarts, wait in ((1, 1.0), (2, 2.0), (3, 4.0)):
            wait_exited(crashing)
            now += 0.1
            events = cluster.supervise(now)
            assert events == [f"worker-0 exited again ({restarts} restarts in the last minute); "
                              f"restarting it in {wait:.0f} s"]
            assert cluster.supervise(now + wait - 0.05) == []  # still backing off, said once
            assert cluster.supervise(now + wait) == ["worker-0 exited; restarted"]
            now += wait
        assert steady.alive and steady.process is not None and steady.process.pid == first_pid
        wait_exited(crashing)
        assert cluster.supervise(now + 61.0) == ["worker-0 exited; restarted"]  # a minute later: afresh
        assert (tmp_path / "cluster.json").is_file()
    finally:
        cluster.stop()
    assert not crashing.alive and not steady.alive


def test_a_dead_coordinator_is_replaced_by_its_spare_which_was_already_running(tmp_path: Path) -> None:
    # the spare stands by as the real one does: the promotion signal (SIGUSR1) is blocked and taken with sigwait
    standing = ("import signal, sys; signal.sigwait({signal.SIGUSR1}); print('promoted', flush=True); "
                "import time; time.sleep(60)")
    coordinator = child("coordinator", "raise SystemExit(1)", tmp_path)
    spare = Child(SPARE, [sys.executable, "-c", standing], {}, tmp_path / "spare.log", standing_by=True)
    cluster = cluster_of(tmp_path, coordinator, spare)
    try:
        assert spare.process is not None
        spare_pid = spare.process.pid
        wait_exited(coordinator)
        assert cluster.supervise(1000.0) == ["coordinator exited; its spare took over"]
        promoted = cluster.children["coordinator"]
        assert promoted.process is not None and promoted.process.pid == spare_pid and promoted.alive
        successor = cluster.children[SPARE]
        assert successor.alive and successor.process is not None and successor.process.pid != spare_pid
        deadline = time.monotonic() + 30
        while b"promoted" not in (tmp_path / "spare.log").read_bytes():
            assert time.monotonic() < deadline, "the spare never took the promotion signal"
            time.sleep(0.05)
        # the successor shares the log and stands by: only the promoted spare printed
        assert (tmp_path / "spare.log").read_bytes().count(b"promoted") == 1
    finally:
        cluster.stop()
