"""Bearer-token checks for a service's HTTP routes, with :class:`~bot.client.verifier.TokenVerifier`.

aiohttp::

    verifier = TokenVerifier("https://grantbot.acme.example", audience="https://api.acme.example")
    app = web.Application(middlewares=[aiohttp_middleware(verifier, scopes=["orders:read"])])
    # in a handler: request[TOKEN].subject   (from bot.client.middleware import TOKEN)

ASGI (Starlette, FastAPI, Django's ASGI app, …)::

    app = GrantbotAsgiMiddleware(app, verifier, scopes=["orders:read"])
    # in Starlette / FastAPI: request.state.grantbot_token (scope["state"]["grantbot_token"])

A request without a valid token is answered as RFC 6750 §3 says: 401 with ``WWW-Authenticate: Bearer
error="invalid_token"`` (or no error code when no token was sent), 403 ``insufficient_scope`` when the token lacks a
scope, and 503 when grantbot cannot be reached to check it; the body is ``{"error", "detail"}``. The detail
says why and never quotes the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from aiohttp import web

from bot.client.verifier import CannotVerify, InvalidToken, TokenVerifier, VerifiedToken

KEY = "grantbot_token"
TOKEN = web.RequestKey(KEY, VerifiedToken)  # where the aiohttp middleware puts the checked token
REALM = "grantbot"


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1), or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def check(verifier: TokenVerifier, authorization: str | None,
                scopes: Iterable[str]) -> VerifiedToken | tuple[int, dict[str, str], dict[str, str]]:
    """The verified token, or the refusal to send: ``(status, headers, body)``."""
    token = bearer(authorization)
    if token is None:
        return 401, {"WWW-Authenticate": f'Bearer realm="{REALM}"'}, {
            "error": "missing_token", "detail": "Send a grantbot access token as 'Authorization: Bearer <token>'."}
    try:
        return await verifier.verify(token, scopes)
    except InvalidToken as exc:
        status = 403 if exc.error == "insufficient_scope" else 401
        # RFC 6750 §3: error_description is printable ASCII without the double quote and the backslash.
        description = re.sub(r"[^\x20\x21\x23-\x5B\x5D-\x7E]", "", exc.reason)
        challenge = f'Bearer realm="{REALM}", error="{exc.error}", error_description="{description}"'
        return status, {"WWW-Authenticate": challenge}, {"error": exc.error, "detail": f"The token was refused: {exc.reason}."}
    except CannotVerify as exc:
        return 503, {"Retry-After": "5"}, {"error": "temporarily_unavailable",
                                           "detail": f"The token cannot be checked right now ({exc.reason}); retry shortly."}


def aiohttp_middleware(verifier: TokenVerifier, *, scopes: Iterable[str] = (),
                       public: Callable[[web.Request], bool] = lambda request: False):
    """An aiohttp middleware that lets through only requests with a valid token holding every one of ``scopes``;
    ``public(request)`` True skips the check (health checks). The token is at ``request[TOKEN]``."""
    needed = tuple(scopes)

    @web.middleware
    async def grantbot_tokens(request: web.Request, handler):
        if public(request):
            return await handler(request)
        outcome = await check(verifier, request.headers.get("Authorization"), needed)
        if not isinstance(outcome, VerifiedToken):
            status, headers, body = outcome
            return web.json_response(body, status=status, headers=headers)
        request[TOKEN] = outcome
        return await handler(request)

    return grantbot_tokens


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class GrantbotAsgiMiddleware:
    """ASGI middleware (ASGI 3): HTTP requests need a valid token holding every one of ``scopes``; other
    connection types (lifespan, websocket) pass through. The token goes to ``scope["state"]["grantbot_token"]``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], verifier: TokenVerifier, *,
                 scopes: Iterable[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = tuple(scopes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                              if name.lower() == b"authorization"), None)
        outcome = await check(self.verifier, authorization, self.scopes)
        if isinstance(outcome, VerifiedToken):
            scope.setdefault("state", {})[KEY] = outcome
            await self.app(scope, receive, send)
            return
        status, headers, body = outcome
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                *((k.lower().encode(), v.encode("latin-1", "replace")) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": payload})
