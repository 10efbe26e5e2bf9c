"""Test configuration: one intra-op thread.

The suite runs thousands of small tensor operations; with torch's default of one thread per core,
a second busy process on a 2-core machine makes them spin-wait on each other (measured: ~15x
slower). One thread is as fast for these sizes and keeps the run time predictable.
"""

import pytest
import torch
from servers import RedisServer

torch.set_num_threads(1)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A fresh redis-server process on a free port, stopped after the test."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
