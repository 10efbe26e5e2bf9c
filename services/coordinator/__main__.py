"""`python -m services.coordinator`: run a coordinator from GLS_* environment settings until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import torch

from ..settings import Settings
from .service import Coordinator, wait_ready


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    wait_ready(settings)
    coordinator = Coordinator(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("gls.coordinator").info("signal %d: finishing the current step", signum)
        coordinator.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    coordinator.run_forever()


if __name__ == "__main__":
    main()
