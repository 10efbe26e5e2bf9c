"""`python -m services.coordinator [--spare]`: run a coordinator from GLS_* environment settings until SIGTERM.

With ``--spare`` it connects and imports everything, then waits for SIGUSR1 before it claims any job: the
supervisor of `gls cluster up` keeps one so that a crashed coordinator is replaced without a process start.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from types import FrameType

import torch

from ..settings import Settings
from ..tls import TLSConfigError
from .service import Coordinator, wait_ready

PROMOTE = signal.SIGUSR1


def main() -> None:
    spare = "--spare" in sys.argv[1:]
    if spare:  # blocked before anything else: a promotion sent while starting waits for sigwait below
        signal.pthread_sigmask(signal.SIG_BLOCK, {PROMOTE})
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("gls.coordinator")
    try:  # a bad GLS_INTERNAL_TLS_* file stops the coordinator now, not once Redis answers
        _ = settings.internal_tls
    except TLSConfigError as error:
        log.error("%s", error)
        sys.exit(2)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    wait_ready(settings)
    coordinator = Coordinator(settings)
    if spare:
        importlib.import_module("evotorch.algorithms.functional")  # PGPE's first step would import it (seconds)
        log.info("spare coordinator %s standing by (pid %d)", coordinator.consumer, os.getpid())
        signal.sigwait({PROMOTE})
        log.info("spare coordinator promoted: taking over")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current step", signum)
        coordinator.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    coordinator.run_forever()


if __name__ == "__main__":
    main()
