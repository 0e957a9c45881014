"""The ``ApproverDirectory`` port over Slack: user group members from ``usergroups.users.list``, cached.

Membership is looked up when someone clicks, so a cache keeps a burst of clicks from costing a burst of
calls (the method is Slack rate-limit tier 2, about 20 a minute). A membership change shows after at most
``ttl_seconds``. When Slack cannot answer, the last known membership is used if there is one (a stale list is
better than refusing every group approver during a Slack outage); otherwise the click is refused.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.errors import ApproverDirectoryUnavailable
from bot.domain.ports import Clock

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300


class SlackApproverDirectory:
    """``members(group_id)`` from Slack ``usergroups.users.list`` (scope ``usergroups:read``), cached per group for
    ``ttl_seconds`` of the injected ``clock``."""

    def __init__(self, client: AsyncWebClient, clock: Clock, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        self._client = client
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._cache: dict[str, tuple[datetime, frozenset[str]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def members(self, group_id: str) -> frozenset[str]:
        """Slack user IDs in the group; empty for a group Slack does not know (``no_such_subteam``).

        Raises :class:`ApproverDirectoryUnavailable` when Slack fails and nothing is cached for the group."""
        async with self._locks.setdefault(group_id, asyncio.Lock()):  # one lookup per group at a time
            cached = self._cache.get(group_id)
            now = self._clock.now()
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
            try:
                answer = await self._client.usergroups_users_list(usergroup=group_id)
                members = frozenset(str(user) for user in answer.get("users") or [])
            except SlackApiError as exc:
                error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
                if error != "no_such_subteam":
                    return self._stale(group_id, cached, f"Slack said {error or exc.response.status_code}")
                log.warning("approver user group %s does not exist in Slack: it has no members", group_id)
                members = frozenset()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                return self._stale(group_id, cached, f"{type(exc).__name__}: {exc}")
            self._cache[group_id] = (now, members)
            return members

    @staticmethod
    def _stale(group_id: str, cached: tuple[datetime, frozenset[str]] | None, why: str) -> frozenset[str]:
        if cached is not None:
            log.warning("could not refresh user group %s (%s); using its membership from %s", group_id, why,
                        cached[0].isoformat())
            return cached[1]
        log.warning("could not look up user group %s: %s", group_id, why)
        raise ApproverDirectoryUnavailable(
            "Slack could not tell whether you are in this request's approver group; try again in a minute."
        )
