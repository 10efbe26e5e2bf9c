"""A process's resident memory from ``/proc/<pid>/status`` (Linux), for the memory benchmarks and tests."""

from __future__ import annotations

from pathlib import Path


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` field (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/<pid>/clear_refs``); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
