"""Serving the application on a port: aiohttp's ``AppRunner`` with a listener of our own instead of ``TCPSite``.

What the listener adds, for a service reachable by anyone:

- **The port first.** It is bound before the application starts its database pool, scheduler and outbox worker,
  so a port in use is one ``OSError`` with nothing started to unwind (no task cut off mid-start, no traceback).
- **A header deadline** (as Go's ``ReadHeaderTimeout``): a connection whose request line and headers are not
  complete ``header_timeout_seconds`` after it opened is closed, so clients that never finish their headers
  (slowloris) cannot hold connections for ever; aiohttp has no such limit. Later requests on a kept-alive
  connection are bounded by the keep-alive idle time (:data:`KEEPALIVE_SECONDS`, aiohttp's ``keepalive_timeout``:
  a connection waiting for a complete request that long is closed), longer than the usual load balancer's idle
  timeout of 60 s so that the balancer, not grantbot, ends idle connections.
- **JSON refusals of unparsable requests.** What aiohttp's parser refuses (a header line over 8190 bytes, more
  than 128 headers, a malformed request line) is answered with DESIGN.md's error shape ``{"error", "detail"}``
  and one log line, instead of plain text and a logged traceback quoting the request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from bot.web.errors import error_response

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 75.0  # idle time of a kept-alive connection between requests
HEADER_LIMIT_BYTES = 8190  # aiohttp's max_line_size and max_field_size (defaults)
# The end of a request's header block is its first empty line (RFC 9112 §2.1); LF alone is accepted as a line end.
_HEADERS_END = (b"\n\r\n", b"\n\n")


class GrantbotRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol with a header deadline and JSON refusals (see the module)."""

    def __init__(self, manager: web.Server, *, header_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout_seconds
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_tail = b""  # the last bytes seen, for an end of headers split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_deadline = asyncio.get_running_loop().call_later(self._header_timeout, self._headers_overdue)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is not None:
            seen = self._header_tail + data
            if any(end in seen for end in _HEADERS_END):
                self._header_deadline.cancel()
                self._header_deadline = None
            else:
                self._header_tail = seen[-2:]
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        log.debug("closed a connection whose request headers did not arrive within %s s", self._header_timeout)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request the parser refused: the JSON error shape with the fitting 4xx, one log line without the
        request's content (aiohttp's own answer is plain text after a traceback). Anything else: aiohttp's."""
        if not isinstance(exc, HttpProcessingError) or status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            status, code, detail = 431, "headers_too_large", (
                f"The request line or a header is longer than {HEADER_LIMIT_BYTES} bytes, or there are too many "
                "headers; send shorter headers and a shorter URL.")
        else:
            code, detail = "bad_request", "The request is not well-formed HTTP/1.1; check the request line and headers."
        # Not HTTP at all (TLS or a port scan on the plain HTTP port) is everyday noise on the internet: debug.
        log.log(logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING,
                "refused a malformed HTTP request from %s: %s (answered %d)", request.remote, type(exc).__name__, status)
        response = error_response(status, code, detail)
        response.force_close()
        return response


class Listener:
    """The application served on a port (see :func:`listen`); :meth:`close` drains and stops it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.AbstractServer) -> None:
        self._runner = runner
        self._server = server

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, then aiohttp's graceful shutdown: in-flight requests finish (up to the runner's
        ``shutdown_timeout``), the application's shutdown and cleanup run."""
        self._server.close()
        await self._runner.cleanup()


async def listen(app: web.Application, host: str, port: int, *, header_timeout_seconds: float,
                 shutdown_timeout: float = 15.0, reuse_port: bool = False) -> Listener:
    """Bind ``host:port`` (0: any free port), start ``app``, then accept connections. ``reuse_port``: bind with
    ``SO_REUSEPORT``, so that the workers of ``grantbot serve --workers N`` share the port (the kernel spreads new
    connections over them).

    Raises ``OSError`` (e.g. the address is in use) before the application starts anything; whatever the
    application's start-up raises, after the port is let go again.
    """
    loop = asyncio.get_running_loop()
    # shutdown_timeout: how long in-flight requests may finish after SIGTERM (long polls answer at once).
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout)

    def connection() -> GrantbotRequestHandler:
        # runner.server is aiohttp's connection manager (set by runner.setup(), before any connection is accepted).
        return GrantbotRequestHandler(runner.server, loop=loop, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS,
                                      header_timeout_seconds=header_timeout_seconds)

    server = await loop.create_server(connection, host, port, start_serving=False, reuse_port=reuse_port or None)
    try:
        await runner.setup()
    except BaseException:
        server.close()
        raise
    await server.start_serving()
    return Listener(runner, server)
