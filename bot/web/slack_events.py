"""``POST /slack/events``: hands Slack's requests to Bolt, which verifies Slack's signature (401 when bad)."""

from __future__ import annotations

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

from bot.web.errors import error_response
from bot.web.keys import BOLT

routes = web.RouteTableDef()


@routes.post("/slack/events")
async def slack_events(request: web.Request) -> web.Response:
    bolt = request.app.get(BOLT)
    if bolt is None:
        return error_response(404, "slack_disabled", "Slack is not configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET).")
    return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))
