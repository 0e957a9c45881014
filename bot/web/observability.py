"""Every HTTP request gets an id, an access log line and a place in the latency histogram.

The id is the caller's ``X-Request-Id`` when it is a plausible one (1 to 64 of ``[A-Za-z0-9._-]``, as proxies and
load balancers send), else a new one; it is answered in ``X-Request-Id``, set in ``bot.logs.REQUEST_ID`` so that
every line logged while serving the request carries it, and the audit events the request writes record it.

The access log line (logger ``bot.web.access``, INFO) has the method, the route (the matched resource's pattern,
e.g. ``/v1/access-requests/{id}``: never the query string, which may carry a token or a ``wait``), the status, the
duration in milliseconds, the request id and the caller's identity once authenticated. Never a header's value.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from aiohttp import web

from bot.logs import REQUEST_ID
from bot.web.keys import CALLER_IDENTITY, METRICS

log = logging.getLogger("bot.web.access")

REQUEST_ID_HEADER = "X-Request-Id"
_PLAUSIBLE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/v1/grants/{id}/revoke``), or ``unmatched`` for a path no route has."""
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Outermost middleware: it sees the status the error middleware answered with."""
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = sent if _PLAUSIBLE_ID.fullmatch(sent) else secrets.token_hex(16)
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and the like, raised past the error middleware
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        seconds = time.perf_counter() - started
        route = route_of(request)
        request.app[METRICS].http_request(request.method, route, status, seconds)
        if log.isEnabledFor(logging.INFO):  # the line's fields are not built for nothing at WARNING
            identity = request.get(CALLER_IDENTITY)
            log.info(
                "%s %s %d %.1f ms", request.method, route, status, seconds * 1000,
                extra={"method": request.method, "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 3), "request_id": request_id,
                       **({"identity": identity} if identity else {})},
            )
        REQUEST_ID.reset(token)
