"""OAuth-side routes: JWKS (RFC 7517), introspection (RFC 7662), authorization server metadata (RFC 8414)."""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.domain import usecases
from bot.web.errors import error_response
from bot.web.keys import DEPS, INTROSPECTION_CLIENTS, METRICS, SETTINGS, TOKENS

routes = web.RouteTableDef()


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[TOKENS].jwks(), headers={"Cache-Control": "public, max-age=300"})


@routes.get("/.well-known/oauth-authorization-server")
async def metadata(request: web.Request) -> web.Response:
    issuer = request.app[SETTINGS].issuer_url.rstrip("/")
    return web.json_response(
        {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "introspection_endpoint": f"{issuer}/oauth/introspect",
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
        }
    )


def _client_id(request: web.Request) -> str | None:
    """The resource server authenticated with HTTP Basic (RFC 7617), or None.

    The id and secret are taken as sent, or form-urlencoded as RFC 6749 §2.3.1 has OAuth clients send them
    (a secret with ``+``, ``%``, ``:`` or non-ASCII characters), whichever matches a configured client."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    encoded = encoded.strip()
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
        return None
    clients = request.app[INTROSPECTION_CLIENTS]
    for client_id, sep, secret in (decoded.partition(":"), _form_decoded(decoded)):
        expected = clients.get(client_id)
        if sep and expected is not None and hmac.compare_digest(expected.encode(), secret.encode()):
            return client_id
    return None


def _form_decoded(credentials: str) -> tuple[str, str, str]:
    client_id, sep, secret = credentials.partition(":")
    return unquote_plus(client_id), sep, unquote_plus(secret)


def _unauthorized(request: web.Request) -> web.Response:
    request.app[METRICS].auth_failures.labels(scheme="basic", reason="bad_client").inc()
    return error_response(
        401,
        "invalid_client",
        "Authenticate with HTTP Basic as a client listed in GRANTBOT_INTROSPECTION_CLIENTS.",
        {"WWW-Authenticate": 'Basic realm="grantbot"'},
    )


async def _token_field(request: web.Request) -> str | web.Response:
    try:
        form = await request.post()
    except (ValueError, LookupError, AssertionError, HttpProcessingError):  # bad encoding, charset or multipart
        return error_response(400, "invalid_request", "Send the token form-encoded: token=….")
    token = form.get("token")
    if not isinstance(token, str) or not token:
        return error_response(400, "invalid_request", "Send the token as the form field token=….")
    return token


@routes.post("/oauth/introspect")
async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 §2: form ``token=…``; an unknown, expired or revoked token is 200 ``{"active": false}``."""
    if _client_id(request) is None:
        return _unauthorized(request)
    token = await _token_field(request)
    if isinstance(token, web.Response):
        return token
    answer = await usecases.introspect(request.app[DEPS], token)
    metrics = request.app[METRICS]
    metrics.child(metrics.introspections, "true" if answer["active"] else "false").inc()
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


@routes.post("/oauth/revoke")
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009 §2: form ``token=…``; 200 with an empty body whether or not the token was known or active."""
    client_id = _client_id(request)
    if client_id is None:
        return _unauthorized(request)
    token = await _token_field(request)
    if isinstance(token, web.Response):
        return token
    await usecases.revoke_token(request.app[DEPS], token, f"client:{client_id}")
    return web.Response(status=200)
