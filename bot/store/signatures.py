"""Replay records: the digests of used HMAC signatures and CI tokens, each kept until it could no longer be
accepted anyway, so that a signed request or a CI token is accepted once across all replicas."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot.store.outage import translate_outages
from bot.store.tables import UsedSignatureRow

U = UsedSignatureRow.__table__


def _remember_signature_statement(dialect_insert):
    """Record a used signature, or take over its row when that one is stale (``expires_at`` before ``:now``); a
    fresh row makes this a no-op (rowcount 0: a replay). One statement instead of deleting every stale row first,
    with the same outcome: the stale rows themselves are deleted by the sweep (``forget_stale_signatures``)."""
    statement = dialect_insert(U).values(
        digest=bindparam("digest"), expires_at=bindparam("expires_at", type_=U.c.expires_at.type)
    )
    return statement.on_conflict_do_update(
        index_elements=[U.c.digest],
        set_={"expires_at": statement.excluded.expires_at},
        where=U.c.expires_at < bindparam("now", type_=U.c.expires_at.type),
    )


_REMEMBER_SIGNATURE = {"postgresql": _remember_signature_statement(pg_insert),
                       "sqlite": _remember_signature_statement(sqlite_insert)}


@translate_outages
class ReplayRecords:
    """Mixed into ``SqlStore`` (its ``_writer``)."""

    async def remember_signature(self, digest: str, expires_at: datetime, now: datetime) -> bool:
        """Record a used HMAC signature or CI token (a digest of its issuer and jti, see ``bot.identity.oidc``);
        False if it was used before and its record is not stale at ``now`` (a replay). One conditional upsert: on
        PostgreSQL a concurrent insert of the same digest waits for the other transaction and then sees its row,
        so exactly one of them gets True, across replicas."""
        async with self._writer.begin() as conn:
            result = await conn.execute(
                _REMEMBER_SIGNATURE[conn.dialect.name], {"digest": digest, "expires_at": expires_at, "now": now}
            )
        return result.rowcount == 1

    async def forget_stale_signatures(self, now: datetime, limit: int = 5000) -> int:
        """Delete used-signature records stale at ``now`` (at most ``limit``, oldest first); returns how many.
        A stale record refuses nothing (``remember_signature`` takes it over), so this only keeps the table small."""
        stale = select(U.c.digest).where(U.c.expires_at < now).order_by(U.c.expires_at).limit(limit)
        async with self._writer.begin() as conn:
            return (await conn.execute(U.delete().where(U.c.digest.in_(stale)))).rowcount
