"""The outbox worker: turns outbox events into Slack messages, each once, in order per request, paced per channel.

The request path never waits on Slack: use cases write events in their own transaction; this worker leases
them (``claim_outbox``), renders the current state with the pure builders, calls the Web API and marks them sent.
The item stays in the table until then, so a restart or a Slack outage loses nothing.

Order. Approval cards, their updates and the decision replies under them (``URGENT_EVENTS``, of requests people
decide) are claimed before anything else, and go ahead of a lane's waiting items: a card is not held up by a
backlog of notices. Items of one request still go in the order they were written.

Pacing. Slack allows ``chat.postMessage`` "one message per second per channel, while also maintaining a
workspace-wide limit", short bursts tolerated (docs.slack.dev/apis/web-api/rate-limits). Each channel has a
*lane* in each process: a task that sends that channel's items one after the other. Before every write (post,
update, thread reply) it takes the channel's next write slot, shared by every replica through the database
(``OutboxChannels.take_write_slot``: one small upsert of the channel's row, on the database's clock), and waits
for it: all replicas together make at most one write per ``pace_seconds`` to a channel (wall clock: the limit is
Slack's). Lanes run side by side, so a slow or rate-limited channel holds up no other.

Digests. Ends of auto-approved grants (expiries, revocations; told in the request's channel, with no card) that
were never claimed are handed out by ``OutboxChannels.claim_notices``: a few per channel per interval go one by
one, and when more pile up they are folded into one digest message per channel per interval ("42 auto-approved
grants expired between …"), which is then an outbox item like any other. Ten thousand expiries at once are one
message, not three hours of them.

Failures. A 429 is Slack pacing us, not a failure: it pauses the channel it was for until ``Retry-After`` has
passed (its item and the lane's other items go back to the table due then, and no item for that channel is
claimed meanwhile), and does not count toward the item's backoff. Slack does not say whether a 429 came from the
per-channel or the workspace-wide limit; pausing per channel keeps the other channels going in the common
(per-channel) case, and under a workspace-wide limit each channel pauses itself on its own first 429. A 5xx, a
non-JSON answer (an HTML 502 from a proxy arrives as ``SlackApiError`` with empty ``data``), a timeout or a
network error is a failure: the item goes back with exponential backoff (2^failures s) and jitter, capped at
``URGENT_MAX_BACKOFF_SECONDS`` for cards and decisions (a card is never more than half a minute behind once Slack
answers again) and ``MAX_BACKOFF_SECONDS`` for the rest, and its channel rests for ``TRANSIENT_PAUSE_SECONDS``
(Slack is likely unwell for everyone, but one message Slack keeps failing on must not hold up its channel for
minutes); these are retried for as long as they last (an outage loses nothing). An ``ok: false`` answer Slack
gives for a bad request is a failure retried up to ``MAX_ATTEMPTS`` times, or set aside at once if no retry can
fix it (``PERMANENT_ERRORS``). Delays are measured with the injected clock (``not_before`` in the database), so
tests move time instead of sleeping.

Posting once: a process can die after Slack accepted a post and before the database recorded it, and a timeout
or a 5xx leaves unknown whether Slack took the post. Every post therefore carries Slack message ``metadata``
naming its outbox item, and a retried item first looks for that message (``conversations.history`` /
``conversations.replies``) and adopts it instead of posting again; the search is skipped when this process
knows that every earlier attempt was refused (429 or an ``ok: false`` answer). A digest is such an item: the
notices folded into it were marked told in the transaction that wrote it, and it is posted once the same way;
a notice an earlier claim may have posted is never folded. A card's ``ts`` is stored before
its item is marked sent, and an update or thread reply of a request waits for every earlier item of that
request. An item can outwait its lease in its lane (pacing, a slow call before it) and be claimed by another
worker meanwhile, which then finds nothing posted yet: so every post first renews the lease (in the transaction
that takes the channel's write slot, and again after a wait for the slot), fenced by the claim count
(``attempts``), and a worker whose item was claimed again drops it. Updates
(``chat.update``) are idempotent by nature. The client given must not retry on its own (``retry_handlers=[]``):
a connection reset after Slack took a post would otherwise post it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.jitter import RandomJitter
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.errors import DatabaseUnavailable
from bot.domain.models import URGENT_EVENTS, Decision, EventKind, NoticeFolding, OutboxItem, RequestStatus
from bot.domain.ports import ChannelPacing, Clock, OutboxQueue
from bot.metrics import Metrics
from bot.slack import blocks, credential_blocks
from bot.slack.digest_message import digest_text
from bot.slack.summary_blocks import summary_blocks, summary_text

log = logging.getLogger(__name__)

# A lane holds at most LANE_DEPTH items (a few more when notices are handed out one by one); with one write per
# second and a lane stopping at its first failure, the last of them is usually sent within the lease even when the
# one before it waits out the client's 10 s timeout, and when other replicas' lanes share the channel's slots and it
# is not, the lease renewal before each post finds that out.
LEASE_SECONDS = 30
LANE_DEPTH = 3
PACE_SECONDS = 1.0  # Slack: chat.postMessage about 1 message per second per channel
METADATA_EVENT = "grantbot_outbox"
CLOCK_SKEW_SECONDS = 300  # our clock vs. Slack's message timestamps
MAX_HISTORY_PAGES = 50
BATCH = 20
MAX_ATTEMPTS = 12  # for ok:false answers that are neither transient nor known to be permanent
MAX_BACKOFF_SECONDS = 300
URGENT_MAX_BACKOFF_SECONDS = 30  # cards and decisions: at most this behind once Slack answers again
TRANSIENT_PAUSE_SECONDS = 2.0
NOTICE_ROUND_SECONDS = 0.5  # how often a busy worker looks for notices of auto-approved grants to hand out or fold
MAX_RETRY_AFTER_SECONDS = 3600  # a Retry-After beyond this is taken as an hour
DEFAULT_RETRY_AFTER_SECONDS = 1.0  # a 429 without a usable Retry-After (python-slack-sdk#1693)
# Slack errors that a retry cannot fix: after them the item is set aside (logged) instead of retried.
PERMANENT_ERRORS = {"channel_not_found", "not_in_channel", "is_archived", "invalid_blocks", "msg_too_long",
                    "no_text", "invalid_auth", "account_inactive", "token_revoked", "message_not_found"}
# ok:false errors that mean "Slack is unwell, try later" (api.slack.com/methods/chat.postMessage#errors); after
# fatal_error "it's possible some aspect of the operation succeeded".
TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
_BACKOFF = BackoffRetryIntervalCalculator(backoff_factor=1.0, jitter=RandomJitter())


class LeaseLost(Exception):
    """The outbox item's lease ran out while it waited here and another worker claimed it."""


