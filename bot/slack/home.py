"""The App Home tab: published for a person when they open it (Slack ``app_home_opened`` event) and again after
they click Approve or Deny in it.

The Home's buttons are the card's (same ``action_id``s, the request id as ``value``), so the card's listeners in
``bot.slack.listeners`` decide them, and the card is updated by the same ``card.update`` outbox event. Only the
clicking person's Home is re-published after a click; everyone else's is fresh the next time they open the tab
(Slack sends ``app_home_opened`` on every open), which keeps a decision from costing one ``views.publish`` per
approver.
"""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.errors import DatabaseUnavailable
from bot.domain.usecases import Deps
from bot.domain.usecases.home import home_view
from bot.slack.home_blocks import home_view as home_blocks

log = logging.getLogger(__name__)


def is_home_click(body: dict) -> bool:
    """True for a Slack ``block_actions`` payload from the App Home tab (``view.type`` ``home``; such payloads have
    no channel and no response_url)."""
    return (body.get("view") or {}).get("type") == "home"


async def publish_home(deps: Deps, client: AsyncWebClient, user: str, notice: str | None = None) -> bool:
    """Render ``user``'s App Home now and publish it with Slack ``views.publish`` (no scope needed beyond the bot
    token). ``notice``: escaped mrkdwn shown at the top (e.g. why a click changed nothing). Returns False when
    Slack refused it or the database did not answer (logged): the person sees the previous Home and gets a
    fresh one the next time they open the tab."""
    try:
        view = home_blocks(await home_view(deps, deps.store, user, notice))  # type: ignore[arg-type]
        await client.views_publish(user_id=user, view=view)
    except SlackApiError as exc:
        log.warning("views.publish for %s failed: %s", user, exc.response.get("error"))
        return False
    except DatabaseUnavailable as exc:
        log.warning("could not render the App Home of %s: the database is unavailable (%s)", user, exc.cause)
        return False
    return True


def register_home(bolt: AsyncApp, deps: Deps) -> None:
    """Add the ``app_home_opened`` listener (manifest: ``settings.event_subscriptions.bot_events``)."""

    @bolt.event("app_home_opened")
    async def on_home_opened(event: dict, client: AsyncWebClient) -> None:
        """Slack app_home_opened event: ``user`` opened ``tab`` ``home`` (or ``messages``, which is left alone)."""
        user = event.get("user")
        if event.get("tab", "home") != "home" or not isinstance(user, str):
            return
        await publish_home(deps, client, user)
