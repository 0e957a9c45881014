"""Bolt listeners: thin — parse the Slack payload, call the use case, answer the person who clicked.

Bolt (``process_before_response=False``) acks within Slack's 3 s before the listener's work runs. Idempotency
lives in the database (conditional UPDATEs), because Slack retries and people double-click.
"""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain import usecases
from bot.domain.errors import DomainError
from bot.domain.ids import is_uuid
from bot.slack.blocks import APPROVE_ACTION, refusal_text
from bot.slack.commands import register_commands
from bot.slack.home import is_home_click, publish_home, register_home
from bot.slack.modals import register_modals

log = logging.getLogger(__name__)


def build_bolt_app(deps: usecases.Deps, token: str, signing_secret: str, api_url: str,
                   timeout_seconds: int = 10) -> AsyncApp:
    """A Bolt ``AsyncApp`` with grantbot's listeners for the bot ``token``; its Web API client (``bolt.client``,
    and the per-request clients Bolt copies from it) calls ``api_url`` (``SLACK_API_URL``) with that timeout."""
    # Bolt is given the token, not a client of ours: Bolt also reads SLACK_BOT_TOKEN from the environment, and with
    # both a client and a token it warns on every start that the token is unused. Its own client is pointed where
    # ours would have been instead.
    # raise_error_for_unhandled_request: an unknown action_id or callback_id (an old card, a newer replica's
    # button) reaches on_error below instead of Bolt answering Slack 404.
    # name: without one Bolt names the app after its caller's file with inspect.stack(), which reads the source of
    # every frame on the stack (tens of milliseconds per app).
    bolt = AsyncApp(name="grantbot", token=token, signing_secret=signing_secret, process_before_response=False,
                    logger=log, raise_error_for_unhandled_request=True)
    bolt.client.base_url, bolt.client.timeout = api_url, timeout_seconds

    async def on_decision(ack: AsyncAck, body: dict, client: AsyncWebClient) -> None:
        """Slack block_actions payload of the Approve button: ``actions[0].value`` is the request id, ``user.id``
        the approver. (Deny opens a modal for the reason: ``bot.slack.modals``.)"""
        await ack()
        actions, user = body.get("actions") or [{}], (body.get("user") or {}).get("id")
        action = actions[0]
        if not isinstance(user, str) or not is_uuid(action.get("value")):
            log.warning("ignored a block_actions payload without a user or a request id")
            return
        try:
            await usecases.approve(deps, action["value"], user)
        except DomainError as exc:
            channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
            if is_home_click(body):  # the App Home has no channel: the refusal goes on top of the Home itself
                await publish_home(deps, client, user, notice=refusal_text(exc))
            elif channel:
                await client.chat_postEphemeral(channel=channel, user=user, text=refusal_text(exc))
        else:
            if is_home_click(body):
                await publish_home(deps, client, user)

    bolt.action(APPROVE_ACTION)(on_decision)
    register_modals(bolt, deps)  # Deny (reason), Approve with changes, Revoke
    register_commands(bolt, deps)  # /access and its revoke-all confirmation
    register_home(bolt, deps)

    async def on_error(error: Exception) -> BoltResponse | None:
        if isinstance(error, BoltUnhandledRequestError):
            # Answered (200: Slack shows no error, a view_submission closes its form) and logged, never a 404.
            body = error.body if isinstance(error.body, dict) else {}
            what = [a.get("action_id") for a in body.get("actions") or [] if isinstance(a, dict)] or \
                (body.get("view") or {}).get("callback_id") or body.get("command") or body.get("type")
            log.warning("no listener for a Slack %s request (%s); answered and ignored", body.get("type"), what)
            return BoltResponse(status=200, body="")
        # Instead of Bolt's default handler, which logs the whole traceback for any malformed signed payload.
        log.warning("a Slack request failed in Bolt: %s: %s", type(error).__name__, error)
        return None

    bolt.error(on_error)
    return bolt
