"""The outbox worker: turns outbox events into Slack messages, each once, in order per request.

The request path never waits on Slack: use cases write events in their own transaction; this worker leases
them (``claim_outbox``), renders the current state with the pure builders, calls the Web API and marks them sent.
Slack failures are retried with ``Retry-After`` (429) or exponential backoff; the item stays in the table
meanwhile, so a restart loses nothing.

Posting once: a process can die after Slack accepted a post and before the database recorded it. Every post
therefore carries Slack message ``metadata`` naming its outbox item, and a retried item first looks for that
message (``conversations.history`` / ``conversations.replies``) and adopts it instead of posting again.
Updates (``chat.update``) are idempotent by nature.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import aiohttp
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import DBAPIError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.models import Decision, EventKind, OutboxItem
from bot.domain.ports import Clock
from bot.metrics import Metrics
from bot.slack import blocks
from bot.slack.summary_blocks import summary_blocks, summary_text
from bot.store.repository import SqlStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 30  # longer than the client's 10 s timeout, so a live worker never loses its lease
METADATA_EVENT = "grantbot_outbox"
CLOCK_SKEW_SECONDS = 300  # our clock vs. Slack's message timestamps
MAX_HISTORY_PAGES = 50
BATCH = 20
MAX_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 300
# Slack errors that a retry cannot fix: after them the item is set aside (logged) instead of retried.
PERMANENT_ERRORS = {"channel_not_found", "not_in_channel", "is_archived", "invalid_blocks", "msg_too_long",
                    "no_text", "invalid_auth", "account_inactive", "token_revoked", "message_not_found"}


class SlackNotifier:
    """Drains the outbox into Slack. ``wake()`` after a commit; it also polls every ``poll_seconds``."""

    def __init__(
        self, store: SqlStore, client: AsyncWebClient, clock: Clock, metrics: Metrics, poll_seconds: float = 1.0,
        default_channel: str | None = None, timezone: str = "UTC",
    ) -> None:
        self._default_channel = default_channel
        self._timezone = timezone
        self._store = store
        self._metrics = metrics
        self._client = client
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self, *_: object) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`run` (graceful shutdown)."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop` (or cancellation)."""
        while not self._stopping:
            try:
                sent = await self.drain_once()
            except asyncio.CancelledError:
                raise
            except (DBAPIError, OSError) as exc:  # the database is away: try again next round
                log.warning("outbox round failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
                sent = 0
            except Exception:
                log.exception("outbox round failed")
                sent = 0
            if sent == 0 and not self._stopping:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._poll_seconds)
                except TimeoutError:
                    pass

    async def drain_once(self) -> int:
        """Claim and deliver one batch; returns how many items were handled."""
        items = await self._store.claim_outbox(self._clock.now(), LEASE_SECONDS, BATCH)
        for item in items:
            await self._deliver_with_retry(item)
        return len(items)

    async def _deliver_with_retry(self, item: OutboxItem) -> None:
        try:
            await self._deliver(item)
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
            if exc.response.status_code == 429:
                retry_after = float(exc.response.headers.get("retry-after", exc.response.headers.get("Retry-After", 1)))
                await self._retry(item, retry_after, "rate limited (429)")
            elif error in PERMANENT_ERRORS or item.attempts >= MAX_ATTEMPTS:
                log.error("giving up on outbox item %s (%s): Slack said %s", item.id, item.kind, error or exc)
                self._metrics.slack_messages.labels(result="abandoned").inc()
                await self._store.complete_outbox(item.id, self._clock.now())
            else:
                await self._retry(item, self._backoff(item), f"Slack error {exc.response.status_code} {error}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Network trouble, timeouts and non-JSON answers (slack-sdk raises ValueError-like errors for those).
            await self._retry(item, self._backoff(item), f"{type(exc).__name__}: {exc}")
        else:
            self._metrics.slack_messages.labels(result="sent").inc()
            await self._store.complete_outbox(item.id, self._clock.now())

    @staticmethod
    def _backoff(item: OutboxItem) -> float:
        return min(2 ** item.attempts, MAX_BACKOFF_SECONDS)

    async def _retry(self, item: OutboxItem, delay: float, why: str) -> None:
        log.warning("outbox item %s (%s) will be retried in %.0f s: %s", item.id, item.kind, delay, why)
        self._metrics.slack_messages.labels(result="retried").inc()
        await self._store.retry_outbox(item.id, self._clock.now() + timedelta(seconds=delay), why)

    async def _deliver(self, item: OutboxItem) -> None:
        if item.kind is EventKind.NOTICE:
            channel = (item.payload or {}).get("channel") or self._default_channel
            if not channel:
                log.error("notice %s has no channel (set GRANTBOT_SLACK_CHANNEL); not posted", item.id)
                return
            payload = item.payload or {}
            if "summary" in payload:
                content = {"text": summary_text(payload["summary"], self._timezone),
                           "blocks": summary_blocks(payload["summary"], self._timezone)}
            else:
                content = {"text": blocks.truncate(payload.get("text", ""), blocks.SECTION_TEXT_LIMIT)}
            await self._post_once(item, channel=channel, **content)
            return
        request = await self._store.get_request(item.request_id)
        if request is None:
            return
        grant = (
            await self._store.get_grant(item.grant_id)
            if item.grant_id
            else await self._store.grant_for_request(request.id)
        )
        is_card = item.kind in (EventKind.CARD_POST, EventKind.CARD_UPDATE, EventKind.REQUEST_DECIDED)
        approvals = await self._store.approvals(request.id) if is_card else []  # the card shows who approved
        if item.kind is EventKind.CARD_POST:
            if request.card_ts or not request.channel:
                if not request.channel:
                    log.error("request %s has no channel to post its card to (set GRANTBOT_SLACK_CHANNEL)", request.id)
                return
            channel, ts = await self._post_once(
                item, channel=request.channel, text=blocks.card_text(request),
                blocks=blocks.card_blocks(request, grant, approvals),
            )
            await self._store.set_card(request.id, channel, ts)
        elif item.kind is EventKind.CARD_UPDATE:
            if request.card_ts and request.card_channel:
                await self._client.chat_update(
                    channel=request.card_channel,
                    ts=request.card_ts,
                    text=blocks.card_text(request),
                    blocks=blocks.card_blocks(request, grant, approvals),
                )
        elif item.kind in (EventKind.GRANT_EXPIRED, EventKind.GRANT_REVOKED) and grant is not None:
            text = blocks.grant_ended_text(request, grant)
            if request.card_ts and request.card_channel:
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)
            elif request.channel and request.decision is Decision.AUTO_APPROVE:
                await self._post_once(item, channel=request.channel, text=text)
        elif item.kind in (EventKind.REQUEST_DECIDED, EventKind.TOKEN_HANDED_OVER) and request.card_ts:
            # Thread replies under the card (none without a card: nobody saw the request, nobody decided it there).
            text = (blocks.decision_text(request, grant, approvals) if item.kind is EventKind.REQUEST_DECIDED
                    else blocks.handed_over_text(request, grant) if grant is not None else None)
            if text:
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)

    async def _post_once(self, item: OutboxItem, *, channel: str, thread_ts: str | None = None, **content) -> tuple[str, str]:
        """``chat.postMessage`` unless an earlier attempt of this item already posted; returns (channel, ts)."""
        if item.attempts > 1 and (ts := await self._find_posted(item, channel, thread_ts)):
            log.info("outbox item %s was already posted (ts %s); not posting it again", item.id, ts)
            return channel, ts
        metadata = {"event_type": METADATA_EVENT, "event_payload": {"outbox_id": item.id, "request_id": item.request_id}}
        extra = {"thread_ts": thread_ts} if thread_ts else {}
        answer = await self._client.chat_postMessage(channel=channel, metadata=metadata, **extra, **content)
        return answer["channel"], answer["ts"]

    async def _find_posted(self, item: OutboxItem, channel: str, thread_ts: str | None) -> str | None:
        """The ts of a message an earlier attempt of ``item`` posted, searching everything posted since the item
        was queued (minus a margin for clock skew), page by page."""
        oldest = f"{item.created_at.timestamp() - CLOCK_SKEW_SECONDS:.6f}"
        cursor = None
        for _ in range(MAX_HISTORY_PAGES):
            page = {"cursor": cursor} if cursor else {}
            if thread_ts:
                answer = await self._client.conversations_replies(
                    channel=channel, ts=thread_ts, limit=200, include_all_metadata=True, **page
                )
            else:
                answer = await self._client.conversations_history(
                    channel=channel, oldest=oldest, limit=200, include_all_metadata=True, **page
                )
            for message in answer.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == METADATA_EVENT and payload.get("outbox_id") == item.id:
                    return message["ts"]
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        log.warning("outbox item %s: gave up searching %d pages of history; posting again", item.id, MAX_HISTORY_PAGES)
        return None
