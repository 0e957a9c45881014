"""The sweep's SQL, set-based: a batch of due grants ends in one ``UPDATE … RETURNING``, and its audit rows, outbox
rows and credential revocations follow in one statement each, in the same transaction.

Row by row (a SELECT, then one conditional UPDATE, one audit INSERT and one outbox INSERT per grant) the sweep fell
behind as soon as grants came due faster than a few hundred a second (benchmarks/README.md). Here a batch of
``limit`` grants costs five statements whatever its size, so each transaction stays short (milliseconds) while
request writers wait for it (SQLite has one writer at a time).

The UPDATE's own condition (``status = 'active'``) is what makes each grant end once across replicas; on
PostgreSQL the subquery also takes ``FOR UPDATE SKIP LOCKED`` so that replicas split the due rows instead of
queueing behind each other (SQLAlchemy leaves the clause out on SQLite, whose ``BEGIN IMMEDIATE`` serialises the
sweeps anyway). ``UPDATE … RETURNING`` needs SQLite 3.35 or later.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain.credentials import RevocationStatus
from bot.domain.models import EventKind, GrantStatus, RequestStatus
from bot.logs import current_request_id
from bot.store.tables import AccessRequestRow, AuditEventRow, CredentialRow, GrantRow, OutboxRow

G = GrantRow.__table__
R = AccessRequestRow.__table__
E = AuditEventRow.__table__
O = OutboxRow.__table__  # noqa: E741
C = CredentialRow.__table__

_NOW = bindparam("now", type_=G.c.expires_at.type)
_DUE = (
    select(G.c.id)
    .where(G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at <= _NOW)
    .order_by(G.c.expires_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# Built once (see repository.py on the compiled cache); ``status = 'active'`` again in the outer WHERE so that a row
# another transaction ended since the subquery read it (PostgreSQL re-checks the condition after the lock) is not
# ended twice.
_END_DUE_GRANTS = (
    update(G)
    .where(G.c.id.in_(_DUE.scalar_subquery()), G.c.status == GrantStatus.ACTIVE.value)
    .values(status=GrantStatus.EXPIRED.value, ended_at=_NOW, ended_by="expiry")
    .returning(*G.c)
)
_INSERT_AUDIT = insert(E)
_INSERT_OUTBOX = insert(O)
_QUEUE_REVOCATIONS = (
    update(C)
    .where(C.c.grant_id.in_(bindparam("grant_ids", expanding=True)), C.c.revocation.is_(None))
    .values(revocation=RevocationStatus.PENDING.value, not_before=bindparam("now", type_=C.c.not_before.type))
)
_NEXT_DUE = select(
    select(func.min(G.c.expires_at)).where(G.c.status == GrantStatus.ACTIVE.value).scalar_subquery()
    .label("grant"),
    select(func.min(R.c.expires_at)).where(R.c.status == RequestStatus.PENDING.value).scalar_subquery()
    .label("request"),
    select(func.min(R.c.remind_at)).where(R.c.status == RequestStatus.PENDING.value).scalar_subquery()
    .label("reminder"),
)


async def end_due_grants(conn: AsyncConnection, now: datetime, limit: int) -> list[Row]:
    """End up to ``limit`` active grants whose ``expires_at`` is at or before ``now`` (soonest first): status
    ``expired``, ended by ``expiry`` at ``now``; for each, a ``grant.expired`` audit event and the outbox events
    ``grant.expired`` and ``card.update``; and the revocation of their credential accounts queued. Runs in the
    caller's transaction (``conn``); returns the ended grants' rows as they are now (every ``grants`` column)."""
    rows = (await conn.execute(_END_DUE_GRANTS, {"now": now, "limit": limit})).all()
    if not rows:
        return []
    http_request_id = current_request_id()
    audit, events = [], []
    for row in rows:
        data = {"expires_at": row.expires_at.isoformat()}
        if http_request_id is not None:
            data["http_request_id"] = http_request_id
        audit.append({"at": now, "kind": "grant.expired", "actor": "expiry", "request_id": row.request_id,
                      "grant_id": row.id, "data": data})
        for kind, grant_id in ((EventKind.GRANT_EXPIRED, row.id), (EventKind.CARD_UPDATE, None)):
            events.append({"kind": kind.value, "request_id": row.request_id, "grant_id": grant_id,
                           "created_at": now, "not_before": now, "attempts": 0, "payload": None})
    await conn.execute(_INSERT_AUDIT, audit)
    await conn.execute(_INSERT_OUTBOX, events)
    await conn.execute(_QUEUE_REVOCATIONS, {"grant_ids": [row.id for row in rows], "now": now})
    return rows


async def next_due(conn: AsyncConnection) -> datetime | None:
    """The earliest moment anything becomes due for the sweep: an active grant's ``expires_at``, a pending
    request's deadline or its reminder (None: nothing will). May be in the past (a sweep is behind). Three lookups
    on the ``(status, expires_at)`` and ``(status, remind_at)`` indexes, in one statement."""
    row = (await conn.execute(_NEXT_DUE)).one()
    moments = [moment for moment in row if moment is not None]
    return min(moments) if moments else None
