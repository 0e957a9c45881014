"""``POST /slack/events``: checks Slack's signature, then hands the request to Bolt.

The signature is checked here first (``slack_sdk.signature.SignatureVerifier``: ``v0=`` HMAC-SHA256 of
``v0:{timestamp}:{body}``, 5-minute window) so that forged or malformed requests get a plain 401/400 without
reaching Bolt, whose parser fails on malformed bodies before it verifies and whose verifier logs the refused
request's body and signature.
"""

from __future__ import annotations

import logging

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.web.errors import error_response
from bot.web.keys import BOLT, SLACK_VERIFIER

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def _signed_by_slack(verifier: SignatureVerifier, request: web.Request, body: str) -> bool:
    try:
        return verifier.is_valid(
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
            signature=request.headers.get("X-Slack-Signature", ""),
        )
    except (ValueError, TypeError):  # a timestamp that is not a number, a signature that is not ASCII
        return False


@routes.post("/slack/events")
async def slack_events(request: web.Request) -> web.Response:
    bolt = request.app.get(BOLT)
    if bolt is None:
        return error_response(404, "slack_disabled", "Slack is not configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET).")
    raw = await request.read()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        return error_response(400, "invalid_body", "A Slack request body is UTF-8 text.")
    if not _signed_by_slack(request.app[SLACK_VERIFIER], request, body):
        return error_response(401, "invalid_signature", "The request is not signed with this app's Slack signing secret.")
    try:
        response = await bolt.async_dispatch(
            AsyncBoltRequest(body=body, query=request.query_string, headers=request.headers)  # type: ignore[arg-type]
        )
    except Exception as exc:  # a signed but malformed payload; listeners themselves run after the ack
        log.warning("could not handle a signed Slack request: %s", type(exc).__name__)
        return error_response(400, "invalid_payload", "The Slack payload could not be parsed.")
    if response.status >= 500:  # Bolt's middleware failed on the payload (it logged why): the request is at fault
        return error_response(400, "invalid_payload", "The Slack payload could not be handled.")
    return await to_aiohttp_response(response)
