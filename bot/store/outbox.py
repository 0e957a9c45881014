"""The outbox table: events queued in the transaction of the change they announce, leased by workers across
replicas and marked sent, retried or released by conditional UPDATEs (the per-channel pacing and digests are in
``bot.store.outbox_channels``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, case, exists, false, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain.models import URGENT_EVENTS, Decision, EventKind, OutboxEvent, OutboxItem
from bot.store.outage import translate_outages
from bot.store.outbox_channels import notice_of_auto_grant
from bot.store.tables import AccessRequestRow, OutboxRow

R = AccessRequestRow.__table__
O = OutboxRow.__table__  # noqa: E741

_URGENT_KINDS = tuple(kind.value for kind in URGENT_EVENTS)


def event_values(event: OutboxEvent, now: datetime) -> dict:
    """Parameters of the ``outbox`` row of ``event``, due at ``now``."""
    return {"kind": event.kind.value, "request_id": event.request_id, "grant_id": event.grant_id, "created_at": now,
            "not_before": now, "attempts": 0, "payload": event.payload}


@translate_outages
class OutboxQueries:
    """Mixed into ``SqlStore`` (its ``engine``, ``_writer`` and ``_audit``)."""

    @staticmethod
    async def _add_events(conn: AsyncConnection, events: list[OutboxEvent], now: datetime) -> None:
        if events:
            await conn.execute(insert(O), [event_values(e, now) for e in events])

    async def claim_outbox(
        self,
        now: datetime,
        lease_seconds: float,
        limit: int,
        per_channel: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` due, unsent outbox items: approval cards, their updates and decision replies of
        requests people decide first, then the rest, each oldest first; an item waits while an earlier one of
        the same request is unsent. Notices of auto-approved grants never claimed are left to
        ``OutboxChannels.claim_notices`` (which may fold them into a digest).

        The per-request ordering keeps a card's updates and replies behind its post. The lease (a conditional
        UPDATE of ``locked_until``, ``lease_seconds`` long, counting one more claim in ``attempts``) keeps two
        workers from sending the same item at once.

        ``per_channel``: at most this many items per Slack channel (the card's channel, else the request's),
        counting the ``held`` ones (channel -> items the caller already holds); items for a channel with no room
        are left for a later claim. Items with no channel are not limited. Each item carries its ``channel``.
        """
        earlier = O.alias("earlier")
        blocked = exists().where(
            earlier.c.request_id == O.c.request_id, earlier.c.id < O.c.id, earlier.c.sent_at.is_(None)
        )
        channel = func.coalesce(R.c.card_channel, R.c.channel, O.c.channel)
        urgent = and_(O.c.kind.in_(_URGENT_KINDS), R.c.decision == Decision.REQUIRE_APPROVAL.value)
        held = dict(held or {})
        query = (
            select(O.c.id, O.c.kind, O.c.request_id, O.c.grant_id, O.c.attempts, O.c.failures, O.c.created_at,
                   O.c.payload, channel.label("channel"))
            .select_from(O.outerjoin(R, R.c.id == O.c.request_id))
            .where(
                O.c.sent_at.is_(None),
                O.c.not_before <= now,
                or_(O.c.locked_until.is_(None), O.c.locked_until <= now),
                ~blocked,
                # coalesce: a notice has no request row (NULL), and is not one of these
                ~func.coalesce(and_(notice_of_auto_grant(), O.c.attempts == 0), false()),
            )
            .order_by(case((urgent, 0), else_=1), O.c.id)
            # Without a per-channel cap the first ``limit`` rows are the answer; with one, look further so
            # that a busy channel's backlog does not hide the other channels' items.
            .limit(limit if per_channel is None else limit * max(per_channel, 1) * 4)
            .with_for_update(skip_locked=True, of=O)
        )
        if per_channel is not None:
            full = [c for c, n in held.items() if n >= per_channel]
            if full:
                query = query.where(or_(channel.is_(None), channel.not_in(full)))
        claimed: list[OutboxItem] = []
        async with self._writer.begin() as conn:
            rows = (await conn.execute(query)).all()
            for row in rows:
                if len(claimed) >= limit:
                    break
                if per_channel is not None and row.channel is not None:
                    if held.get(row.channel, 0) >= per_channel:
                        continue
                won = await conn.execute(
                    update(O)
                    .where(
                        O.c.id == row.id,
                        O.c.sent_at.is_(None),
                        or_(O.c.locked_until.is_(None), O.c.locked_until <= now),
                    )
                    .values(locked_until=now + timedelta(seconds=lease_seconds), attempts=O.c.attempts + 1)
                )
                if won.rowcount == 1:
                    if row.channel is not None:
                        held[row.channel] = held.get(row.channel, 0) + 1
                    claimed.append(
                        OutboxItem(row.id, EventKind(row.kind), row.request_id, row.grant_id, row.attempts + 1,
                                   row.created_at, row.payload, row.channel, row.failures)
                    )
        return claimed

    async def add_notice(self, key: str, channel: str | None, text: str, now: datetime, audit_kind: str,
                         payload_extra: dict | None = None, **audit) -> bool:
        """Queue a plain message to ``channel`` (None: the default channel) once per ``key`` across all replicas,
        with an audit event ``audit_kind``; False when a notice with this key was queued before.
        ``payload_extra`` joins the payload (e.g. ``{"summary": ...}`` for the daily summary's builder)."""
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        async with self._writer.begin() as conn:
            inserted = await conn.execute(
                dialect_insert(O).values(
                    kind=EventKind.NOTICE.value, request_id=f"notice:{key[:29]}", created_at=now, not_before=now,
                    attempts=0, payload={"channel": channel, "text": text, **(payload_extra or {})}, dedup_key=key,
                    channel=channel,
                ).on_conflict_do_nothing(index_elements=["dedup_key"])
            )
            if inserted.rowcount != 1:
                return False
            await self._audit(conn, now, audit_kind, "grantbot", None, **audit)
        return True

    async def renew_outbox_lease(self, item_id: int, attempts: int, until: datetime) -> bool:
        """Extend the lease of an item this worker claimed (its claim counted ``attempts``) to ``until``; False
        when another worker has claimed it since (its claim counted one more attempt) or it was sent. The claim
        count fences the lease: a worker that kept an item past its lease must not post it too."""
        async with self._writer.begin() as conn:
            renewed = await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None), O.c.attempts == attempts)
                .values(locked_until=until)
            )
        return renewed.rowcount == 1

    async def complete_outbox(self, item_id: int, now: datetime) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(update(O).where(O.c.id == item_id).values(sent_at=now, locked_until=None))

    async def retry_outbox(self, item_id: int, not_before: datetime, error: str, failed: bool = True) -> None:
        """Put a leased item back, due at ``not_before``; ``failed``: the attempt counts as a failure (a 429 does
        not: it is Slack's pacing, not the item's fault)."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None))
                .values(not_before=not_before, locked_until=None, last_error=error[:500],
                        failures=O.c.failures + (1 if failed else 0))
            )

    async def release_outbox(self, item_id: int, not_before: datetime) -> None:
        """Give back a leased item that was not attempted (its worker is stopping, or its channel is paused): it
        is due again at ``not_before`` and the claim's attempt is not counted."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None))
                .values(not_before=not_before, locked_until=None, attempts=O.c.attempts - 1)
            )
