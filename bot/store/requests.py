"""Access requests and their approvals: inserted with the policy's decision (and, when auto-approved, the
grant) in one transaction; verdicts counted under the request's row lock; pending requests timed out and
reminded by the sweep; the read models of `/access` and the App Home."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain.credentials import Account
from bot.domain.models import (
    AccessRequest,
    Approval,
    AutoApproveQuota,
    Decision,
    EventKind,
    Grant,
    OutboxEvent,
    RequestStatus,
    Tally,
    UnrecordedSignature,
    Verdict,
    Vote,
    VoteOutcome,
)
from bot.domain.policy import Usage
from bot.store.audit import audit_row
from bot.store.credentials import credential_values
from bot.store.grants import INSERT_GRANT, grant_from_row, grant_issued_row, grant_values
from bot.store.group_commit import NewRequest, Signature
from bot.store.outbox import event_values
from bot.store.outage import translate_outages
from bot.store.tables import AccessRequestRow, ApprovalRow, GrantRow, IdentityScopeRow

R = AccessRequestRow.__table__
S = IdentityScopeRow.__table__
A = ApprovalRow.__table__
G = GrantRow.__table__

# Statements on the hot paths are built once and executed with parameter dicts: SQLAlchemy's compiled cache then
# finds them by an identity-memoised cache key, where a statement rebuilt per call with ``.values(...)`` pays for
# coercing every value into a bind parameter and walking them all to compute its cache key, each time.
_COUNT_AUTO_APPROVALS = select(func.count()).select_from(R).where(
    R.c.identity == bindparam("identity"), R.c.rule == bindparam("rule"),
    R.c.decision == Decision.AUTO_APPROVE.value, R.c.created_at > bindparam("since", type_=R.c.created_at.type),
)


def request_from_row(row) -> AccessRequest:
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


@translate_outages
class RequestQueries:
    """Mixed into ``SqlStore`` (its ``engine``, ``_writer``, ``_audit``, ``_add_events``, the grants' and the
    credentials' helpers)."""

    async def find_by_idempotency_key(self, identity: str, key: str) -> tuple[AccessRequest, str] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(R).where(R.c.identity == identity, R.c.idempotency_key == key))
            ).first()
        return (request_from_row(row), row.body_hash or "") if row else None

    async def insert_request(
        self,
        request: AccessRequest,
        grant: Grant | None,
        events: list[OutboxEvent],
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        quota: AutoApproveQuota | None = None,
        accounts: tuple[Account, ...] = (),
        signature: UnrecordedSignature | None = None,
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
            audit_row(at, "request.received", request.identity, request.id,
                      environment=request.environment, scopes=list(request.scopes),
                      ttl_seconds=request.ttl_seconds, audience=request.audience, reason=request.reason,
                      context=request.context),
            audit_row(at, "policy.decided", "policy", request.id, decision=request.decision.value,
                      rule=request.rule, reason=request.decision_reason, reasons=list(request.decision_reasons)),
        ]
        item = NewRequest(values, None, audit, keyed=idempotency_key is not None,
                          quota=(request.identity, request.rule or "", quota.count, quota.since) if quota else None,
                          events=[event_values(e, at) for e in events],
                          signature=Signature(signature.digest, signature.expires_at, signature.now)
                          if signature is not None else None)
        if grant is not None:
            # The grant row after its request, then the audit rows in their order (grant.issued, token.handed_over,
            # credentials.issued), the identity's scopes and the accounts: as one transaction per request wrote them.
            item.grant = grant_values(grant)
            audit.append(grant_issued_row(grant, "policy"))
            if grant.delivered_at is not None:
                audit.append(audit_row(at, "token.handed_over", request.identity, request.id, grant.id))
            item.scopes = [{"identity": grant.identity, "scope": scope, "first_granted_at": grant.issued_at}
                           for scope in dict.fromkeys(grant.scopes)]
            item.accounts = [credential_values(a, at, i) for i, a in enumerate(accounts)]
            audit.extend(audit_row(at, "credentials.issued", "policy", a.request_id, a.grant_id,
                                   provider=a.provider, provider_kind=a.kind, username=a.username, params=a.params)
                         for a in accounts)
        # Written with other callers' rows in one transaction (bot.store.group_commit); answered after its commit,
        # False when the Idempotency-Key is taken; AutoApproveLimitReached when the rule's limit is used up,
        # SignatureReplayed when its signature was used before.
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
        return request_from_row(row) if row else None

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
                    await conn.execute(INSERT_GRANT, grant_values(grant))
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

    async def cancel_request(self, request_id: str, identity: str, now: datetime) -> bool:
        """``identity``'s pending request becomes ``cancelled`` (decided by that identity at ``now``), with a
        ``request.cancelled`` audit event and a ``card.update`` event, in one transaction, by one conditional
        UPDATE: False when it was not pending any more (decided, expired or cancelled: nothing is written)."""
        async with self._writer.begin() as conn:
            won = await conn.execute(
                update(R)
                .where(R.c.id == request_id, R.c.identity == identity, R.c.status == RequestStatus.PENDING.value)
                .values(status=RequestStatus.CANCELLED.value, decided_at=now, decided_by=identity)
            )
            if won.rowcount != 1:
                return False
            await self._audit(conn, now, "request.cancelled", identity, request_id)
            await self._add_events(conn, [OutboxEvent(EventKind.CARD_UPDATE, request_id)], now)
        return True

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
                    changed.append(request_from_row(row))
        return changed

    async def set_card(self, request_id: str, channel: str, ts: str) -> None:
        """Remember where the approval card was posted (first post wins)."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(R).where(R.c.id == request_id, R.c.card_ts.is_(None)).values(card_channel=channel, card_ts=ts)
            )

    async def pending_requests(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests still within their deadline at ``now``, oldest first (at most ``limit``), and how many
        there are in all."""
        where = (R.c.status == RequestStatus.PENDING.value, or_(R.c.expires_at.is_(None), R.c.expires_at > now))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(R).where(*where).order_by(R.c.created_at, R.c.id).limit(limit))).all()
            total = (await conn.execute(select(func.count()).select_from(R).where(*where))).scalar_one()
        return [request_from_row(row) for row in rows], total

    async def requests_by_id(self, request_ids: list[str]) -> dict[str, AccessRequest]:
        if not request_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(R).where(R.c.id.in_(request_ids)))).all()
        return {row.id: request_from_row(row) for row in rows}

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
        return [request_from_row(row) for row in rows], total

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
            requests = [request_from_row(row) for row in rows]
            grants = {}
            if requests:
                grant_rows = (await conn.execute(
                    select(G).where(G.c.request_id.in_([r.id for r in requests]))
                )).all()
                grants = {row.request_id: grant_from_row(row) for row in grant_rows}
        return [(request, grants.get(request.id)) for request in requests]
