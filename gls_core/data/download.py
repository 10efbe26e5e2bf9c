"""Fetching missing dataset files from their usual public locations, with the standard library only.

Timeouts are short so that an offline machine fails fast into the "files not found" message rather
than hanging. Files are written to ``<name>.part`` and renamed when complete, so an interrupted
download never looks like data. ``MIRRORS`` is a module-level table so that deployments (and tests)
can point it elsewhere.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0
# Base URLs tried in order; a file's URL is the base followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "tinyimagenet": ("http://cs231n.stanford.edu/",),
}


def fetch(dataset: str, name: str, dest: Path) -> Path:
    """Download ``name`` for ``dataset`` into ``dest`` from the first mirror that serves it; OSError if none."""
    failures = []
    for base in MIRRORS[dataset]:
        url = base + name
        part = dest / f"{name}.part"
        try:
            log.info("downloading %s to %s", url, dest)
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                dest.mkdir(parents=True, exist_ok=True)
                with part.open("wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
            return part.replace(dest / name)
        except OSError as error:  # URLError, timeouts, refused connections, unwritable directories
            part.unlink(missing_ok=True)
            failures.append(f"{url}: {error}")
    raise OSError("download failed (" + "; ".join(failures) + ")")


def fetch_archive(dataset: str, name: str, dest: Path) -> None:
    """Download the archive ``name`` (.tar.gz or .zip), unpack it into ``dest`` and delete it."""
    archive = fetch(dataset, name, dest)
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(dest)  # zipfile drops absolute and ".." components
        else:
            with tarfile.open(archive) as bundle:
                bundle.extractall(dest, filter="data")  # refuses links and paths leaving dest
    except (tarfile.TarError, zipfile.BadZipFile) as error:
        raise OSError(f"{archive}: corrupt archive ({error})") from error
    finally:
        archive.unlink(missing_ok=True)
