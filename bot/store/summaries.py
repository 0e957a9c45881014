"""Reads across aggregates: what happened in a day (the daily summary) and what waits right now (the backlog
that metrics and readiness report)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from bot.domain.models import Backlog, Decision, GrantStatus, RequestStatus
from bot.store.credentials import revocation_backlog
from bot.store.outage import translate_outages
from bot.store.tables import AccessRequestRow, GrantRow, OutboxRow

R = AccessRequestRow.__table__
G = GrantRow.__table__
O = OutboxRow.__table__  # noqa: E741


@translate_outages
class Summaries:
    """Mixed into ``SqlStore`` (its ``engine``)."""

    async def activity(self, since: datetime, until: datetime, now: datetime, top: int = 5) -> dict:
        """What happened in ``[since, until)`` and what is active at ``now``, for the daily summary (JSON-ready).

        Shape: ``{"since", "until", "requests", "auto_approved", "approved", "denied", "timed_out",
        "grants_expired", "grants_revoked", "active_now", "expiring_soon": [{"identity", "scopes",
        "expires_at"}], "busiest": [{"identity", "requests"}]}``; times ISO 8601 UTC; "expiring soon" is the next hour.
        """
        def between(column):
            return (column >= since) & (column < until)

        async with self.engine.connect() as conn:
            async def count(table, *where) -> int:
                return (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()

            requests = await count(R, between(R.c.created_at))
            auto = await count(R, between(R.c.created_at), R.c.decision == Decision.AUTO_APPROVE.value,
                               R.c.status != RequestStatus.DENIED.value)
            approved = await count(R, between(R.c.decided_at), R.c.status == RequestStatus.APPROVED.value,
                                   R.c.decided_by != "policy")
            denied = await count(R, between(R.c.decided_at), R.c.status == RequestStatus.DENIED.value)
            timed_out = await count(R, between(R.c.decided_at), R.c.status == RequestStatus.EXPIRED.value)
            expired = await count(G, between(G.c.ended_at), G.c.status == GrantStatus.EXPIRED.value)
            revoked = await count(G, between(G.c.ended_at), G.c.status == GrantStatus.REVOKED.value)
            active = await count(G, G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now)
            soon = (await conn.execute(
                select(G.c.identity, G.c.scopes, G.c.expires_at)
                .where(G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now,
                       G.c.expires_at <= now + timedelta(hours=1))
                .order_by(G.c.expires_at).limit(10)
            )).all()
            busiest = (await conn.execute(
                select(R.c.identity, func.count().label("n")).where(between(R.c.created_at))
                .group_by(R.c.identity).order_by(func.count().desc(), R.c.identity).limit(top)
            )).all()

        def iso(moment: datetime) -> str:
            return moment.isoformat().replace("+00:00", "Z")

        return {
            "since": iso(since), "until": iso(until), "requests": requests, "auto_approved": auto,
            "approved": approved, "denied": denied, "timed_out": timed_out, "grants_expired": expired,
            "grants_revoked": revoked, "active_now": active,
            "expiring_soon": [{"identity": r.identity, "scopes": list(r.scopes), "expires_at": iso(r.expires_at)}
                              for r in soon],
            "busiest": [{"identity": r.identity, "requests": r.n} for r in busiest],
        }

    async def backlog(self, now: datetime) -> Backlog:
        """What waits right now, across all replicas: pending requests, grants active at ``now``, and outbox items
        not yet sent with the ``created_at`` of the oldest (None when there is none), the ``expires_at`` of the
        grant that has waited longest for the sweep (active, yet past it), and credential revocations pending and
        failed. Aggregate reads, on indexes."""
        async with self.engine.connect() as conn:
            async def scalar(statement):
                return (await conn.execute(statement)).scalar_one()

            return Backlog(
                pending_requests=await scalar(select(func.count()).select_from(R).where(
                    R.c.status == RequestStatus.PENDING.value)),
                active_grants=await scalar(select(func.count()).select_from(G).where(
                    G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now)),
                outbox_unsent=await scalar(select(func.count()).select_from(O).where(O.c.sent_at.is_(None))),
                outbox_oldest=await scalar(select(func.min(O.c.created_at)).where(O.c.sent_at.is_(None))),
                oldest_overdue_grant=await scalar(select(func.min(G.c.expires_at)).where(
                    G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at <= now)),
                **await revocation_backlog(conn),
            )


