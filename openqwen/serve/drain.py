"""Graceful shutdown: on SIGTERM (or a first Ctrl-C) the server drains instead of dropping work.

:class:`DrainingServer` is uvicorn's server with another exit signal handler. The first SIGTERM/SIGINT
sets ``Server.draining``: the listening socket stays open and every new request gets 503 with
``Retry-After`` (so a load balancer moves on), ``/health`` says ``draining``, while the admitted
requests run to their end. When none is left, or ``drain_timeout`` seconds have passed, uvicorn shuts
down as usual and ``openqwen serve`` exits 0. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

log = logging.getLogger("openqwen.serve")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains ``state`` (the app's :class:`~openqwen.serve.app.Server`) first."""

    def __init__(self, config: uvicorn.Config, state: Any, drain_timeout: float = 30.0) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        # not recorded in uvicorn's captured signals: it would re-raise SIGTERM after the shutdown and the
        # process would die by the signal instead of exiting 0
        if self._drainer is not None:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        self._drainer = threading.Thread(target=self._drain, name="openqwen-drain", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        start = time.monotonic()
        admission = self.state.admission
        log.warning("draining: %d choices to finish (at most %.0f s); new requests get 503",
                    admission.admitted, self.drain_timeout)
        while admission.admitted > 0 and time.monotonic() - start < self.drain_timeout:
            time.sleep(0.05)
        left = admission.admitted
        log.warning("drained in %.1f s%s", time.monotonic() - start,
                    f"; {left} choices cut at the deadline" if left else "")
        self.should_exit = True
