"""Podman and podman-compose as subprocesses, configured for hosts that restrict resource limits.

Containers here run with runc and with the host's hard ulimits: raising a limit needs CAP_SYS_RESOURCE,
which an unprivileged CI container lacks (Podman's default nproc/nofile are above most hosts' hard limits),
and crun refuses hybrid cgroup hierarchies that runc accepts.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class CheckError(RuntimeError):
    """A step of the check failed; the message says which and why."""


def require(*programs: str) -> None:
    """Fail early, naming every missing program and the Debian packages that bring it."""
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        raise CheckError(f"missing {', '.join(missing)} on PATH: apt-get install podman runc podman-compose "
                         "debootstrap (Debian/Ubuntu)")


def hard_limits() -> dict[str, int]:
    """This process's hard nproc and nofile limits (finite ones only): a container may have at most these."""
    limits = {"nproc": resource.getrlimit(resource.RLIMIT_NPROC)[1],
              "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
    return {name: value for name, value in limits.items() if value != resource.RLIM_INFINITY}


def containers_conf(path: Path, ulimits: dict[str, int]) -> Path:
    """A containers.conf with runc (if installed) and these ulimits (soft = hard) for containers and builds."""
    limits = ", ".join(f'"{name}={value}:{value}"' for name, value in ulimits.items())
    lines = ["[containers]", f"default_ulimits = [{limits}]", ""]
    if shutil.which("runc"):
        lines += ["[engine]", 'runtime = "runc"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


@dataclass
class Podman:
    """Runs podman (and podman-compose) with one containers.conf and extra environment."""

    conf: Path
    env: Mapping[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf), **self.env}

    def run(self, *args: str, check: bool = True, timeout: float | None = 600, input: bytes | None = None,
            program: Sequence[str] = ("podman",)) -> str:
        """The command's stdout; a failure raises CheckError with the command and its stderr's tail."""
        command = [*program, *args]
        try:
            result = subprocess.run(command, env=self.environment(), capture_output=True, timeout=timeout,
                                    input=input)
        except subprocess.TimeoutExpired as error:
            raise CheckError(f"{' '.join(command)} ran past {timeout:.0f} s") from error
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).decode(errors="replace").strip()[-3000:]
            raise CheckError(f"{' '.join(command)} exited {result.returncode}:\n{tail}")
        return result.stdout.decode(errors="replace")

    def compose(self, files: Sequence[Path], project: str, *args: str, timeout: float = 900) -> str:
        """podman-compose with the given files and project name."""
        options = [f"--file={file}" for file in files]
        return self.run(*options, f"--project-name={project}", *args, timeout=timeout, program=("podman-compose",))

    def settable_ulimits(self, image: str) -> dict[str, int]:
        """The highest nproc (of the hard limit, 32768, 4096, 1024) that a container of this image may set.

        Some sandboxes refuse an RLIMIT_NPROC below the caller's hard limit too (setrlimit: EPERM).
        """
        limits = hard_limits()
        ceiling = limits.get("nproc", 1 << 22)
        for nproc in sorted({ceiling, *(value for value in (32768, 4096, 1024) if value < ceiling)}, reverse=True):
            trial = {**limits, "nproc": nproc}
            args = [f"--ulimit={name}={value}:{value}" for name, value in trial.items()]
            if subprocess.run(["podman", "run", "--rm", "--pull=never", *args, image, "true"], capture_output=True,
                              env=self.environment()).returncode == 0:
                return trial
        raise CheckError(f"no container starts here, even with nproc={nproc} "
                         f"(try: podman run --rm --ulimit nproc={nproc}:{nproc} {image} true)")

    def exists(self, kind: str, name: str) -> bool:
        """Whether an image, container, network or volume of that name exists."""
        verb = {"image": ("image", "exists"), "container": ("container", "exists"),
                "network": ("network", "exists"), "volume": ("volume", "exists")}[kind]
        return subprocess.run(["podman", *verb, name], env=self.environment(), capture_output=True).returncode == 0
