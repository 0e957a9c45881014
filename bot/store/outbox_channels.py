"""What the outbox workers of every replica share per Slack channel: the write slot and the notice digests.

Write slots. Slack allows ``chat.postMessage`` about one message per second per channel. Each replica's worker
takes the channel's next slot before every write (:meth:`OutboxChannels.take_write_slot`): one conditional upsert
of the channel's ``outbox_channels`` row that moves ``next_write`` on by the pace and answers how long to wait, on
the database's clock so that replicas on hosts whose clocks differ still take turns. It is one small write per
Slack write, of a row only the replicas writing to that channel at that moment touch (at Slack's pace, about once a
second), instead of a lock held across the call.

Digests. When many auto-approved grants end together, telling each in its own message would take Slack an hour
per 3,600 of them and hold up the channel. Notices of auto-approved grants (a grant's expiry or revocation, told in
its request's channel: it has no card to reply under) that were never claimed are handed out by
:meth:`OutboxChannels.claim_notices`: up to ``one_by_one`` per channel per interval go one by one; when more are
due they are folded into one digest (an outbox item of kind ``notice.digest`` whose payload counts them and lists a
few), at most one digest per channel per interval: notices that come due while the next digest waits for its turn
are folded into it too. Folding marks each notice sent, with ``folded_into`` naming its digest, in the transaction
that writes the digest, under the channel row's lock: a notice is folded once, and the digest is then posted once
like any outbox item (its metadata names it; a retry adopts what an earlier attempt posted). A notice that was
claimed before (an earlier attempt may have posted it) is never folded: it is retried as itself.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import Float, and_, bindparam, cast, exists, extract, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.domain.models import Decision, EventKind, NoticeFolding, OutboxItem
from bot.store.outage import translate_outages
from bot.store.engine import writer
from bot.store.tables import AccessRequestRow, GrantRow, OutboxChannelRow, OutboxRow

O = OutboxRow.__table__  # noqa: E741
R = AccessRequestRow.__table__
G = GrantRow.__table__
C = OutboxChannelRow.__table__

ENDED_KINDS = (EventKind.GRANT_EXPIRED.value, EventKind.GRANT_REVOKED.value)
MAX_BATCHES = 20  # per channel and round: 100,000 ends at once still become one digest


def notice_of_auto_grant(outbox=O, requests=R):
    """SQL: the outbox row tells the end of an auto-approved grant in its request's channel (no card to reply
    under). Such rows are foldable into a digest while never claimed (``attempts = 0``)."""
    return and_(outbox.c.kind.in_(ENDED_KINDS), requests.c.decision == Decision.AUTO_APPROVE.value,
                requests.c.card_ts.is_(None), requests.c.channel.is_not(None))


def _database_now(dialect: str):
    """Unix seconds on the database's clock (the statement's moment; SQLite's ``'now'`` has millisecond
    precision)."""
    if dialect == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - 2440587.5) * 86400.0


def _take_slot_statement(dialect: str):
    now = _database_now(dialect)
    pace = bindparam("pace", type_=Float)
    dialect_insert, later = (pg_insert, func.greatest) if dialect == "postgresql" else (sqlite_insert, func.max)
    statement = dialect_insert(C).values(channel=bindparam("channel"), next_write=now + pace)
    return statement.on_conflict_do_update(
        index_elements=[C.c.channel], set_={"next_write": later(C.c.next_write, now) + pace}
    ).returning((C.c.next_write - pace - now).label("wait"))


_TAKE_SLOT = {dialect: _take_slot_statement(dialect) for dialect in ("postgresql", "sqlite")}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _listed(row) -> dict:
    """One grant's line of a digest (JSON-ready): who, what, where, and how it ended."""
    said = row.payload or {}  # a revocation made in Slack: who and why
    entry = {"identity": row.identity, "scopes": list(row.scopes), "environment": row.environment,
             "rule": row.rule, "ended": "revoked" if row.kind == EventKind.GRANT_REVOKED.value else "expired",
             "at": _iso(row.ended_at or row.expires_at)}
    if entry["ended"] == "revoked":
        entry["by"] = said.get("by_user") or row.ended_by
        if said.get("reason"):
            entry["reason"] = said["reason"]
    return entry


def _merged(digest: dict | None, rows: list, listed: int) -> dict:
    """A digest's payload (``{"count", "expired", "revoked", "since", "until", "grants": [...]}``, times ISO 8601
    UTC) with ``rows`` folded in: counts added, the earliest ``listed`` grants listed."""
    digest = dict(digest or {"count": 0, "expired": 0, "revoked": 0, "since": None, "until": None, "grants": []})
    ended = [row.ended_at or row.expires_at for row in rows]
    revoked = sum(row.kind == EventKind.GRANT_REVOKED.value for row in rows)
    digest["count"] += len(rows)
    digest["revoked"] += revoked
    digest["expired"] += len(rows) - revoked
    if digest["since"] is not None:
        ended += [datetime.fromisoformat(digest["since"]), datetime.fromisoformat(digest["until"])]
    digest["since"], digest["until"] = _iso(min(ended)), _iso(max(ended))
    room = max(listed - len(digest["grants"]), 0)
    digest["grants"] = [*digest["grants"], *(_listed(row) for row in rows[:room])]
    return digest


