"""The HTTP server around the app: uvicorn, with a header timeout and a graceful stop.

    server = make_server(app, settings, host="127.0.0.1", port=8000)
    server.run()  # until SIGINT / SIGTERM; returns once everything is closed

Contract:

- :class:`GuardedH11Protocol` (uvicorn's h11 protocol): a connection must complete its
  request headers within ``settings.header_timeout_s`` of opening (or of its previous
  response, for a keep-alive connection), else it is closed: a client that connects and
  sends nothing, or trickles its headers (slowloris), holds a socket that long at most.
  The body's own bound is the app's (``body_timeout_s``, :mod:`krmlx.serve.intake`), and
  no in-flight slot is held while either is read.
- :class:`ServeServer` (a ``uvicorn.Server``): on SIGTERM / SIGINT it stops accepting at
  once (uvicorn), tells the app (``app.state.serve.begin_stop``), which lets open requests
  finish within ``graceful_timeout_s`` and then ends them itself (streams: an OpenAI-style
  error event and ``[DONE]``; others: 503 JSON). uvicorn's own cut comes a margin later,
  for what the app could not end (a client that reads nothing). The process exits 0
  (uvicorn would re-raise the signal after shutting down). sse-starlette's own stop,
  which cuts every stream ~0.5 s after the signal, is turned off here.

Stats: ``krmlx_serve_shutdown_ended_total`` (:mod:`krmlx.serve.metrics`); one INFO line per
connection closed for its headers' timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServeSettings

log = logging.getLogger("krmlx.serve")
SHUTDOWN_MARGIN_S = 3.0  # after the app's own cut, before uvicorn cancels what is left


class GuardedH11Protocol(H11Protocol):
    header_timeout_s = 10.0  # set per server by make_protocol

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm_header_timer()  # a request is being served: the app bounds its body

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting_for_headers():
            self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("closed connection from %s: no complete request headers within %g s",
                 client, self.header_timeout_s)
        self.transport.close()


def make_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


class ServeServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop=None):
        super().__init__(config)
        self.on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self.on_stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_stop)  # safe from a signal handler

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # a clean stop is exit 0, not death by signal


def make_server(app, settings: ServeSettings, *, host: str, port: int,
                log_level: str = "info") -> ServeServer:
    """A ServeServer for ``app`` (from :func:`krmlx.serve.make_app`) with ``settings``'
    header timeout and grace period."""
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()  # the app ends its streams itself
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            log_config=None, http=make_protocol(settings.header_timeout_s),
                            timeout_keep_alive=min(5, settings.header_timeout_s),
                            timeout_graceful_shutdown=settings.graceful_timeout_s
                            + SHUTDOWN_MARGIN_S)
    state = getattr(app.state, "serve", None)
    return ServeServer(config, on_stop=state.begin_stop if state is not None else None)
