"""The audit trail's table: rows written in the transaction of the change they record (append-only,
enforced by the database), and read back for ``grantbot audit export``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.logs import current_request_id
from bot.store.outage import translate_outages
from bot.store.tables import AuditEventRow

E = AuditEventRow.__table__

# Statements on the hot paths are built once and executed with parameter dicts: SQLAlchemy's compiled cache then
# finds them by an identity-memoised cache key, where a statement rebuilt per call with ``.values(...)`` pays for
# coercing every value into a bind parameter and walking them all to compute its cache key, each time.
INSERT_AUDIT = insert(E)


def audit_row(at: datetime, kind: str, actor: str, request_id: str | None, grant_id: str | None = None,
              **data) -> dict:
    """Parameters of one ``audit_events`` row (always the same keys, so one compiled INSERT serves them all).
    Written while an HTTP request is served, ``data`` names it (``http_request_id``, as in its log lines)."""
    if (http_request_id := current_request_id()) is not None:
        data["http_request_id"] = http_request_id
    return {"at": at, "kind": kind, "actor": actor, "request_id": request_id, "grant_id": grant_id, "data": data}


@translate_outages
class AuditTrail:
    """Mixed into ``SqlStore``: writes audit rows inside its callers' transactions, and reads them back."""

    @staticmethod
    async def _audit(conn: AsyncConnection, at: datetime, kind: str, actor: str, request_id: str | None,
                     grant_id: str | None = None, **data) -> None:
        await conn.execute(INSERT_AUDIT, audit_row(at, kind, actor, request_id, grant_id, **data))

    async def audit_events(self, since: datetime | None = None, after_id: int = 0, limit: int = 1000) -> list[dict]:
        """Audit events in the order they happened (by id), as JSON-ready dicts; for ``grantbot audit export``."""
        query = select(E).where(E.c.id > after_id).order_by(E.c.id).limit(limit)
        if since is not None:
            query = query.where(E.c.at >= since)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {"id": r.id, "at": r.at.isoformat().replace("+00:00", "Z"), "kind": r.kind, "actor": r.actor,
             "request_id": r.request_id, "grant_id": r.grant_id, **({"data": r.data} if r.data else {})}
            for r in rows
        ]

    async def has_history_before(self, moment: datetime) -> bool:
        """True when an audit event was recorded at or before ``moment`` (one indexed probe)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(select(E.c.id).where(E.c.at <= moment).limit(1))).first() is not None
