"""The expiry sweep: set-based (a batch of due grants ends in one statement, with its audit, outbox and revocation
rows), once across replicas, and scheduled by what falls due next rather than on a fixed interval."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select

from bot.domain.clock import SystemClock
from bot.metrics import Metrics
from bot.scheduler import MIN_GAP_SECONDS, Sweeper
from bot.store.engine import create_engine
from bot.store.repository import SqlStore
from bot.store.schema import upgrade
from bot.store.tables import AccessRequestRow, AuditEventRow, CredentialRow, GrantRow, OutboxRow
from tests.support import eventually

R, G, E, O, C = (row.__table__ for row in (AccessRequestRow, GrantRow, AuditEventRow, OutboxRow, CredentialRow))


def _rows(expires_at: datetime, issued_at: datetime, status: str = "active") -> tuple[dict, dict]:
    """An auto-approved request and its grant, as grantbot writes them."""
    request_id, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
    request = {
        "id": request_id, "identity": "deploy-bot", "environment": "staging", "scopes": ["db:read"],
        "ttl_seconds": 60, "audience": "https://api.acme.example", "reason": "sweep test", "context": {},
        "status": "approved", "decision": "auto_approve", "rule": "staging-read", "decision_reason": "test",
        "decision_reasons": [], "approvers": [], "approver_groups": [], "excluded_approvers": [],
        "min_approvals": 1, "deny_on_first_denial": True, "channel": None, "created_at": issued_at,
        "expires_at": None, "decided_at": issued_at, "decided_by": "policy",
    }
    grant = {
        "id": grant_id, "request_id": request_id, "identity": "deploy-bot", "scopes": ["db:read"],
        "audience": "https://api.acme.example", "environment": "staging", "jti": str(uuid.uuid4()),
        "issued_at": issued_at, "expires_at": expires_at, "status": status, "delivered_at": issued_at,
        "token_hash": "0" * 64, "ended_at": issued_at if status == "revoked" else None,
        "ended_by": "U0APPROVER" if status == "revoked" else None,
    }
    return request, grant


async def _seed(engine, pairs: list[tuple[dict, dict]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(R), [request for request, _ in pairs])
        await conn.execute(insert(G), [grant for _, grant in pairs])


def _credential(grant: dict, username: str, now: datetime) -> dict:
    return {"grant_id": grant["id"], "request_id": grant["request_id"], "position": 0, "provider": "demo",
            "kind": "demo", "username": username, "target": {}, "params": {}, "created_at": now, "attempts": 0}


async def test_the_sweep_ends_exactly_the_due_grants_once_across_replicas(database_url):
    """Two replicas sweep at once in small batches: every grant whose ``expires_at`` is at or before now ends
    exactly once (one ``grant.expired`` audit event, one ``grant.expired`` and one ``card.update`` outbox item, its
    credentials' revocation queued); a grant due a microsecond later and one revoked before stay as they were."""
    engines = [create_engine(database_url) for _ in range(2)]
    await upgrade(engines[0])
    stores = [SqlStore(engine) for engine in engines]
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    issued = now - timedelta(hours=1)
    due = [_rows(now - timedelta(seconds=i), issued) for i in range(40)]  # the first exactly at now
    later = [_rows(now + timedelta(microseconds=1), issued), _rows(now + timedelta(seconds=30), issued)]
    revoked = _rows(now - timedelta(seconds=5), issued, status="revoked")
    try:
        await _seed(engines[0], [*due, *later, revoked])
        async with engines[0].begin() as conn:
            await conn.execute(insert(C), [_credential(due[3][1], "gb_due", issued),
                                           _credential(later[0][1], "gb_later", issued),
                                           _credential(revoked[1], "gb_revoked", issued)])

        async def sweep(store: SqlStore) -> list[str]:
            ended: list[str] = []
            while batch := await store.expire_due_grants(now, 7):
                ended += [grant.id for grant in batch]
            return ended

        first, second = await asyncio.gather(sweep(stores[0]), sweep(stores[1]))
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(grant["id"] for _, grant in due)

        async with engines[1].connect() as conn:
            grants = {row.id: row for row in (await conn.execute(select(G))).all()}
            audit = (await conn.execute(select(E.c.grant_id).where(E.c.kind == "grant.expired"))).scalars().all()
            outbox = (await conn.execute(select(O.c.kind, O.c.request_id, O.c.grant_id))).all()
            credentials = dict((await conn.execute(select(C.c.username, C.c.revocation))).all())
        for _, grant in due:
            row = grants[grant["id"]]
            assert (row.status, row.ended_at, row.ended_by) == ("expired", now, "expiry")
        for _, grant in later:
            assert (grants[grant["id"]].status, grants[grant["id"]].ended_at) == ("active", None)
        assert (grants[revoked[1]["id"]].status, grants[revoked[1]["id"]].ended_by) == ("revoked", "U0APPROVER")
        assert sorted(audit) == sorted(grant["id"] for _, grant in due)
        assert sorted((kind, request_id, grant_id) for kind, request_id, grant_id in outbox) == sorted(
            [("grant.expired", request["id"], grant["id"]) for request, grant in due]
            + [("card.update", request["id"], None) for request, _ in due])
        assert credentials == {"gb_due": "pending", "gb_later": None, "gb_revoked": None}
        # What the sweep waits for next: the grant due a microsecond after now.
        assert await stores[0].next_due() == later[0][1]["expires_at"]
    finally:
        for engine in engines:
            await engine.dispose()


def test_the_next_sweep_is_set_by_what_falls_due_next():
    """The delay to the next sweep, read on an injected clock: at the next due moment, but no sooner than the
    minimum gap after this sweep and no later than the interval (the ceiling)."""
    sweeper = Sweeper(deps=None, metrics=Metrics(), interval_seconds=5.0)
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert sweeper.delay_after(None, now) == 5.0
    assert sweeper.delay_after(now + timedelta(seconds=2.5), now) == 2.5
    assert sweeper.delay_after(now + timedelta(hours=1), now) == 5.0
    assert sweeper.delay_after(now - timedelta(seconds=3), now) == MIN_GAP_SECONDS
    assert sweeper.delay_after(now + timedelta(seconds=MIN_GAP_SECONDS / 2), now) == MIN_GAP_SECONDS
    assert Sweeper(deps=None, metrics=Metrics(), interval_seconds=0.02).delay_after(now, now) == 0.02


@pytest.fixture
def clock() -> SystemClock:
    """The real clock: here the sweep's timing itself is under test."""
    return SystemClock()


async def test_a_sweep_comes_when_a_grant_expires_not_at_the_interval(start_grantbot, clock):
    """With a 120 s interval, a grant still ends as it expires: one in the database when a replica starts (that
    replica's first sweep saw when it falls due), and one issued by a replica (it brings its sweep forward)."""
    first = await start_grantbot(sweep_interval_seconds=120)
    pair = _rows(clock.now() + timedelta(seconds=1), clock.now())
    await _seed(first.engine, [pair])
    await start_grantbot(sweep_interval_seconds=120)  # its first sweep finds the grant due in a second

    async def status(engine, grant_id: str) -> str:
        async with engine.connect() as conn:
            return (await conn.execute(select(G.c.status).where(G.c.id == grant_id))).scalar_one()

    await eventually(lambda: _is(status(first.engine, pair[1]["id"]), "expired"))

    code, answer = await first.api.request_access(
        {"scopes": ["db:read"], "environment": "staging", "ttl_seconds": 1, "reason": "a short one"})
    assert code == 201, answer
    await eventually(lambda: _is(status(first.engine, answer["grant"]["id"]), "expired"))


async def _is(value, expected) -> bool:
    return await value == expected
