"""``python -m services.bound_worker``: run one worker from GLS_* environment variables until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from ..settings import Settings
from ..tls import TLSConfigError
from .server import serve

log = logging.getLogger("services.bound_worker")


def main() -> int:
    settings = Settings()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = serve(settings)
    except TLSConfigError as error:
        log.error("%s", error)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: shutting down (grace %.1fs)", signal.Signals(signum).name, settings.worker_grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.wait(0.5):
        pass
    worker.stop(grace=settings.worker_grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
