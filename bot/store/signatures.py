"""Replay records: the digests of used HMAC signatures and CI tokens, each kept until it could no longer be
accepted anyway, so that a signed request or a CI token is accepted once across all replicas."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from bot.store.group_commit import Signature
from bot.store.outage import translate_outages
from bot.store.tables import UsedSignatureRow

U = UsedSignatureRow.__table__


@translate_outages
class ReplayRecords:
    """Mixed into ``SqlStore`` (its ``_writer`` and ``_group``)."""

    async def remember_signature(self, digest: str, expires_at: datetime, now: datetime) -> bool:
        """Record a used HMAC signature or CI token (a digest of its issuer and jti, see ``bot.identity.oidc``);
        False if it was used before and its record is not stale at ``now`` (a replay). One conditional upsert: on
        PostgreSQL a concurrent insert of the same digest waits for the other transaction and then sees its row,
        so exactly one of them gets True, across replicas (and within a group: the first item with the digest)."""
        # Written with other callers' writes in one transaction (bot.store.group_commit), answered after its commit.
        return await self._group.submit(Signature(digest, expires_at, now))

    async def forget_stale_signatures(self, now: datetime, limit: int = 5000) -> int:
        """Delete used-signature records stale at ``now`` (at most ``limit``, oldest first); returns how many.
        A stale record refuses nothing (``remember_signature`` takes it over), so this only keeps the table small."""
        stale = select(U.c.digest).where(U.c.expires_at < now).order_by(U.c.expires_at).limit(limit)
        async with self._writer.begin() as conn:
            return (await conn.execute(U.delete().where(U.c.digest.in_(stale)))).rowcount
