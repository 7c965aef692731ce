"""How CityOS runs uvicorn: the request-head timeout, keep-alive and head size (`uvicorn_options`).

uvicorn has no timeout for the request head: its keep-alive timer stops at the first byte, so a
client trickling header bytes (slowloris) holds a connection for ever. `GuardedH11Protocol` and
`GuardedHttpToolsProtocol` close a connection whose request line and headers are not complete
within CITYOS_HEADER_TIMEOUT seconds of the connection opening or of the previous answer. They are
module-level classes (read their setting at import) so that uvicorn's worker processes can import them.
The body's timeouts are `cityos.core.limits.RequestLimits` (ASGI level).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cityos.config import env_float

log = logging.getLogger("cityos.serving")
HEAD_MAX_BYTES = 16 * 1024


class HeaderTimeout:
    """Mixed in before a uvicorn HTTP protocol class.

    The timer is armed when the connection opens and after each answer; a complete request head
    (uvicorn then starts a new request cycle) is what disarms it, not bytes that trickle in.
    """

    header_timeout: float = env_float("CITYOS_HEADER_TIMEOUT", 10.0)
    cycle: Any
    transport: Any
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        armed_cycle = self.cycle

        def expire() -> None:
            self._header_timer = None
            if self.cycle is armed_cycle and not self.transport.is_closing():
                log.info("request head not complete within %g s: connection closed", self.header_timeout)
                self.transport.close()

        self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout, expire)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class GuardedH11Protocol(HeaderTimeout, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn
    GuardedHttpToolsProtocol: type | None = None
else:
    class _GuardedHttpTools(HeaderTimeout, HttpToolsProtocol):
        pass

    GuardedHttpToolsProtocol = _GuardedHttpTools


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """The options every CityOS server runs uvicorn with (`cityos serve`, the demo)."""
    # Worker processes import this module afresh and read CITYOS_HEADER_TIMEOUT themselves.
    HeaderTimeout.header_timeout = settings.header_timeout
    return {"http": GuardedHttpToolsProtocol or GuardedH11Protocol,
            "timeout_keep_alive": settings.keep_alive_timeout,
            "h11_max_incomplete_event_size": HEAD_MAX_BYTES}
