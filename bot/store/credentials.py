"""The SQL of the credential lifecycle (``bot.domain.ports.CredentialStore``): the accounts providers made for each
grant, the hand-over lease on a grant, and revocations as a durable job table leased like the outbox.

A revocation is queued in the transaction that ends its grant (``queue_revocations``, called by every path that
ends one), claimed by a conditional UPDATE that counts an attempt and a claim and sets a lease, and finished,
retried, failed or renewed by conditional UPDATEs fenced by that claim count (which, unlike the attempts a requeue
by hand starts again, never repeats): a worker whose lease ran out and was claimed again changes nothing, so across
replicas each revocation's outcome (and its Slack message) is recorded once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain.credentials import Account, CredentialState, RevocationJob, RevocationStatus, RevokedCertificate
from bot.domain.models import EventKind, GrantStatus, OutboxEvent
from bot.store.outage import translate_outages
from bot.store.tables import AccessRequestRow, CredentialRow, GrantRow

C = CredentialRow.__table__
G = GrantRow.__table__
R = AccessRequestRow.__table__
# The grant an account is for, joined by the revocation claim (whose own condition looks at G apart from it).
GJ = G.alias("grant_of_account")

_INSERT_CREDENTIAL = insert(C)
_QUEUE = (
    update(C)
    .where(C.c.grant_id == bindparam("g_id"), C.c.revocation.is_(None))
    .values(revocation=RevocationStatus.PENDING.value, not_before=bindparam("now", type_=C.c.not_before.type))
)


async def revocation_backlog(conn: AsyncConnection) -> dict[str, int]:
    """How many revocations are pending and how many failed, across all replicas (``SqlStore.backlog``)."""
    rows = (await conn.execute(
        select(C.c.revocation, func.count())
        .where(C.c.revocation.in_([RevocationStatus.PENDING.value, RevocationStatus.FAILED.value]))
        .group_by(C.c.revocation))).all()
    counts = dict(rows)
    return {"revocations_pending": counts.get(RevocationStatus.PENDING.value, 0),
            "revocations_failed": counts.get(RevocationStatus.FAILED.value, 0)}


def credential_values(account: Account, now: datetime, position: int) -> dict:
    return {
        "grant_id": account.grant_id, "request_id": account.request_id, "position": position,
        "provider": account.provider, "kind": account.kind, "username": account.username,
        "target": account.target, "params": account.params, "created_at": now, "revocation": None,
        "attempts": 0, "claims": 0, "not_before": None, "locked_until": None, "last_error": None, "detail": None,
        "revoked_at": None,
    }


def _state(row) -> CredentialState:
    detail = None
    if row.revocation == RevocationStatus.VERIFIED.value:
        detail = (row.detail or {}).get("summary")
    elif row.revocation is not None and row.last_error:
        detail = (f"attempt {row.attempts} failed: " if row.revocation == RevocationStatus.PENDING.value else "") + \
            row.last_error
    return CredentialState(row.provider, row.kind, row.username,
                           RevocationStatus(row.revocation) if row.revocation else None, detail, row.attempts)


def _account(row, expires_at: datetime) -> Account:
    """An account from a ``credentials`` row joined with its grant (``identity``, ``environment``, ``scopes``,
    ``issued_at``) and, where selected, its request's ``ssh_public_key``; an orphan's grant fields are None."""
    return Account(row.grant_id, row.provider, row.kind, row.username, expires_at, dict(row.params),
                   dict(row.target), row.request_id, row.identity, row.environment, tuple(row.scopes or ()),
                   row.issued_at, getattr(row, "ssh_public_key", None))


@translate_outages
class CredentialQueries:
    """Mixed into ``SqlStore`` (its ``engine``, ``_writer``, ``_audit`` and ``_add_events``)."""

    # -- written with the grant -------------------------------------------------------------------------------

    async def _insert_accounts(self, conn: AsyncConnection, accounts: tuple[Account, ...], now: datetime,
                               actor: str) -> None:
        """Record the accounts made for a grant, in the transaction that inserts the grant (never a secret)."""
        if not accounts:
            return
        await conn.execute(_INSERT_CREDENTIAL, [credential_values(a, now, i) for i, a in enumerate(accounts)])
        for account in accounts:
            await self._audit(conn, now, "credentials.issued", actor, account.request_id, account.grant_id,
                              provider=account.provider, provider_kind=account.kind, username=account.username,
                              params=account.params)

    @staticmethod
    async def queue_revocations(conn: AsyncConnection, grant_ids: list[str], now: datetime) -> None:
        """Queue the revocation of every account of ``grant_ids``, in the transaction that ends those grants."""
        if grant_ids:
            await conn.execute(_QUEUE, [{"g_id": grant_id, "now": now} for grant_id in grant_ids])

    async def note_credentials_unavailable(self, request_id: str, approver: str, provider: str | None, detail: str,
                                           now: datetime) -> None:
        """An approval could not make its grant's credentials (it was not recorded): audit it, and queue a thread
        reply under the card saying why."""
        async with self._writer.begin() as conn:
            await self._audit(conn, now, "credentials.unavailable", approver, request_id, provider=provider,
                              detail=detail[:500])
            await self._add_events(conn, [OutboxEvent(EventKind.CREDENTIALS_UNAVAILABLE, request_id, payload={
                "by_user": approver, "provider": provider, "detail": detail[:500]})], now)

    # -- reads ------------------------------------------------------------------------------------------------

    async def credential_accounts(self, grant_id: str) -> list[Account]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(C, G.c.expires_at.label("expires_at"), G.c.identity, G.c.environment, G.c.scopes,
                       G.c.issued_at, R.c.ssh_public_key)
                .join(G, G.c.id == C.c.grant_id).outerjoin(R, R.c.id == G.c.request_id)
                .where(C.c.grant_id == grant_id).order_by(C.c.position)
            )).all()
        return [_account(row, row.expires_at) for row in rows]

    async def credential_states(self, grant_id: str) -> list[CredentialState]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(C).where(C.c.grant_id == grant_id).order_by(C.c.position))).all()
        return [_state(row) for row in rows]

    async def credential_by_username(self, provider: str, username: str) -> CredentialState | None:
        """The account named ``username`` that ``provider`` made, or one of that name any provider made (two
        providers sharing a database and a prefix see each other's roles: the record is the one to follow)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(C).where(C.c.username == username))).all()
        row = next((r for r in rows if r.provider == provider), rows[0] if rows else None)
        return _state(row) if row is not None else None

    async def revoked_certificates(self, provider: str, since: datetime) -> list[RevokedCertificate]:
        """``bot.domain.ports.RevokedCertificates``: the accounts of ``provider`` whose grant ended (a revocation
        queued, verified or failed) and whose grant's expiry, the certificate's own, is after ``since``."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(C.c.username, C.c.grant_id, G.c.expires_at).join(G, G.c.id == C.c.grant_id)
                .where(C.c.provider == provider, C.c.revocation.is_not(None), G.c.expires_at > since)
                .order_by(G.c.expires_at, C.c.id)
            )).all()
        return [RevokedCertificate(row.username, row.grant_id, row.expires_at) for row in rows]

    async def failed_revocations(self, limit: int) -> list[tuple[str, CredentialState]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(C).where(C.c.revocation == RevocationStatus.FAILED.value)
                .order_by(C.c.revoked_at.desc(), C.c.id.desc()).limit(limit)
            )).all()
        return [(row.grant_id, _state(row)) for row in rows]

    # -- the hand-over lease ----------------------------------------------------------------------------------

    async def claim_hand_over(self, grant_id: str, now: datetime, until: datetime, *, undelivered: bool) -> bool:
        conditions = [G.c.id == grant_id, G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now,
                      or_(G.c.handover_until.is_(None), G.c.handover_until <= now)]
        if undelivered:
            conditions.append(G.c.delivered_at.is_(None))
        async with self._writer.begin() as conn:
            won = await conn.execute(update(G).where(*conditions).values(handover_until=until))
        return won.rowcount == 1

    async def release_hand_over(self, grant_id: str) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(update(G).where(G.c.id == grant_id).values(handover_until=None))

    # -- the revocation jobs ----------------------------------------------------------------------------------

    async def claim_revocations(self, now: datetime, lease_seconds: float, limit: int) -> list[RevocationJob]:
        # A grant whose credentials are being handed over (its lease in the future) waits: the hand-over may be
        # making the account again, and must finish before the revocation removes it.
        handing_over = select(G.c.id).where(G.c.id == C.c.grant_id, G.c.handover_until > now).exists()
        free = or_(C.c.locked_until.is_(None), C.c.locked_until <= now)
        query = (
            select(C.c.id, C.c.params, GJ.c.identity, GJ.c.environment, GJ.c.scopes, GJ.c.issued_at,
                   GJ.c.expires_at)
            .select_from(C.outerjoin(GJ, GJ.c.id == C.c.grant_id))
            .where(C.c.revocation == RevocationStatus.PENDING.value, C.c.not_before <= now, free, ~handing_over)
            .order_by(C.c.not_before, C.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=C)
        )
        claimed: list[RevocationJob] = []
        async with self._writer.begin() as conn:
            for due in (await conn.execute(query)).all():
                won = (await conn.execute(
                    update(C)
                    .where(C.c.id == due.id, C.c.revocation == RevocationStatus.PENDING.value, free)
                    .values(locked_until=now + timedelta(seconds=lease_seconds), attempts=C.c.attempts + 1,
                            claims=C.c.claims + 1)
                    .returning(C.c.grant_id, C.c.request_id, C.c.provider, C.c.kind, C.c.username, C.c.target,
                               C.c.attempts, C.c.claims)
                )).first()
                if won is not None:
                    account = Account(won.grant_id, won.provider, won.kind, won.username, due.expires_at or now,
                                      dict(due.params), dict(won.target), won.request_id, due.identity,
                                      due.environment, tuple(due.scopes or ()), due.issued_at)
                    claimed.append(RevocationJob(due.id, account, won.attempts, won.claims))
        return claimed

    async def held_revocations(self, now: datetime) -> tuple[int, datetime | None]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(func.count(), func.max(C.c.locked_until))
                .where(C.c.revocation == RevocationStatus.PENDING.value, C.c.locked_until > now))).one()
        return row[0], row[1]

    @staticmethod
    def _held(job: RevocationJob):
        return and_(C.c.id == job.id, C.c.revocation == RevocationStatus.PENDING.value, C.c.claims == job.claim)

    async def renew_revocations(self, jobs: list[RevocationJob], until: datetime) -> int:
        return await self._set_leases(jobs, {"locked_until": until})

    async def release_revocations(self, jobs: list[RevocationJob]) -> int:
        # The attempt was cut off (a shutdown, Ctrl-C), not failed: it goes back too, so that a rolling deploy
        # does not use up the retry budget. The claim count, which fences outcomes, still never goes back.
        return await self._set_leases(jobs, {"locked_until": None,
                                             "attempts": case((C.c.attempts > 0, C.c.attempts - 1), else_=0)})

    async def _set_leases(self, jobs: list[RevocationJob], values: dict) -> int:
        """Apply ``values`` (the lease, and on release the attempt) to each of ``jobs`` still held by its claim;
        how many were."""
        async with self._writer.begin() as conn:
            changed = 0
            for job in jobs:  # a round's batch at most (20): one statement each, fenced like the rest
                changed += (await conn.execute(
                    update(C).where(self._held(job), C.c.locked_until.is_not(None)).values(**values)
                )).rowcount
        return changed

    async def finish_revocation(self, job: RevocationJob, now: datetime, detail: dict,
                                events: list[OutboxEvent]) -> bool:
        async with self._writer.begin() as conn:
            won = await conn.execute(update(C).where(self._held(job)).values(
                revocation=RevocationStatus.VERIFIED.value, detail=detail, revoked_at=now, locked_until=None,
                last_error=None))
            if won.rowcount != 1:
                return False
            await self._audit(conn, now, "credentials.revoked", "revocation", job.request_id, job.grant_id,
                              provider=job.provider, username=job.username, attempts=job.attempts, claims=job.claim,
                              **detail)
            await self._add_events(conn, events, now)
        return True

    async def retry_revocation(self, job: RevocationJob, not_before: datetime, error: str) -> bool:
        async with self._writer.begin() as conn:
            won = await conn.execute(update(C).where(self._held(job)).values(
                not_before=not_before, locked_until=None, last_error=error[:500]))
        return won.rowcount == 1

    async def fail_revocation(self, job: RevocationJob, now: datetime, error: str, events: list[OutboxEvent]) -> bool:
        async with self._writer.begin() as conn:
            won = await conn.execute(update(C).where(self._held(job)).values(
                revocation=RevocationStatus.FAILED.value, revoked_at=now, locked_until=None, last_error=error[:500]))
            if won.rowcount != 1:
                return False
            await self._audit(conn, now, "credentials.revocation_failed", "revocation", job.request_id, job.grant_id,
                              provider=job.provider, username=job.username, attempts=job.attempts,
                              claims=job.claim, error=error[:500])
            await self._add_events(conn, events, now)
        return True

    async def requeue_revocations(self, now: datetime, *, grant_id: str | None = None, failed: bool = False,
                                  provider: str | None = None, username: str | None = None) -> int:
        finished = C.c.revocation.in_([RevocationStatus.VERIFIED.value, RevocationStatus.FAILED.value])
        if grant_id is not None:
            where = [C.c.grant_id == grant_id, finished]
        elif failed:  # by hand: the failed ones, and those waiting for their next retry
            where = [or_(C.c.revocation == RevocationStatus.FAILED.value,
                         and_(C.c.revocation == RevocationStatus.PENDING.value, C.c.not_before > now))]
        elif provider is not None and username is not None:
            where = [C.c.provider == provider, C.c.username == username, finished]
        else:
            raise ValueError("say which revocations to queue again")
        async with self._writer.begin() as conn:
            done = await conn.execute(update(C).where(*where).values(
                revocation=RevocationStatus.PENDING.value, not_before=now, locked_until=None, attempts=0,
                revoked_at=None))
            if done.rowcount:
                await self._audit(conn, now, "credentials.requeued", "reconciliation", None, grant_id,
                                  count=done.rowcount, failed=failed, provider=provider, username=username)
        return done.rowcount

    async def record_orphan(self, account: Account, now: datetime) -> bool:
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        values = {**credential_values(account, now, 0), "revocation": RevocationStatus.PENDING.value,
                  "not_before": now}
        async with self._writer.begin() as conn:
            inserted = await conn.execute(
                dialect_insert(C).values(**values).on_conflict_do_nothing(index_elements=["provider", "username"]))
            if inserted.rowcount != 1:
                return False
            await self._audit(conn, now, "credentials.orphan_found", "reconciliation", account.request_id,
                              account.grant_id, provider=account.provider, username=account.username)
        return True
