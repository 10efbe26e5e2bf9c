"""The cluster's images built with nothing from a container registry, cached between runs.

A Debian bookworm root file system from debootstrap (the Debian mirror apt uses) is imported as the base of
both the Python image (deploy/local/python.Containerfile, the PYTHON_IMAGE of deploy/Dockerfile) and Redis
(deploy/local/redis.Containerfile); every Python package comes from a wheelhouse that `pip download`
fills on the host, mounted into the build. The base tarball and the wheelhouse are kept in the cache
directory; the images stay in Podman's store, and rebuilds reuse its layers.
"""

from __future__ import annotations

import hashlib
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .podman import CheckError, Podman

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
DEBIAN_IMAGE = "localhost/gls-debian:bookworm"
PYTHON_IMAGE = "localhost/gls-python:3.11-bookworm"
REDIS_IMAGE = "localhost/gls-redis:7"  # the name deploy/compose.local-build.yml gives the redis service
# Python 3.11 (the wheels' ABI), the image's tools, and Redis for the redis service; passwd for useradd.
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "tini", "gcc", "libc6-dev", "passwd", "redis-server")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Images:
    """The image names a build produced (GLS image as docker-compose.yml names it)."""

    gls: str
    redis: str


def project_image() -> str:
    """The GLS image's name in docker-compose.yml (x-gls-image), e.g. gls:0.1.0."""
    match = re.search(r"^\s*image:\s*(gls:[\w.-]+)\s*$", (ROOT / "docker-compose.yml").read_text(), re.MULTILINE)
    if match is None:
        raise CheckError("docker-compose.yml names no gls:VERSION image")
    return match.group(1)


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else deb.debian.org."""
    sources = [*Path("/etc/apt").glob("sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        match = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+bookworm\b", text, re.MULTILINE)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def debian_tarball(cache: Path, mirror: str) -> Path:
    """A bookworm minbase root file system with DEBIAN_PACKAGES, as a tar (debootstrap once, then cached)."""
    tarball = cache / "debian-bookworm.tar"
    if tarball.is_file():
        return tarball
    rootfs = cache / "rootfs.partial"
    shutil.rmtree(rootfs, ignore_errors=True)
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm",
               str(rootfs), mirror]
    print(f"  debootstrap bookworm from {mirror} (a few minutes, once)", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace")[-2000:] if log.is_file() else result.stderr[-2000:]
        raise CheckError(f"{' '.join(command)} exited {result.returncode}:\n{detail}")
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(rootfs), "--exclude=./var/cache/apt/archives/*.deb",
                    "--exclude=./var/lib/apt/lists/*", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                    "-cf", str(partial), "."], check=True)
    partial.rename(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def debian_image(podman: Podman, cache: Path, mirror: str | None = None) -> str:
    """DEBIAN_IMAGE, imported from the cached tarball when missing (which debootstrap makes when missing)."""
    if not podman.exists("image", DEBIAN_IMAGE):
        podman.run("import", str(debian_tarball(cache, mirror or apt_mirror())), DEBIAN_IMAGE)
    return DEBIAN_IMAGE


def base_images(podman: Podman) -> None:
    """PYTHON_IMAGE and REDIS_IMAGE built on DEBIAN_IMAGE (when missing)."""
    for name, containerfile in ((PYTHON_IMAGE, "python.Containerfile"), (REDIS_IMAGE, "redis.Containerfile")):
        if not podman.exists("image", name):
            podman.run("build", "--pull=never", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}",
                       "-f", str(LOCAL / containerfile), "-t", name, str(LOCAL))


def wheelhouse(podman: Podman, cache: Path) -> Path:
    """Every wheel the image installs (torch pinned, the project's dependencies under constraints.txt).

    Downloaded on the host, then completed with what the image's own Python still lacks (a dependency whose
    marker differs between the host's and the image's Python, e.g. python_full_version < "3.11.3"). Keyed
    by pyproject.toml and constraints.txt, so a dependency change fills a new one.
    """
    if sys.version_info[:2] != (3, 11):
        raise CheckError(f"the wheelhouse must be made with Python 3.11 (the image's), not {platform.python_version()}")
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    house = cache / f"wheelhouse-{platform.machine()}-{digest.hexdigest()[:12]}"
    if (house / ".complete").is_file():
        return house
    torch = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    if torch is None:
        raise CheckError("pyproject.toml pins no torch==VERSION")
    print(f"  pip download into {house} (about 450 MB, once)", flush=True)
    requirements = [torch.group(1), f"{ROOT}[services]", "setuptools>=68"]
    for _ in range(5):
        download(house, requirements)
        requirements = missing_in_image(podman, house, torch.group(1))
        if not requirements:
            break
        print(f"  the image's Python also needs {', '.join(requirements)}", flush=True)
    else:
        raise CheckError(f"the wheelhouse still lacks {', '.join(requirements)} for the image's Python")
    sources = sorted(path.name for path in house.iterdir() if not path.name.endswith(".whl"))
    if sources:
        raise CheckError(f"no wheel for {', '.join(sources)}: the image builds with no index and no compiler for them")
    (house / ".complete").touch()
    return house


def download(house: Path, requirements: list[str]) -> None:
    """pip download of these requirements (with their dependencies) under constraints.txt into house."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(house),
               "--constraint", str(ROOT / "constraints.txt"), *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")


def missing_in_image(podman: Podman, house: Path, torch: str) -> list[str]:
    """The requirements (markers dropped) that pip in PYTHON_IMAGE finds no wheel for in house; [] if none."""
    mounts = [f"--volume={house}:/wheelhouse:ro"] + [f"--volume={ROOT / name}:/src/{name}:ro"
                                                      for name in ("pyproject.toml", "README.md", "constraints.txt")]
    script = ("cp -r /src /tmp/src && cd /tmp/src && pip install --dry-run --quiet --no-index --find-links /wheelhouse "
              f"-c constraints.txt '{torch}' '.[services]'")
    result = subprocess.run(["podman", "run", "--rm", "--pull=never", "--network=none", *mounts, PYTHON_IMAGE,
                             "sh", "-c", script], capture_output=True, text=True, env=podman.environment())
    if result.returncode == 0:
        return []
    missing = re.findall(r"No matching distribution found for ([^;\n]+)", result.stderr)
    if not missing:
        raise CheckError(f"pip in {PYTHON_IMAGE} cannot install from {house}:\n{result.stderr[-3000:]}")
    return sorted({requirement.strip() for requirement in missing})


def build(podman: Podman, cache: Path) -> Images:
    """The base images (when missing), then deploy/Dockerfile as docker-compose.yml's gls image."""
    base_images(podman)
    house = wheelhouse(podman, cache)
    image = project_image()
    podman.run("build", "--pull=never", "--layers", "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}",
               "--build-arg", "PIP_WHEELHOUSE=/wheelhouse", "--volume", f"{house}:/wheelhouse:ro",
               "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", image, str(ROOT), timeout=1800)
    return Images(gls=image, redis=REDIS_IMAGE)
