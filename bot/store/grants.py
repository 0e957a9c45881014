"""Grants: issued with their request or approval, handed over and re-issued under conditional UPDATEs, ended
once (expiry, revocation) with their audit, outbox and revocation rows, and listed for `/access` and the App
Home."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain.models import Grant, GrantStatus, OutboxEvent
from bot.store.audit import INSERT_AUDIT, audit_row
from bot.store.expiry import end_due_grants, next_due
from bot.store.outage import translate_outages
from bot.store.tables import GrantRow, IdentityScopeRow

S = IdentityScopeRow.__table__
G = GrantRow.__table__

# Statements on the hot paths are built once and executed with parameter dicts: SQLAlchemy's compiled cache then
# finds them by an identity-memoised cache key, where a statement rebuilt per call with ``.values(...)`` pays for
# coercing every value into a bind parameter and walking them all to compute its cache key, each time.
INSERT_GRANT = insert(G)
_INSERT_SCOPE = {"postgresql": pg_insert(S).on_conflict_do_nothing(), "sqlite": sqlite_insert(S).on_conflict_do_nothing()}


def grant_from_row(row) -> Grant:
    return Grant(
        id=row.id,
        request_id=row.request_id,
        identity=row.identity,
        scopes=tuple(row.scopes),
        audience=row.audience,
        environment=row.environment,
        jti=row.jti,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        status=GrantStatus(row.status),
        ended_at=row.ended_at,
        ended_by=row.ended_by,
        delivered_at=row.delivered_at,
        token_hash=row.token_hash,
    )


def grant_issued_row(grant: Grant, actor: str) -> dict:
    return audit_row(grant.issued_at, "grant.issued", actor, grant.request_id, grant.id, jti=grant.jti,
                      scope=" ".join(grant.scopes), audience=grant.audience, environment=grant.environment,
                      expires_at=grant.expires_at.isoformat(), ttl_seconds=grant.ttl_seconds)


def grant_values(grant: Grant) -> dict:
    return {
        "id": grant.id,
        "request_id": grant.request_id,
        "identity": grant.identity,
        "scopes": list(grant.scopes),
        "audience": grant.audience,
        "environment": grant.environment,
        "jti": grant.jti,
        "issued_at": grant.issued_at,
        "expires_at": grant.expires_at,
        "status": grant.status.value,
        "ended_at": grant.ended_at,
        "ended_by": grant.ended_by,
        "delivered_at": grant.delivered_at,
        "token_hash": grant.token_hash,
    }



@translate_outages
class GrantQueries:
    """Mixed into ``SqlStore`` (its ``engine``, ``_writer``, ``_audit``, ``_add_events`` and the credentials'
    ``queue_revocations``)."""

    async def _audit_grant_issued(self, conn: AsyncConnection, grant: Grant, actor: str) -> None:
        await conn.execute(INSERT_AUDIT, grant_issued_row(grant, actor))
        await self._remember_scopes(conn, grant)

    @staticmethod
    async def _remember_scopes(conn: AsyncConnection, grant: Grant) -> None:
        # Every issued grant makes its scopes known to the identity (``first_use`` asks people only before that).
        # ON CONFLICT DO NOTHING: two grants of one scope committing at once must not fail each other.
        await conn.execute(_INSERT_SCOPE[conn.dialect.name], [
            {"identity": grant.identity, "scope": scope, "first_granted_at": grant.issued_at}
            for scope in dict.fromkeys(grant.scopes)
        ])

    async def _one_grant(self, *where) -> Grant | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(G).where(*where))).first()
        return grant_from_row(row) if row else None

    async def get_grant(self, grant_id: str) -> Grant | None:
        return await self._one_grant(G.c.id == grant_id)

    async def grant_for_request(self, request_id: str) -> Grant | None:
        return await self._one_grant(G.c.request_id == request_id)

    async def grant_by_jti(self, jti: str) -> Grant | None:
        return await self._one_grant(G.c.jti == jti)

    async def recent_grant_by_jti(self, jti: str, now: datetime) -> Grant | None:
        """``grant_by_jti``, answered for an active grant from a read less than half a second old at ``now``
        (``bot.store.recent_grants``); a grant this store ended or re-issued is read afresh at once."""
        return await self.recent_grants.get(jti, now)

    async def mark_handed_over(self, grant_id: str, token_hash: str, now: datetime,
                               events: list[OutboxEvent] = ()) -> bool:
        async with self._writer.begin() as conn:
            # Only while active: a grant that ended during a hand-over (its credentials' secrets just set) must not
            # be handed over; its revocation, which waited for the hand-over lease, removes them.
            won = await conn.execute(
                update(G)
                .where(G.c.id == grant_id, G.c.delivered_at.is_(None), G.c.status == GrantStatus.ACTIVE.value)
                .values(delivered_at=now, token_hash=token_hash, handover_until=None)
                .returning(G.c.request_id, G.c.identity)
            )
            row = won.first()
            if row is None:
                return False
            await self._audit(conn, now, "token.handed_over", row.identity, row.request_id, grant_id)
            await self._add_events(conn, list(events), now)
        return True

    async def reissue_token(self, grant_id: str, jti: str, token_hash: str, now: datetime) -> Grant | None:
        """See the port (``Store.reissue_token``). The row is locked first (``FOR UPDATE``; SQLite: ``BEGIN
        IMMEDIATE``) so that concurrent re-issues take turns and each audit event names the ``jti`` it replaced."""
        async with self._writer.begin() as conn:
            row = (await conn.execute(select(G).where(G.c.id == grant_id).with_for_update())).first()
            if (row is None or row.status != GrantStatus.ACTIVE.value or row.expires_at <= now
                    or row.delivered_at is None):
                return None
            won = await conn.execute(
                update(G)
                .where(G.c.id == grant_id, G.c.jti == row.jti, G.c.status == GrantStatus.ACTIVE.value,
                       G.c.expires_at > now)
                .values(jti=jti, token_hash=token_hash)
            )
            if won.rowcount != 1:  # pragma: no cover - impossible while the row is locked
                return None
            await self._audit(conn, now, "token.reissued", row.identity, row.request_id, grant_id,
                              old_jti=row.jti, new_jti=jti)
        self.recent_grants.forget(grant_id)
        grant = grant_from_row(row)
        grant.jti, grant.token_hash = jti, token_hash
        return grant

    async def _end_grant(
        self, conn: AsyncConnection, grant_id: str, status: GrantStatus, by: str, now: datetime
    ) -> bool:
        won = await conn.execute(
            update(G)
            .where(G.c.id == grant_id, G.c.status == GrantStatus.ACTIVE.value)
            .values(status=status.value, ended_at=now, ended_by=by)
        )
        return won.rowcount == 1

    async def expire_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """End up to ``limit`` due grants in one transaction, set-based (``bot.store.expiry.end_due_grants``)."""
        async with self._writer.begin() as conn:
            rows = await end_due_grants(conn, now, limit)
        return [grant_from_row(row) for row in rows]

    async def next_due(self) -> datetime | None:
        """The earliest ``expires_at``/deadline/reminder the sweep will have to act on (``bot.store.expiry``)."""
        async with self.engine.connect() as conn:
            return await next_due(conn)

    async def revoke_grant(self, grant_id: str, by: str, now: datetime, events: list[OutboxEvent],
                           **audit) -> bool:
        """End an active grant early; False if it was not active. ``audit`` joins the ``grant.revoked`` audit
        event's data (e.g. ``reason``, ``via``, ``identity_glob``); None values are left out."""
        async with self._writer.begin() as conn:
            if not await self._end_grant(conn, grant_id, GrantStatus.REVOKED, by, now):
                return False
            request_id = events[0].request_id if events else None
            await self._audit(conn, now, "grant.revoked", by, request_id, grant_id,
                              **{k: v for k, v in audit.items() if v is not None})
            await self._add_events(conn, events, now)
            await self.queue_revocations(conn, [grant_id], now)
        self.recent_grants.forget(grant_id)
        return True

    # -- listings for /access (read-only) ---------------------------------------------------------------------

    @staticmethod
    def _active(now: datetime):
        # Active means both: the sweep may not yet have marked a grant past its expires_at.
        return (G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now)

    async def active_grants(self, now: datetime, *, identities: list[str] | None = None,
                            issued_at_or_before: datetime | None = None, limit: int | None = None) -> list[Grant]:
        """Active grants at ``now``, soonest to expire first; only of ``identities`` (if given) and only those issued
        at or before ``issued_at_or_before`` (if given)."""
        query = select(G).where(*self._active(now)).order_by(G.c.expires_at, G.c.id)
        if identities is not None:
            query = query.where(G.c.identity.in_(identities))
        if issued_at_or_before is not None:
            query = query.where(G.c.issued_at <= issued_at_or_before)
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [grant_from_row(row) for row in rows]

    async def count_active_grants(self, now: datetime) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(G).where(*self._active(now)))).scalar_one()

    async def active_identities(self, now: datetime) -> list[str]:
        """The distinct identities holding an active grant at ``now`` (few: one per pipeline), sorted."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(G.c.identity).where(*self._active(now)).distinct().order_by(G.c.identity)
            )).scalars().all()
        return list(rows)

    async def active_grants_with_environment(self, now: datetime, limit: int) -> tuple[list[tuple[Grant, str]], int]:
        """Grants active at ``now`` (status active, ``expires_at`` after ``now``), soonest to expire first, at most
        ``limit``, each with its environment; and how many there are in all."""
        live = (G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(G).where(*live))).scalar_one()
            rows = (await conn.execute(
                select(G).where(*live).order_by(G.c.expires_at, G.c.id).limit(limit)
            )).all()
        return [(grant_from_row(row), row.environment) for row in rows], total
