"""Refusals in the audit trail, rate-limited: the domain's ``RefusalLog`` port (``bot.domain.refusals``).

Per kind, who and reason, refusals are grouped by minute (``window_start``, whole UTC minutes):

- the first of a minute writes its audit event at once (``data.count`` 1), so a SIEM sees it without delay;
- the repeats only count up a row of ``refusal_counts`` (a conditional ``UPDATE … SET count = count + 1``);
- once the minute is over the sweep writes one audit event for them (``data.count`` = the repeats,
  ``data.repeated`` true, ``data.since`` / ``data.until`` the minute) and deletes the row, in one transaction
  (a conditional DELETE: on several replicas exactly one writes it).

So a flood of identical bad requests costs at most two audit events a minute, and the ``count``s of the events
add up to the refusals. The counts live in the database, so they hold across replicas: every replica counts into
the same row. An attacker varying who or why (made-up identities) would open a row per value: beyond
:data:`MAX_KEYS_PER_WINDOW` distinct ones of a kind in a minute, the rest are counted together under who ``*``.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.domain.refusals import Refusal
from bot.store.audit import audit_row
from bot.store.engine import writer
from bot.store.outage import translate_outages
from bot.store.tables import AuditEventRow, RefusalCountRow

C = RefusalCountRow.__table__
E = AuditEventRow.__table__

WINDOW_SECONDS = 60
MAX_KEYS_PER_WINDOW = 20  # distinct (who, reason) of one kind in one minute before the rest are lumped together
OVERFLOW_WHO = "*"
MAX_WHO = 255  # the audit actor's column
MAX_REASON = 1000

_COUNT_ONE_MORE = update(C).where(C.c.key == bindparam("k")).values(count=C.c.count + 1)
_INSERT_AUDIT = insert(E)
log = logging.getLogger(__name__)


def _text(value: str, limit: int) -> str:
    """``value`` as a database text column takes it: valid UTF-8 (unpaired surrogates replaced), no NUL, at most
    ``limit`` characters. Who and why may come from a request's headers."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")[:limit]


def _window(now: datetime) -> datetime:
    return datetime.fromtimestamp(int(now.timestamp()) // WINDOW_SECONDS * WINDOW_SECONDS, UTC)


def _key(kind: str, who: str, reason: str, window_start: datetime) -> str:
    return hashlib.sha256("\x00".join((kind, who, reason, window_start.isoformat())).encode()).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@translate_outages
class SqlRefusalLog:
    """:class:`bot.domain.ports.RefusalLog` on the grantbot database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._writer = writer(engine)
        dialect_insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._open_window = dialect_insert(C).on_conflict_do_nothing(index_elements=[C.c.key])

    async def record(self, refusal: Refusal, now: datetime) -> bool:
        """Count ``refusal`` in its minute; the first of the minute is audited at once (True). One transaction."""
        window_start = _window(now)
        who, reason = _text(refusal.who, MAX_WHO), _text(refusal.reason, MAX_REASON)
        async with self._writer.begin() as conn:
            key = _key(refusal.kind, who, reason, window_start)
            if await self._count(conn, key):
                return False
            open_windows = (await conn.execute(
                select(func.count()).select_from(C).where(C.c.kind == refusal.kind, C.c.window_start == window_start)
            )).scalar_one()
            if open_windows >= MAX_KEYS_PER_WINDOW:
                who = OVERFLOW_WHO
                reason = (f"more than {MAX_KEYS_PER_WINDOW} different callers or reasons in a minute; the rest "
                          "are counted together")
                key = _key(refusal.kind, who, reason, window_start)
                if await self._count(conn, key):
                    return False
            opened = await conn.execute(self._open_window, {
                "key": key, "kind": refusal.kind, "who": who, "reason": reason, "window_start": window_start,
                "count": 1, "request_id": refusal.request_id, "data": refusal.data,
            })
            if opened.rowcount != 1:  # another replica opened it a moment ago
                await self._count(conn, key)
                return False
            await conn.execute(_INSERT_AUDIT, audit_row(now, refusal.kind, who, refusal.request_id, None,
                                                         reason=reason, count=1, **refusal.data))
        # Once a minute per kind, who and reason, like the audit event: a flood of bad requests is one line.
        log.info("refused (%s) %s: %s", refusal.kind, who, reason,
                 extra={"refusal": refusal.kind, "who": who, "reason": reason})
        return True

    @staticmethod
    async def _count(conn: AsyncConnection, key: str) -> bool:
        return (await conn.execute(_COUNT_ONE_MORE, {"k": key})).rowcount == 1

    async def close_windows(self, now: datetime, limit: int) -> int:
        """Audit the repeats of every minute over at ``now`` and delete its row (at most ``limit``). On PostgreSQL
        replicas skip each other's locked rows; the conditional DELETE makes each summary once in any case."""
        async with self._writer.begin() as conn:
            rows = (await conn.execute(
                select(C).where(C.c.window_start <= now - timedelta(seconds=WINDOW_SECONDS))
                .order_by(C.c.window_start).limit(limit).with_for_update(skip_locked=True)
            )).all()
            for row in rows:
                deleted = await conn.execute(C.delete().where(C.c.key == row.key, C.c.count == row.count))
                if deleted.rowcount == 1 and row.count > 1:
                    until = row.window_start + timedelta(seconds=WINDOW_SECONDS)
                    await conn.execute(_INSERT_AUDIT, {
                        "at": until, "kind": row.kind, "actor": row.who, "request_id": row.request_id,
                        "grant_id": None,
                        "data": {"reason": row.reason, "count": row.count - 1, "repeated": True,
                                 "since": _iso(row.window_start), "until": _iso(until), **row.data},
                    })
        return len(rows)
