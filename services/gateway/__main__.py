"""``python -m services.gateway``: REST and gRPC Certifier from GLS_* environment variables until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from ..settings import Settings
from ..tls import TLSConfigError
from .server import serve

log = logging.getLogger("services.gateway")


def main() -> int:
    settings = Settings()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        running = serve(settings)
    except TLSConfigError as error:
        log.error("%s", error)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.wait(0.5):
        if not running.thread.is_alive():
            log.error("the REST server exited unexpectedly")
            running.stop()
            return 1
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
