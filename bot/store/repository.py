"""The SQL store: the domain's ``Store`` port, plus the outbox, audit and replay-protection queries.

Every public method is one transaction; every state change is a conditional UPDATE whose row count tells
whether this caller won (so a double click, a retried payload or a racing replica applies it once).

Several replicas sweep and drain the outbox at the same time, with no leader. Correctness comes from the
conditional UPDATEs alone; on PostgreSQL the sweeps' and the outbox's SELECTs also take ``FOR UPDATE SKIP
LOCKED`` so that replicas split the due rows between them instead of all racing for the same ones (SQLite has
one writer at a time anyway: ``BEGIN IMMEDIATE``, and SQLAlchemy leaves the clause out there).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, exists, false, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.domain.credentials import Account
from bot.domain.models import (
    AccessRequest,
    Approval,
    Backlog,
    AutoApproveQuota,
    Decision,
    EventKind,
    Grant,
    GrantStatus,
    OutboxEvent,
    OutboxItem,
    RequestStatus,
    Tally,
    URGENT_EVENTS,
    Verdict,
    Vote,
    VoteOutcome,
)
from bot.domain.policy import Usage
from bot.logs import current_request_id
from bot.store.credentials import CredentialQueries, credential_values, revocation_backlog
from bot.store.engine import writer
from bot.store.expiry import end_due_grants, next_due
from bot.store.group_commit import GroupCommit, NewRequest, Signature
from bot.store.recent_grants import RecentGrants
from bot.store.outage import database_answers, translate_outages
from bot.store.outbox_channels import notice_of_auto_grant
from bot.store.tables import (
    AccessRequestRow,
    ApprovalRow,
    AuditEventRow,
    GrantRow,
    IdentityScopeRow,
    OutboxRow,
    UsedSignatureRow,
)

R = AccessRequestRow.__table__
S = IdentityScopeRow.__table__
A = ApprovalRow.__table__
G = GrantRow.__table__
O = OutboxRow.__table__  # noqa: E741
U = UsedSignatureRow.__table__
E = AuditEventRow.__table__

# Statements on the hot paths are built once and executed with parameter dicts: SQLAlchemy's compiled cache then
# finds them by an identity-memoised cache key, where a statement rebuilt per call with ``.values(...)`` pays for
# coercing every value into a bind parameter and walking them all to compute its cache key, each time.
_INSERT_GRANT = insert(G)
_INSERT_AUDIT = insert(E)
_INSERT_SCOPE = {"postgresql": pg_insert(S).on_conflict_do_nothing(), "sqlite": sqlite_insert(S).on_conflict_do_nothing()}


_URGENT_KINDS = tuple(kind.value for kind in URGENT_EVENTS)
_COUNT_AUTO_APPROVALS = select(func.count()).select_from(R).where(
    R.c.identity == bindparam("identity"), R.c.rule == bindparam("rule"),
    R.c.decision == Decision.AUTO_APPROVE.value, R.c.created_at > bindparam("since", type_=R.c.created_at.type),
)


def _request_from_row(row) -> AccessRequest:
    return AccessRequest(
        id=row.id,
        identity=row.identity,
        environment=row.environment,
        scopes=tuple(row.scopes),
        ttl_seconds=row.ttl_seconds,
        audience=row.audience,
        reason=row.reason,
        context=dict(row.context),
        status=RequestStatus(row.status),
        decision=Decision(row.decision),
        rule=row.rule,
        decision_reason=row.decision_reason,
        approvers=tuple(row.approvers),
        channel=row.channel,
        created_at=row.created_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        card_channel=row.card_channel,
        card_ts=row.card_ts,
        decision_reasons=tuple(row.decision_reasons),
        approver_groups=tuple(row.approver_groups),
        excluded_approvers=tuple(row.excluded_approvers),
        min_approvals=row.min_approvals,
        deny_on_first_denial=bool(row.deny_on_first_denial),
        actor=row.actor,
        remind_at=row.remind_at,
        denial_reason=row.denial_reason,
        ssh_public_key=row.ssh_public_key,
    )


def _grant_from_row(row) -> Grant:
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


def _audit_row(at: datetime, kind: str, actor: str, request_id: str | None, grant_id: str | None = None,
               **data) -> dict:
    """Parameters of one ``audit_events`` row (always the same keys, so one compiled INSERT serves them all).
    Written while an HTTP request is served, ``data`` names it (``http_request_id``, as in its log lines)."""
    if (http_request_id := current_request_id()) is not None:
        data["http_request_id"] = http_request_id
    return {"at": at, "kind": kind, "actor": actor, "request_id": request_id, "grant_id": grant_id, "data": data}


def _grant_issued_row(grant: Grant, actor: str) -> dict:
    return _audit_row(grant.issued_at, "grant.issued", actor, grant.request_id, grant.id, jti=grant.jti,
                      scope=" ".join(grant.scopes), audience=grant.audience, environment=grant.environment,
                      expires_at=grant.expires_at.isoformat(), ttl_seconds=grant.ttl_seconds)


def _event_values(event: OutboxEvent, now: datetime) -> dict:
    return {"kind": event.kind.value, "request_id": event.request_id, "grant_id": event.grant_id, "created_at": now,
            "not_before": now, "attempts": 0, "payload": event.payload}


def _grant_values(grant: Grant) -> dict:
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
class SqlStore(CredentialQueries):
    """SQLAlchemy Core over the SQLModel tables; works on SQLite (aiosqlite) and PostgreSQL (asyncpg). The
    credential lifecycle's queries are in ``bot.store.credentials``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self.recent_grants = RecentGrants(self.grant_by_jti)
        self._group = GroupCommit(engine)

    # -- events -----------------------------------------------------------------------------------------------

    @staticmethod
    async def _add_events(conn: AsyncConnection, events: list[OutboxEvent], now: datetime) -> None:
        if events:
            await conn.execute(
                insert(O),
                [
                    {
                        "kind": e.kind.value,
                        "request_id": e.request_id,
                        "grant_id": e.grant_id,
                        "created_at": now,
                        "not_before": now,
                        "attempts": 0,
                        "payload": e.payload,
                    }
                    for e in events
                ],
            )

    # -- audit trail: written in the same transaction as the change it records ---------------------------

    @staticmethod
    async def _audit(conn: AsyncConnection, at: datetime, kind: str, actor: str, request_id: str | None,
                     grant_id: str | None = None, **data) -> None:
        await conn.execute(_INSERT_AUDIT, _audit_row(at, kind, actor, request_id, grant_id, **data))

    async def _audit_grant_issued(self, conn: AsyncConnection, grant: Grant, actor: str) -> None:
        await conn.execute(_INSERT_AUDIT, _grant_issued_row(grant, actor))
        await self._remember_scopes(conn, grant)

    @staticmethod
    async def _remember_scopes(conn: AsyncConnection, grant: Grant) -> None:
        # Every issued grant makes its scopes known to the identity (``first_use`` asks people only before that).
        # ON CONFLICT DO NOTHING: two grants of one scope committing at once must not fail each other.
        await conn.execute(_INSERT_SCOPE[conn.dialect.name], [
            {"identity": grant.identity, "scope": scope, "first_granted_at": grant.issued_at}
            for scope in dict.fromkeys(grant.scopes)
        ])

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

    # -- requests ---------------------------------------------------------------------------------------------

    async def find_by_idempotency_key(self, identity: str, key: str) -> tuple[AccessRequest, str] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(R).where(R.c.identity == identity, R.c.idempotency_key == key))
            ).first()
        return (_request_from_row(row), row.body_hash or "") if row else None

    async def insert_request(
        self,
        request: AccessRequest,
        grant: Grant | None,
        events: list[OutboxEvent],
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        quota: AutoApproveQuota | None = None,
        accounts: tuple[Account, ...] = (),
    ) -> bool:
        values = {
            "id": request.id,
            "identity": request.identity,
            "environment": request.environment,
            "scopes": list(request.scopes),
            "ttl_seconds": request.ttl_seconds,
            "audience": request.audience,
            "reason": request.reason,
            "context": request.context,
            "status": request.status.value,
            "decision": request.decision.value,
            "rule": request.rule,
            "decision_reason": request.decision_reason,
            "approvers": list(request.approvers),
            "channel": request.channel,
            "created_at": request.created_at,
            "expires_at": request.expires_at,
            "decided_at": request.decided_at,
            "decided_by": request.decided_by,
            "decision_reasons": list(request.decision_reasons),
            "approver_groups": list(request.approver_groups),
            "excluded_approvers": list(request.excluded_approvers),
            "min_approvals": request.min_approvals,
            "deny_on_first_denial": request.deny_on_first_denial,
            "actor": request.actor,
            "remind_at": request.remind_at,
            "ssh_public_key": request.ssh_public_key,
            "idempotency_key": idempotency_key,
            "body_hash": body_hash,
        }
        at = request.created_at
        audit = [
            _audit_row(at, "request.received", request.identity, request.id,
                       environment=request.environment, scopes=list(request.scopes),
                       ttl_seconds=request.ttl_seconds, audience=request.audience, reason=request.reason,
                       context=request.context),
            _audit_row(at, "policy.decided", "policy", request.id, decision=request.decision.value,
                       rule=request.rule, reason=request.decision_reason, reasons=list(request.decision_reasons)),
        ]
        item = NewRequest(values, None, audit, keyed=idempotency_key is not None,
                          quota=(request.identity, request.rule or "", quota.count, quota.since) if quota else None,
                          events=[_event_values(e, at) for e in events])
        if grant is not None:
            item.grant = _grant_values(grant)
            audit.append(_grant_issued_row(grant, "policy"))
            if grant.delivered_at is not None:
                audit.append(_audit_row(at, "token.handed_over", request.identity, request.id, grant.id))
            item.scopes = [{"identity": grant.identity, "scope": scope, "first_granted_at": grant.issued_at}
                           for scope in dict.fromkeys(grant.scopes)]
            item.accounts = [credential_values(a, at, i) for i, a in enumerate(accounts)]
            audit.extend(_audit_row(at, "credentials.issued", "policy", a.request_id, a.grant_id,
                                    provider=a.provider, provider_kind=a.kind, username=a.username,
                                    params=a.params) for a in accounts)
        # Written with other callers' rows in one transaction (bot.store.group_commit); answered after its commit.
        return await self._group.submit(item)

    @staticmethod
    async def _count_auto_approvals(conn: AsyncConnection, identity: str, rule: str, since: datetime) -> int:
        return (await conn.execute(
            _COUNT_AUTO_APPROVALS, {"identity": identity, "rule": rule, "since": since}
        )).scalar_one()

    async def usage(self, identity: str, rule: str, since: datetime) -> Usage:
        """Automatic approvals of ``identity`` under ``rule`` after ``since``, and the scopes it was ever granted."""
        async with self.engine.connect() as conn:
            count = await self._count_auto_approvals(conn, identity, rule, since)
            known = (await conn.execute(select(S.c.scope).where(S.c.identity == identity))).scalars().all()
        return Usage(recent_auto_approvals=count, known_scopes=frozenset(known))

    async def get_request(self, request_id: str) -> AccessRequest | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(R).where(R.c.id == request_id))).first()
        return _request_from_row(row) if row else None

    async def decide(
        self,
        request_id: str,
        approver: str,
        verdict: Verdict,
        now: datetime,
        resolve: Callable[[Tally], RequestStatus | None],
        grant: Grant | None,
        events: list[OutboxEvent],
        *,
        reason: str | None = None,
        details: dict | None = None,
        resolved_events: list[OutboxEvent] = (),
        accounts: tuple[Account, ...] = (),
    ) -> Vote:
        # ``reason``: the approver's words (a denial's reason), audited and, when this verdict denies the request,
        # kept as its ``denial_reason``; ``details``: extra audit data (an approval's reduced scopes and TTL);
        # ``resolved_events``: queued only when this verdict resolves the request (the thread reply).
        extra = {**({"reason": reason} if reason else {}), **(details or {})}
        async with self._writer.begin() as conn:
            # Lock the request row first (SELECT ... FOR UPDATE). Under PostgreSQL's READ COMMITTED, two
            # transactions that each insert an approval and then count do not see each other's uncommitted row:
            # with N-2 approvals committed, both would count N-1 and neither would approve, leaving the request
            # pending with N approvals. With the lock the second one waits until the first commits; its count is
            # a new statement, so it sees the first approval and resolves the request (or finds it no longer
            # pending). Same-person double clicks are serialised too. SQLite: BEGIN IMMEDIATE already lets one
            # writer in at a time, and SQLAlchemy leaves FOR UPDATE out there.
            row = (
                await conn.execute(
                    select(R.c.status, R.c.expires_at).where(R.c.id == request_id).with_for_update()
                )
            ).first()
            if (
                row is None
                or row.status != RequestStatus.PENDING.value
                or (row.expires_at is not None and row.expires_at <= now)
            ):
                return Vote(VoteOutcome.NOT_PENDING)
            earlier = (
                await conn.execute(select(A.c.verdict).where(A.c.request_id == request_id, A.c.approver == approver))
            ).scalar()
            if earlier is not None:
                return Vote(VoteOutcome.REPEATED, await self._tally(conn, request_id), Verdict(earlier))
            await conn.execute(
                insert(A).values(request_id=request_id, approver=approver, verdict=verdict.value, created_at=now)
            )
            tally = await self._tally(conn, request_id)
            recorded = "request.approval_recorded" if verdict is Verdict.APPROVE else "request.denial_recorded"
            await self._audit(conn, now, recorded, approver, request_id, approvals=tally.approvals,
                              denials=tally.denials, **extra)
            status = resolve(tally)
            if status is not None:
                # Conditional even under the lock: the row count is the proof this transaction resolved it.
                won = await conn.execute(
                    update(R)
                    .where(R.c.id == request_id, R.c.status == RequestStatus.PENDING.value)
                    .values(status=status.value, decided_at=now, decided_by=approver,
                            **({"denial_reason": reason} if status is RequestStatus.DENIED else {}))
                )
                if won.rowcount != 1:  # pragma: no cover - impossible while the row is locked
                    raise RuntimeError(f"request {request_id} changed under its row lock")
                await self._audit(conn, now, f"request.{status.value}", approver, request_id, **extra)
                if status is RequestStatus.APPROVED and grant is not None:
                    await conn.execute(_INSERT_GRANT, _grant_values(grant))
                    await self._audit_grant_issued(conn, grant, approver)
                    await self._insert_accounts(conn, accounts, now, approver)
            await self._add_events(conn, events + (list(resolved_events) if status is not None else []), now)
        return Vote(VoteOutcome.RESOLVED if status is not None else VoteOutcome.COUNTED, tally)

    @staticmethod
    async def _tally(conn: AsyncConnection, request_id: str) -> Tally:
        counts = dict(
            (
                await conn.execute(
                    select(A.c.verdict, func.count()).where(A.c.request_id == request_id).group_by(A.c.verdict)
                )
            ).all()
        )
        return Tally(approvals=counts.get(Verdict.APPROVE.value, 0), denials=counts.get(Verdict.DENY.value, 0))

    async def approvals(self, request_id: str) -> list[Approval]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(A).where(A.c.request_id == request_id).order_by(A.c.created_at, A.c.id))
            ).all()
        return [Approval(row.approver, Verdict(row.verdict), row.created_at) for row in rows]

    async def expire_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Pending requests past their deadline become ``expired`` (decided by "timeout"), each with a
        ``request.expired`` audit event and a ``card.update`` event, once."""
        return await self._sweep_pending(
            now, limit, R.c.expires_at, dict(status=RequestStatus.EXPIRED.value, decided_at=now, decided_by="timeout"),
            "request.expired", "timeout", EventKind.CARD_UPDATE,
        )

    async def remind_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Pending requests whose ``remind_at`` has come: clear it (so each is reminded once) and queue a
        ``request.reminder`` event, in one transaction."""
        return await self._sweep_pending(
            now, limit, R.c.remind_at, dict(remind_at=None), "request.reminded", "reminder", EventKind.REMINDER,
        )

    async def _sweep_pending(self, now: datetime, limit: int, due_column, values: dict, audit_kind: str,
                             actor: str, event: EventKind) -> list[AccessRequest]:
        """Pending requests whose ``due_column`` is at or before ``now``: each gets ``values`` by a conditional
        UPDATE (still pending, still due), an audit event and an outbox ``event``; returns those it changed.
        Rows another replica is sweeping are skipped (``FOR UPDATE SKIP LOCKED``)."""
        changed: list[AccessRequest] = []
        async with self._writer.begin() as conn:
            rows = (
                await conn.execute(
                    select(R)
                    .where(R.c.status == RequestStatus.PENDING.value, due_column <= now)
                    .order_by(due_column)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                won = await conn.execute(
                    update(R)
                    .where(R.c.id == row.id, R.c.status == RequestStatus.PENDING.value, due_column <= now)
                    .values(**values)
                )
                if won.rowcount == 1:
                    await self._audit(conn, now, audit_kind, actor, row.id)
                    await self._add_events(conn, [OutboxEvent(event, row.id)], now)
                    changed.append(_request_from_row(row))
        return changed

    async def set_card(self, request_id: str, channel: str, ts: str) -> None:
        """Remember where the approval card was posted (first post wins)."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(R).where(R.c.id == request_id, R.c.card_ts.is_(None)).values(card_channel=channel, card_ts=ts)
            )

    # -- grants -----------------------------------------------------------------------------------------------

    async def _one_grant(self, *where) -> Grant | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(G).where(*where))).first()
        return _grant_from_row(row) if row else None

    async def ids_starting_with(self, prefix: str, *, grants: bool, limit: int) -> list[str]:
        """Up to ``limit`` request ids (``grants``: grant ids) starting with ``prefix``. A range on the primary key
        (``prefix <= id < prefix + "\uffff"``) rather than LIKE, which SQLite's index cannot serve."""
        column = (G if grants else R).c.id
        async with self.engine.connect() as conn:
            return list((await conn.execute(
                select(column).where(column >= prefix, column < prefix + "\uffff").order_by(column).limit(limit)
            )).scalars())

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
        grant = _grant_from_row(row)
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
        return [_grant_from_row(row) for row in rows]

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
        return [_grant_from_row(row) for row in rows]

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

    async def pending_requests(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests still within their deadline at ``now``, oldest first (at most ``limit``), and how many
        there are in all."""
        where = (R.c.status == RequestStatus.PENDING.value, or_(R.c.expires_at.is_(None), R.c.expires_at > now))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(R).where(*where).order_by(R.c.created_at, R.c.id).limit(limit))).all()
            total = (await conn.execute(select(func.count()).select_from(R).where(*where))).scalar_one()
        return [_request_from_row(row) for row in rows], total

    async def requests_by_id(self, request_ids: list[str]) -> dict[str, AccessRequest]:
        if not request_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(R).where(R.c.id.in_(request_ids)))).all()
        return {row.id: _request_from_row(row) for row in rows}

    # -- replay protection ------------------------------------------------------------------------------------

    async def remember_signature(self, digest: str, expires_at: datetime, now: datetime) -> bool:
        """Record a used HMAC signature or CI token (a digest of its issuer and jti, see ``bot.identity.oidc``);
        False if it was used before and its record is not stale at ``now`` (a replay). One conditional upsert: on
        PostgreSQL a concurrent insert of the same digest waits for the other transaction and then sees its row,
        so exactly one of them gets True, across replicas."""
        return await self._group.submit(Signature(digest, expires_at, now))  # bot.store.group_commit

    async def forget_stale_signatures(self, now: datetime, limit: int = 5000) -> int:
        """Delete used-signature records stale at ``now`` (at most ``limit``, oldest first); returns how many.
        A stale record refuses nothing (``remember_signature`` takes it over), so this only keeps the table small."""
        stale = select(U.c.digest).where(U.c.expires_at < now).order_by(U.c.expires_at).limit(limit)
        async with self._writer.begin() as conn:
            return (await conn.execute(U.delete().where(U.c.digest.in_(stale)))).rowcount

    # -- outbox -----------------------------------------------------------------------------------------------

    async def claim_outbox(
        self,
        now: datetime,
        lease_seconds: float,
        limit: int,
        per_channel: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` due, unsent outbox items: approval cards, their updates and decision replies of
        requests people decide first, then the rest, each oldest first; an item waits while an earlier one of
        the same request is unsent. Notices of auto-approved grants never claimed are left to
        ``OutboxChannels.claim_notices`` (which may fold them into a digest).

        The per-request ordering keeps a card's updates and replies behind its post. The lease (a conditional
        UPDATE of ``locked_until``, ``lease_seconds`` long, counting one more claim in ``attempts``) keeps two
        workers from sending the same item at once.

        ``per_channel``: at most this many items per Slack channel (the card's channel, else the request's),
        counting the ``held`` ones (channel -> items the caller already holds); items for a channel with no room
        are left for a later claim. Items with no channel are not limited. Each item carries its ``channel``.
        """
        earlier = O.alias("earlier")
        blocked = exists().where(
            earlier.c.request_id == O.c.request_id, earlier.c.id < O.c.id, earlier.c.sent_at.is_(None)
        )
        channel = func.coalesce(R.c.card_channel, R.c.channel, O.c.channel)
        urgent = and_(O.c.kind.in_(_URGENT_KINDS), R.c.decision == Decision.REQUIRE_APPROVAL.value)
        held = dict(held or {})
        query = (
            select(O.c.id, O.c.kind, O.c.request_id, O.c.grant_id, O.c.attempts, O.c.failures, O.c.created_at,
                   O.c.payload, channel.label("channel"))
            .select_from(O.outerjoin(R, R.c.id == O.c.request_id))
            .where(
                O.c.sent_at.is_(None),
                O.c.not_before <= now,
                or_(O.c.locked_until.is_(None), O.c.locked_until <= now),
                ~blocked,
                # coalesce: a notice has no request row (NULL), and is not one of these
                ~func.coalesce(and_(notice_of_auto_grant(), O.c.attempts == 0), false()),
            )
            .order_by(case((urgent, 0), else_=1), O.c.id)
            # Without a per-channel cap the first ``limit`` rows are the answer; with one, look further so
            # that a busy channel's backlog does not hide the other channels' items.
            .limit(limit if per_channel is None else limit * max(per_channel, 1) * 4)
            .with_for_update(skip_locked=True, of=O)
        )
        if per_channel is not None:
            full = [c for c, n in held.items() if n >= per_channel]
            if full:
                query = query.where(or_(channel.is_(None), channel.not_in(full)))
        claimed: list[OutboxItem] = []
        async with self._writer.begin() as conn:
            rows = (await conn.execute(query)).all()
            for row in rows:
                if len(claimed) >= limit:
                    break
                if per_channel is not None and row.channel is not None:
                    if held.get(row.channel, 0) >= per_channel:
                        continue
                won = await conn.execute(
                    update(O)
                    .where(
                        O.c.id == row.id,
                        O.c.sent_at.is_(None),
                        or_(O.c.locked_until.is_(None), O.c.locked_until <= now),
                    )
                    .values(locked_until=now + timedelta(seconds=lease_seconds), attempts=O.c.attempts + 1)
                )
                if won.rowcount == 1:
                    if row.channel is not None:
                        held[row.channel] = held.get(row.channel, 0) + 1
                    claimed.append(
                        OutboxItem(row.id, EventKind(row.kind), row.request_id, row.grant_id, row.attempts + 1,
                                   row.created_at, row.payload, row.channel, row.failures)
                    )
        return claimed

    async def add_notice(self, key: str, channel: str | None, text: str, now: datetime, audit_kind: str,
                         payload_extra: dict | None = None, **audit) -> bool:
        """Queue a plain message to ``channel`` (None: the default channel) once per ``key`` across all replicas,
        with an audit event ``audit_kind``; False when a notice with this key was queued before.
        ``payload_extra`` joins the payload (e.g. ``{"summary": ...}`` for the daily summary's builder)."""
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        async with self._writer.begin() as conn:
            inserted = await conn.execute(
                dialect_insert(O).values(
                    kind=EventKind.NOTICE.value, request_id=f"notice:{key[:29]}", created_at=now, not_before=now,
                    attempts=0, payload={"channel": channel, "text": text, **(payload_extra or {})}, dedup_key=key,
                    channel=channel,
                ).on_conflict_do_nothing(index_elements=["dedup_key"])
            )
            if inserted.rowcount != 1:
                return False
            await self._audit(conn, now, audit_kind, "grantbot", None, **audit)
        return True

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

    async def renew_outbox_lease(self, item_id: int, attempts: int, until: datetime) -> bool:
        """Extend the lease of an item this worker claimed (its claim counted ``attempts``) to ``until``; False
        when another worker has claimed it since (its claim counted one more attempt) or it was sent. The claim
        count fences the lease: a worker that kept an item past its lease must not post it too."""
        async with self._writer.begin() as conn:
            renewed = await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None), O.c.attempts == attempts)
                .values(locked_until=until)
            )
        return renewed.rowcount == 1

    async def complete_outbox(self, item_id: int, now: datetime) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(update(O).where(O.c.id == item_id).values(sent_at=now, locked_until=None))

    async def retry_outbox(self, item_id: int, not_before: datetime, error: str, failed: bool = True) -> None:
        """Put a leased item back, due at ``not_before``; ``failed``: the attempt counts as a failure (a 429 does
        not: it is Slack's pacing, not the item's fault)."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None))
                .values(not_before=not_before, locked_until=None, last_error=error[:500],
                        failures=O.c.failures + (1 if failed else 0))
            )

    async def release_outbox(self, item_id: int, not_before: datetime) -> None:
        """Give back a leased item that was not attempted (its worker is stopping, or its channel is paused): it
        is due again at ``not_before`` and the claim's attempt is not counted."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(O)
                .where(O.c.id == item_id, O.c.sent_at.is_(None))
                .values(not_before=not_before, locked_until=None, attempts=O.c.attempts - 1)
            )

    async def answers(self, timeout: float) -> bool:
        """True when the database answers ``SELECT 1`` within ``timeout`` seconds (``database_answers``)."""
        return await database_answers(self.engine, timeout)

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



    # -- App Home (read-only) -----------------------------------------------------------------------------------

    async def pending_requests_to_scan(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests still inside their deadline (``expires_at`` after ``now``, or none), newest first, at
        most ``limit`` (uses the ``status, expires_at`` index); and how many there are in all."""
        where = (R.c.status == RequestStatus.PENDING.value, or_(R.c.expires_at.is_(None), R.c.expires_at > now))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(R).where(*where).order_by(R.c.created_at.desc(), R.c.id.desc()).limit(limit)
            )).all()
            total = len(rows) if len(rows) < limit else (
                await conn.execute(select(func.count()).select_from(R).where(*where))).scalar_one()
        return [_request_from_row(row) for row in rows], total

    async def approvals_of(self, request_ids: list[str]) -> dict[str, list[Approval]]:
        """Every verdict on each of ``request_ids``, oldest first per request (one query); absent ids map to []."""
        found: dict[str, list[Approval]] = {request_id: [] for request_id in request_ids}
        if not request_ids:
            return found
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(A).where(A.c.request_id.in_(request_ids)).order_by(A.c.created_at, A.c.id)
            )).all()
        for row in rows:
            found[row.request_id].append(Approval(row.approver, Verdict(row.verdict), row.created_at))
        return found

    async def active_grants_with_environment(self, now: datetime, limit: int) -> tuple[list[tuple[Grant, str]], int]:
        """Grants active at ``now`` (status active, ``expires_at`` after ``now``), soonest to expire first, at most
        ``limit``, each with its environment; and how many there are in all."""
        live = (G.c.status == GrantStatus.ACTIVE.value, G.c.expires_at > now)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(G).where(*live))).scalar_one()
            rows = (await conn.execute(
                select(G).where(*live).order_by(G.c.expires_at, G.c.id).limit(limit)
            )).all()
        return [(_grant_from_row(row), row.environment) for row in rows], total

    async def recent_decisions(self, limit: int) -> list[tuple[AccessRequest, Grant | None]]:
        """The last ``limit`` requests that went to people (``require_approval``) and are no longer pending —
        approved, denied, timed out — newest decision first, each with its grant (None when there is none)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(R)
                .where(R.c.decision == Decision.REQUIRE_APPROVAL.value, R.c.status != RequestStatus.PENDING.value,
                       R.c.decided_at.is_not(None))
                .order_by(R.c.decided_at.desc(), R.c.id)
                .limit(limit)
            )).all()
            requests = [_request_from_row(row) for row in rows]
            grants = {}
            if requests:
                grant_rows = (await conn.execute(
                    select(G).where(G.c.request_id.in_([r.id for r in requests]))
                )).all()
                grants = {row.request_id: _grant_from_row(row) for row in grant_rows}
        return [(request, grants.get(request.id)) for request in requests]


__all__ = ["SqlStore"]