def _retry_after(headers: Mapping[str, str] | None) -> float:
    """Seconds from a 429's ``Retry-After`` (Slack sends whole seconds), within [0, MAX_RETRY_AFTER_SECONDS]."""
    value = None
    for name, header in (headers or {}).items():
        if name.lower() == "retry-after":
            value = header
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _answer(exc: SlackApiError) -> tuple[int, Mapping[str, str], dict]:
    """(HTTP status, headers, JSON body or {}) of a failed call. slack-sdk hands over its own response object,
    except for a body that claims to be JSON and is not, where it passes aiohttp's (``status``, no ``data``)."""
    response = exc.response
    status = getattr(response, "status_code", None) or getattr(response, "status", 0) or 0
    data = getattr(response, "data", None)
    return int(status), getattr(response, "headers", None) or {}, data if isinstance(data, dict) else {}


class SlackNotifier:
    """Drains the outbox into Slack. ``wake()`` after a commit; it also polls every ``poll_seconds``."""

    def __init__(
        self, store: OutboxQueue, channels: ChannelPacing, client: AsyncWebClient, clock: Clock, metrics: Metrics,
        poll_seconds: float = 1.0, default_channel: str | None = None, timezone: str = "UTC",
        pace_seconds: float = PACE_SECONDS, folding: NoticeFolding = NoticeFolding(),
        hands_out: Callable[[str | None], list[str]] = lambda _rule: [],
    ) -> None:
        self._default_channel = default_channel
        self._hands_out = hands_out  # rule name -> what its grants get besides the token (for the card)
        self._timezone = timezone
        self._store = store
        self._channels = channels
        self._folding = folding
        self._metrics = metrics
        self._client = client
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._pace_seconds = pace_seconds
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._lanes: dict[str | None, deque[OutboxItem]] = {}  # channel -> items claimed for it, in order
        self._lane_tasks: dict[str | None, asyncio.Task] = {}
        self._paused: dict[str, datetime] = {}  # channel -> when Slack may be called for it again (clock time)
        # item id -> attempts, when Slack refused every one of them (429, ok:false): nothing of it to adopt
        self._refused: dict[int, int] = {}
        self._last_write: dict[str, float] = {}  # channel -> when this process last called Slack for it (loop time)
        self._next_notice_round = float("-inf")  # loop time

    def wake(self, *_: object) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Finish the items being sent, give back the rest, then return from :meth:`run` (graceful shutdown)."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop` (or cancellation)."""
        try:
            while not self._stopping:
                try:
                    claimed = await self.drain_once()
                except Exception as exc:
                    if isinstance(exc, DatabaseUnavailable):  # the database is away: try again next round
                        log.warning("outbox round failed: the database is unavailable (%s)", exc.cause)
                    else:
                        log.exception("outbox round failed")
                    claimed = 0
                if claimed == 0 and not self._stopping:
                    self._wakeup.clear()
                    try:
                        # asyncio.timeout: wait_for could swallow a cancellation on Python 3.11 (see
                        # bot/changes.py), and the worker would then run on after its shutdown.
                        async with asyncio.timeout(self._poll_seconds):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
        except asyncio.CancelledError:
            for task in list(self._lane_tasks.values()):
                task.cancel()  # their items stay leased until the lease runs out, then any worker takes them
            raise
        lanes = list(self._lane_tasks.values())
        if lanes:
            await asyncio.gather(*lanes, return_exceptions=True)

    async def drain_once(self) -> int:
        """Claim the due items the lanes have room for and hand them to their channels' lanes (started as
        needed); returns how many were claimed. Delivery goes on in the lanes' tasks."""
        now = self._clock.now()
        for channel, until in list(self._paused.items()):
            if until <= now:
                del self._paused[channel]
        notices: list[OutboxItem] = []
        loop_now = asyncio.get_running_loop().time()
        if loop_now >= self._next_notice_round:  # rounds come after every item sent: look for notices less often
            self._next_notice_round = loop_now + NOTICE_ROUND_SECONDS
            notices = await self._channels.claim_notices(now, LEASE_SECONDS, self._folding, skip=set(self._paused))
        for item in notices:
            self._enqueue(item)
        held = {channel: len(lane) for channel, lane in self._lanes.items() if channel is not None}
        held.update({channel: LANE_DEPTH for channel in self._paused})
        items = await self._store.claim_outbox(now, LEASE_SECONDS, BATCH, per_channel=LANE_DEPTH, held=held)
        for item in items:
            self._enqueue(item)
        return len(notices) + len(items)

    def _enqueue(self, item: OutboxItem) -> None:
        """Add ``item`` to its channel's lane (started as needed): an approval card, card update or decision
        reply goes ahead of the lane's other waiting items, behind the one being sent. (A lane never holds two
        items of one request: a claim waits for the earlier one to be sent.)"""
        lane = self._lanes.setdefault(item.channel, deque())
        at = len(lane)
        if item.kind in URGENT_EVENTS:
            while at > 1 and lane[at - 1].kind not in URGENT_EVENTS:
                at -= 1
        lane.insert(at, item)
        if item.channel not in self._lane_tasks:
            self._lane_tasks[item.channel] = asyncio.create_task(
                self._run_lane(item.channel), name=f"outbox lane {item.channel}"
            )

    async def _run_lane(self, channel: str | None) -> None:
        """Send one channel's items in order; when the channel is paused or the worker stops, give the rest back."""
        lane = self._lanes[channel]
        try:
            while lane:
                paused_until = self._paused.get(channel) if channel is not None else None
                if self._stopping or paused_until is not None:
                    items = list(lane)
                    lane.clear()
                    for item in items:
                        await self._store.release_outbox(item.id, paused_until or self._clock.now())
                    continue
                await self._deliver_with_retry(lane[0])
                lane.popleft()
                self.wake()  # room in this lane: claim more
        except Exception as exc:
            # The items left keep their lease and are claimed again after it (the database went away mid-way).
            if isinstance(exc, DatabaseUnavailable):
                log.warning("outbox lane for channel %s stopped: the database is unavailable (%s)", channel,
                            exc.cause)
            else:
                log.exception("outbox lane for channel %s stopped", channel)
        finally:
            lane.clear()
            del self._lanes[channel]
            del self._lane_tasks[channel]

    async def _pace(self, channel: str, item: OutboxItem | None = None) -> None:
        """Wait for this channel's next write: ``pace_seconds`` after this process's last one, and the next slot
        shared by every replica (one per ``pace_seconds``, wall clock). Call :meth:`_writing` just before the call.

        ``item``: the post is for this leased item, whose lease is renewed with the slot taken (one transaction)
        and renewed again after a wait for the slot: an item can outwait its lease here and be claimed by another
        worker meanwhile (which then finds nothing posted yet), so the post goes only under a lease renewed for
        long enough to finish the call, fenced by the claim count. Raises :class:`LeaseLost` when it was claimed.

        The shared slot is taken before the wait and the call goes after it, so a slow database can move a call
        later than its slot and bring it closer to the next; the local spacing keeps one process's own calls at
        least ``pace_seconds`` apart whatever the database's latency."""
        loop = asyncio.get_running_loop()
        spacing = self._last_write.get(channel, float("-inf")) + self._pace_seconds - loop.time()
        if spacing > 0:
            await asyncio.sleep(spacing)
        lease = (item.id, item.attempts, self._clock.now() + timedelta(seconds=LEASE_SECONDS)) if item else None
        wait = await self._channels.take_write_slot(channel, self._pace_seconds, lease)
        if wait is None:
            raise LeaseLost(item.id if item else None)
        if wait > 0:
            await asyncio.sleep(wait)
            until = self._clock.now() + timedelta(seconds=LEASE_SECONDS)
            if item is not None and not await self._store.renew_outbox_lease(item.id, item.attempts, until):
                raise LeaseLost(item.id)

    def _writing(self, channel: str) -> None:
        self._last_write[channel] = asyncio.get_running_loop().time()

    async def _deliver_with_retry(self, item: OutboxItem) -> None:
        try:
            await self._deliver(item)
        except LeaseLost:
            log.info("outbox item %s (%s) is another worker's now; not posting it here", item.id, item.kind)
            self._refused.pop(item.id, None)
            return
        except SlackApiError as exc:
            status, headers, data = _answer(exc)
            error = str(data.get("error") or "")
            if status == 429:  # Slack pacing us: not a failure of the item, so its backoff does not grow
                self._note_refused(item)
                delay = _retry_after(headers)  # what Slack said about this channel (or the workspace)
                await self._retry(item, delay, f"rate limited (429 {error})", pause=delay, result="rate_limited",
                                  failed=False)
            elif error in PERMANENT_ERRORS:
                self._give_up(item, error)
                await self._store.complete_outbox(item.id, self._clock.now())
            elif status >= 500 or status == 0 or not data or error in TRANSIENT_ERRORS:
                self._refused.pop(item.id, None)  # Slack may or may not have done it
                await self._retry(item, self._backoff(item), f"Slack answered {status} {error or 'without JSON'}",
                                  pause=TRANSIENT_PAUSE_SECONDS)
            elif item.failures + 1 >= MAX_ATTEMPTS:
                self._give_up(item, error)
                await self._store.complete_outbox(item.id, self._clock.now())
            else:
                self._note_refused(item)
                await self._retry(item, self._backoff(item), f"Slack error {status} {error}",
                                  pause=TRANSIENT_PAUSE_SECONDS)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Network trouble, timeouts and answers that are not Slack's: the call may have been done.
            self._refused.pop(item.id, None)
            await self._retry(item, self._backoff(item), f"{type(exc).__name__}: {exc}", pause=TRANSIENT_PAUSE_SECONDS)
        else:
            self._refused.pop(item.id, None)
            self._metrics.slack_messages.labels(result="sent").inc()
            await self._store.complete_outbox(item.id, self._clock.now())

    def _give_up(self, item: OutboxItem, error: str) -> None:
        log.error("giving up on outbox item %s (%s): Slack said %s", item.id, item.kind, error)
        self._refused.pop(item.id, None)
        self._metrics.slack_messages.labels(result="abandoned").inc()

    def _nothing_posted_yet(self, item: OutboxItem) -> bool:
        """True if no earlier attempt of ``item`` can have reached Slack: it is the first, or this process saw
        Slack refuse every earlier one. (Another replica's or a crashed process's attempts are unknown here.)"""
        return item.attempts == 1 or self._refused.get(item.id) == item.attempts - 1

    def _note_refused(self, item: OutboxItem) -> None:
        if self._nothing_posted_yet(item):
            self._refused[item.id] = item.attempts
        else:
            self._refused.pop(item.id, None)

    @staticmethod
    def _backoff(item: OutboxItem) -> float:
        """Seconds before the next attempt after a failure: 2^failures plus up to 1 s of jitter, at most
        URGENT_MAX_BACKOFF_SECONDS for cards and decisions, MAX_BACKOFF_SECONDS for the rest."""
        cap = URGENT_MAX_BACKOFF_SECONDS if item.kind in URGENT_EVENTS else MAX_BACKOFF_SECONDS
        return min(_BACKOFF.calculate_sleep_duration(min(item.failures + 1, 16)), cap)

    async def _retry(self, item: OutboxItem, delay: float, why: str, pause: float, result: str = "retried",
                     failed: bool = True) -> None:
        """Put ``item`` back, due in ``delay`` seconds (``failed``: counted as a failure), and pause its channel
        for ``pause`` seconds (its lane gives back the rest, due then, and nothing more is claimed for it until
        then)."""
        log.warning("outbox item %s (%s) will be retried in %.1f s: %s", item.id, item.kind, delay, why)
        self._metrics.slack_messages.labels(result=result).inc()
        now = self._clock.now()
        if item.channel is not None:
            until = now + timedelta(seconds=pause)
            self._paused[item.channel] = max(until, self._paused.get(item.channel, until))
        await self._store.retry_outbox(item.id, now + timedelta(seconds=delay), why, failed=failed)

    async def _deliver(self, item: OutboxItem) -> None:
        if item.kind is EventKind.DIGEST:
            digest = (item.payload or {}).get("digest")
            if digest:  # (a digest is written with its first notices, in one transaction: never empty)
                await self._post_once(item, channel=item.payload["channel"], text=digest_text(digest))
            return
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
        if item.kind is EventKind.CREDENTIALS_FAILED:
            await self._alert_revocation_failed(item, request)
            return
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
                item, channel=request.channel, text=blocks.card_text(request, grant),
                blocks=blocks.card_blocks(request, grant, approvals, self._hands_out(request.rule)),
            )
            await self._store.set_card(request.id, channel, ts)
        elif item.kind is EventKind.CARD_UPDATE:
            if request.card_ts and request.card_channel:
                await self._pace(request.card_channel)
                self._writing(request.card_channel)
                await self._client.chat_update(
                    channel=request.card_channel,
                    ts=request.card_ts,
                    text=blocks.card_text(request, grant),
                    blocks=blocks.card_blocks(request, grant, approvals, self._hands_out(request.rule)),
                )
        elif item.kind is EventKind.REMINDER:
            if request.status is RequestStatus.PENDING and request.card_ts and request.card_channel:
                text = blocks.reminder_text(request, await self._store.approvals(request.id))
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)
        elif item.kind in (EventKind.GRANT_EXPIRED, EventKind.GRANT_REVOKED) and grant is not None:
            said = item.payload or {}  # who and why, for a revocation made in Slack
            text = blocks.grant_ended_text(request, grant, said.get("by_user"), said.get("reason"))
            if request.card_ts and request.card_channel:
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)
            elif request.channel and request.decision is Decision.AUTO_APPROVE:
                await self._post_once(item, channel=request.channel, text=text)
        elif item.kind is EventKind.CREDENTIALS_REVOKED:
            text = credential_blocks.revoked_text(item.payload or {})
            if request.card_ts and request.card_channel:
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)
            elif request.channel and request.decision is Decision.AUTO_APPROVE:
                await self._post_once(item, channel=request.channel, text=text)
        elif item.kind is EventKind.CREDENTIALS_UNAVAILABLE and request.card_ts and request.card_channel:
            await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts,
                                  text=credential_blocks.unavailable_text(item.payload or {}))
        elif item.kind in (EventKind.REQUEST_DECIDED, EventKind.TOKEN_HANDED_OVER) and request.card_ts:
            # Thread replies under the card (none without a card: nobody saw the request, nobody decided it there).
            text = (blocks.decision_text(request, grant, approvals) if item.kind is EventKind.REQUEST_DECIDED
                    else blocks.handed_over_text(request, grant) if grant is not None else None)
            if text:
                await self._post_once(item, channel=request.card_channel, thread_ts=request.card_ts, text=text)

    async def _alert_revocation_failed(self, item: OutboxItem, request) -> None:
        """The one alert for a revocation that failed every retry: a message of its own in the channel (not in a
        thread, where it could go unseen), in the card's channel, else the request's, else the default one (an
        orphan account has no request)."""
        grant = await self._store.get_grant(item.grant_id) if item.grant_id else None
        channel = ((request.card_channel or request.channel) if request is not None else None) or self._default_channel
        if not channel:
            log.error("a failed revocation (outbox item %s) has no channel to be told in (set GRANTBOT_SLACK_CHANNEL)",
                      item.id)
            return
        grant_id = item.grant_id or (item.payload or {}).get("grant_id")
        text = credential_blocks.revocation_failed_text(request, grant, grant_id, item.payload or {})
        await self._post_once(item, channel=channel, text=text)

    async def _post_once(self, item: OutboxItem, *, channel: str, thread_ts: str | None = None, **content) -> tuple[str, str]:
        """``chat.postMessage`` unless an earlier attempt of this item already posted; returns (channel, ts)."""
        if not self._nothing_posted_yet(item) and (ts := await self._find_posted(item, channel, thread_ts)):
            log.info("outbox item %s was already posted (ts %s); not posting it again", item.id, ts)
            return channel, ts
        metadata = {"event_type": METADATA_EVENT, "event_payload": {"outbox_id": item.id, "request_id": item.request_id}}
        extra = {"thread_ts": thread_ts} if thread_ts else {}
        await self._pace(channel, item)  # renews the lease, or raises LeaseLost
        self._writing(channel)
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
