"""The SQL store: the domain's ``Store`` port, plus the outbox, audit and replay-protection queries.

Every public method is one transaction; every state change is a conditional UPDATE whose row count tells
whether this caller won (so a double click, a retried payload or a racing replica applies it once).

Several replicas sweep and drain the outbox at the same time, with no leader. Correctness comes from the
conditional UPDATEs alone; on PostgreSQL the sweeps' and the outbox's SELECTs also take ``FOR UPDATE SKIP
LOCKED`` so that replicas split the due rows between them instead of all racing for the same ones (SQLite has
one writer at a time anyway: ``BEGIN IMMEDIATE``, and SQLAlchemy leaves the clause out there).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.audit import AuditTrail
from bot.store.credentials import CredentialQueries
from bot.store.engine import writer
from bot.store.grants import GrantQueries
from bot.store.group_commit import GroupCommit
from bot.store.outage import database_answers, translate_outages
from bot.store.outbox import OutboxQueries
from bot.store.recent_grants import RecentGrants
from bot.store.requests import RequestQueries
from bot.store.signatures import ReplayRecords
from bot.store.summaries import Summaries
from bot.store.tables import AccessRequestRow, GrantRow

R = AccessRequestRow.__table__
G = GrantRow.__table__


@translate_outages
class SqlStore(RequestQueries, GrantQueries, OutboxQueries, AuditTrail, ReplayRecords, Summaries,
               CredentialQueries):
    """SQLAlchemy Core over the SQLModel tables; works on SQLite (aiosqlite) and PostgreSQL (asyncpg). One mixin
    per aggregate: requests and approvals (``bot.store.requests``), grants (``grants``), the outbox (``outbox``),
    the audit trail (``audit``), replay records (``signatures``), reads across them (``summaries``) and the
    credential lifecycle (``credentials``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.recent_grants = RecentGrants(self.grant_by_jti)  # introspection's reads (bot.store.recent_grants)
        self._group = GroupCommit(engine)  # the request path's writes (bot.store.group_commit)

    async def ids_starting_with(self, prefix: str, *, grants: bool, limit: int) -> list[str]:
        """Up to ``limit`` request ids (``grants``: grant ids) starting with ``prefix``. A range on the primary key
        (``prefix <= id < prefix + "\uffff"``) rather than LIKE, which SQLite's index cannot serve."""
        column = (G if grants else R).c.id
        async with self.engine.connect() as conn:
            return list((await conn.execute(
                select(column).where(column >= prefix, column < prefix + "\uffff").order_by(column).limit(limit)
            )).scalars())

    async def finish_writes(self, timeout: float) -> None:
        """For shutdown: the request path's queued writes finished (or, after ``timeout`` seconds, cancelled) and
        their connections returned to the pool (``GroupCommit.close``)."""
        await self._group.close(timeout)

    async def answers(self, timeout: float) -> bool:
        """True when the database answers ``SELECT 1`` within ``timeout`` seconds (``database_answers``)."""
        return await database_answers(self.engine, timeout)


__all__ = ["SqlStore"]
