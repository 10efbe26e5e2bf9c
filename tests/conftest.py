"""Test configuration: one intra-op thread.

The suite runs thousands of small tensor operations; with torch's default of one thread per core,
a second busy process on a 2-core machine makes them spin-wait on each other (measured: ~15x
slower). One thread is as fast for these sizes and keeps the run time predictable.

Kernels are taken in their default order instead of being timed on first use (every new test
shape would otherwise time every candidate); tests/test_kernels.py holds each candidate equal to
the plain reference and exercises the timing itself.
"""

import os

os.environ.setdefault("GLS_KERNEL_TUNING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from servers import RedisServer  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A fresh redis-server process on a free port, stopped after the test."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
