"""Error responses: every failure is ``{"error": code, "detail": sentence}`` JSON (DESIGN.md HTTP contract).

Domain errors carry their own status (a database outage is the store's ``DatabaseUnavailable``: 503 with
``Retry-After``); aiohttp's HTTP errors (404 route, 405, 413) are re-shaped; anything else is logged and answered
500 without a traceback.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bot.domain.errors import DatabaseUnavailable, DomainError, Unauthenticated, Unavailable
from bot.web.keys import METRICS

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra) -> web.Response:
    return web.json_response({"error": code, "detail": detail, **extra}, status=status, headers=headers)


_HTTP_CODES = {
    404: ("not_found", "There is no such route; see the HTTP API in README.md."),
    405: ("method_not_allowed", "This route does not accept that method."),
    413: ("body_too_large", f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB."),
}


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as exc:
        headers = None
        if exc.status == 401:
            # Both schemes a caller may use (DESIGN.md "Caller authentication"); RFC 9110 §11.6.1 allows a list.
            headers = {"WWW-Authenticate": 'GrantbotHMAC realm="grantbot", Bearer realm="grantbot"'}
            if isinstance(exc, Unauthenticated):
                scheme = "oidc" if "Authorization" in request.headers else "hmac"
                request.app[METRICS].auth_failures.labels(scheme=scheme, reason=exc.reason).inc()
        elif isinstance(exc, Unavailable):
            headers = {"Retry-After": str(exc.retry_after)}
            if isinstance(exc, DatabaseUnavailable):  # one line, no traceback: retrying is the remedy
                log.error("database unavailable while serving %s %s: %s", request.method, request.path, exc.cause)
        return error_response(exc.status, exc.code, exc.detail, headers)
    except (RequestPayloadError, HttpProcessingError):
        # The body cannot be read (e.g. ``Content-Encoding: gzip`` over bytes that are not gzip). After the answer
        # aiohttp would read on to drain it, meet the same error and log it with a traceback: end the body here,
        # and the connection after the answer (what follows on it cannot be parsed anyway).
        request.content.feed_eof()
        response = error_response(400, "unreadable_body", "The request body could not be read (check "
                                  "Content-Encoding and Content-Type).")
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code, detail = _HTTP_CODES.get(exc.status, (exc.reason.lower().replace(" ", "_"), exc.reason))
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, detail, allow)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")