@translate_outages
class OutboxChannels:
    """Per-channel coordination of the outbox workers across replicas (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    async def take_write_slot(self, channel: str, pace_seconds: float,
                              lease: tuple[int, int, datetime] | None = None) -> float | None:
        """Take ``channel``'s next write slot, ``pace_seconds`` after the one before (or now, if that has passed);
        returns the seconds to wait for it (0 or more, wall clock).

        ``lease``: (outbox item id, its claim count, until): in the same transaction, renew the lease of the item
        the write is for, as ``SqlStore.renew_outbox_lease`` does; None (and no slot taken) when another worker
        has claimed it since or it was sent. One round trip for both, where a post needs both anyway."""
        async with self._writer.begin() as conn:
            if lease is not None:
                item_id, attempts, until = lease
                renewed = await conn.execute(
                    update(O).where(O.c.id == item_id, O.c.sent_at.is_(None), O.c.attempts == attempts)
                    .values(locked_until=until)
                )
                if renewed.rowcount != 1:
                    return None
            wait = (await conn.execute(_TAKE_SLOT[conn.dialect.name],
                                       {"channel": channel, "pace": pace_seconds})).scalar_one()
        return max(float(wait), 0.0)

    async def claim_notices(self, now: datetime, lease_seconds: float, folding: NoticeFolding,
                            skip: Collection[str] = ()) -> list[OutboxItem]:
        """Hand out the due, never-claimed notices of auto-approved grants, channel by channel (not those in
        ``skip``): lease the few that may go one by one (returned, as ``SqlStore.claim_outbox`` returns its
        items) or fold them into a digest (due when the channel's next digest may go; claimed like any item).
        A read when nothing is due; one transaction per channel that has some."""
        earlier = O.alias("earlier")
        due = (
            select(R.c.channel, func.count().label("n"))
            .select_from(O.join(R, R.c.id == O.c.request_id))
            .where(*self._fresh(now), ~exists().where(earlier.c.request_id == O.c.request_id,
                                                     earlier.c.id < O.c.id, earlier.c.sent_at.is_(None)))
            .group_by(R.c.channel)
        )
        async with self.engine.connect() as conn:
            channels = [row.channel for row in (await conn.execute(due)).all() if row.channel not in skip]
        claimed: list[OutboxItem] = []
        for channel in channels:
            for _ in range(MAX_BATCHES):  # a burst beyond one batch goes into the same digest, batch by batch
                items, folded = await self._hand_out(channel, now, lease_seconds, folding)
                claimed += items
                if folded < folding.batch:
                    break
        return claimed

    @staticmethod
    def _fresh(now: datetime) -> tuple:
        """Conditions (over outbox ⨝ access_requests) of a due notice of an auto-approved grant never claimed."""
        return (O.c.sent_at.is_(None), O.c.not_before <= now, O.c.attempts == 0,
                or_(O.c.locked_until.is_(None), O.c.locked_until <= now), notice_of_auto_grant())

    async def _hand_out(self, channel: str, now: datetime, lease_seconds: float,
                        folding: NoticeFolding) -> tuple[list[OutboxItem], int]:
        """One transaction for ``channel``: (the notices leased one by one, how many were folded)."""
        async with self._writer.begin() as conn:
            state = await self._lock_channel(conn, channel)
            since, told, next_digest_at = state.notices_since, state.notices_told, state.next_digest_at
            if since is None or since <= now - timedelta(seconds=folding.interval_seconds):
                since, told = now, 0
            rows = await self._due_notices(conn, channel, now, folding.batch)
            if not rows:
                return [], 0
            digest = await self._open_digest(conn, channel, now)
            if digest is None and told + len(rows) <= folding.one_by_one:
                items = await self._lease(conn, rows, channel, now, lease_seconds)
                told += len(items)
            else:
                items = []
                if digest is None:
                    due_at = max(now, next_digest_at or now)
                    next_digest_at = due_at + timedelta(seconds=folding.interval_seconds)
                    told = folding.one_by_one + 1  # this interval's notices go in digests from now on
                    digest = await self._new_digest(conn, channel, now, due_at)
                await self._fold(conn, digest, rows, now, folding.listed)
            await conn.execute(
                update(C).where(C.c.channel == channel)
                .values(notices_since=since, notices_told=told, next_digest_at=next_digest_at)
            )
        return items, len(rows) - len(items)

    @staticmethod
    async def _lock_channel(conn: AsyncConnection, channel: str):
        """The channel's row, created if new, locked for this transaction (PostgreSQL: ``FOR UPDATE``; SQLite's
        ``BEGIN IMMEDIATE`` already excludes other writers): one replica at a time hands out its notices."""
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        await conn.execute(dialect_insert(C).values(channel=channel).on_conflict_do_nothing(index_elements=["channel"]))
        return (await conn.execute(select(C).where(C.c.channel == channel).with_for_update())).one()

    async def _due_notices(self, conn: AsyncConnection, channel: str, now: datetime, limit: int) -> list:
        """The channel's due, never-claimed notices of auto-approved grants, oldest first, with what a digest
        lists of each; locked (PostgreSQL) so that no claim takes one meanwhile."""
        earlier = O.alias("earlier")
        query = (
            select(O.c.id, O.c.kind, O.c.request_id, O.c.grant_id, O.c.created_at, O.c.failures, O.c.payload,
                   G.c.identity, G.c.scopes, G.c.ended_at, G.c.ended_by, G.c.expires_at, R.c.environment, R.c.rule)
            .select_from(O.join(R, R.c.id == O.c.request_id).join(G, G.c.id == O.c.grant_id))
            .where(*self._fresh(now), R.c.channel == channel,
                   ~exists().where(earlier.c.request_id == O.c.request_id, earlier.c.id < O.c.id,
                                   earlier.c.sent_at.is_(None)))
            .order_by(O.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=O)
        )
        return list((await conn.execute(query)).all())

    @staticmethod
    async def _open_digest(conn: AsyncConnection, channel: str, now: datetime):
        """The channel's digest still open to more notices: not yet claimed (so nothing of it can have been
        posted) nor sent. (id, payload) or None."""
        return (await conn.execute(
            select(O.c.id, O.c.payload)
            .where(O.c.kind == EventKind.DIGEST.value, O.c.channel == channel, O.c.sent_at.is_(None),
                   O.c.attempts == 0, or_(O.c.locked_until.is_(None), O.c.locked_until <= now))
            .order_by(O.c.id.desc())
            .limit(1)
            .with_for_update(skip_locked=True)
        )).first()

    @staticmethod
    async def _new_digest(conn: AsyncConnection, channel: str, now: datetime, due_at: datetime):
        inserted = await conn.execute(
            O.insert().values(
                kind=EventKind.DIGEST.value, request_id=f"digest:{channel}"[:36], created_at=now, not_before=due_at,
                attempts=0, failures=0, channel=channel, payload={"channel": channel, "digest": None},
            ).returning(O.c.id, O.c.payload)
        )
        return inserted.one()

    @staticmethod
    async def _lease(conn: AsyncConnection, rows: list, channel: str, now: datetime,
                     lease_seconds: float) -> list[OutboxItem]:
        leased = []
        for row in rows:
            won = await conn.execute(
                update(O)
                .where(O.c.id == row.id, O.c.sent_at.is_(None), O.c.attempts == 0,
                       or_(O.c.locked_until.is_(None), O.c.locked_until <= now))
                .values(locked_until=now + timedelta(seconds=lease_seconds), attempts=1)
            )
            if won.rowcount == 1:
                leased.append(OutboxItem(row.id, EventKind(row.kind), row.request_id, row.grant_id, 1,
                                         row.created_at, row.payload, channel, row.failures))
        return leased

    @staticmethod
    async def _fold(conn: AsyncConnection, digest, rows: list, now: datetime, listed: int) -> None:
        """Mark ``rows`` told by ``digest`` and count them into it. Their requests' card updates go too: an
        auto-approved request has no card, so there is nothing for them to do."""
        ids = [row.id for row in rows]
        won = set((await conn.execute(
            update(O)
            .where(O.c.id.in_(ids), O.c.sent_at.is_(None), O.c.attempts == 0,
                   or_(O.c.locked_until.is_(None), O.c.locked_until <= now))
            .values(sent_at=now, locked_until=None, folded_into=digest.id)
            .returning(O.c.id)
        )).scalars())
        folded = [row for row in rows if row.id in won]
        if not folded:
            return
        await conn.execute(
            update(O)
            .where(O.c.kind == EventKind.CARD_UPDATE.value, O.c.request_id.in_([row.request_id for row in folded]),
                   O.c.sent_at.is_(None))
            .values(sent_at=now, locked_until=None)
        )
        payload = dict(digest.payload or {})
        payload["digest"] = _merged(payload.get("digest"), folded, listed)
        await conn.execute(update(O).where(O.c.id == digest.id).values(payload=payload))


__all__ = ["OutboxChannels", "notice_of_auto_grant"]
