"""Grouped commits on the request path (bot/store/group_commit.py): callers writing at the same moment share one
transaction, yet each keeps the guarantees of a transaction of its own — one request per Idempotency-Key, exact
auto-approve quotas, a signature accepted once, the audit rows with the change — and a failing item is answered
alone while the others are written."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.domain.errors import AutoApproveLimitReached
from bot.domain.models import AccessRequest, AutoApproveQuota, Decision, RequestStatus
from bot.domain.usecases.request_access import new_grant
from bot.store.engine import create_engine
from bot.store.repository import SqlStore
from bot.store.tables import AccessRequestRow, AuditEventRow, GrantRow

R, E, G = AccessRequestRow.__table__, AuditEventRow.__table__, GrantRow.__table__
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _auto_approved(identity: str = "deploy-bot", rule: str = "staging-read") -> AccessRequest:
    return AccessRequest(
        id=str(uuid.uuid4()), identity=identity, environment="staging", scopes=("db:read",), ttl_seconds=600,
        audience="https://api.acme.example", reason="group test", context={}, status=RequestStatus.APPROVED,
        decision=Decision.AUTO_APPROVE, rule=rule, decision_reason="test", approvers=(), channel=None,
        created_at=NOW, expires_at=None, decided_at=NOW, decided_by="policy",
    )


async def test_one_group_keeps_each_callers_guarantees_and_answers_a_failing_item_alone(store):
    taken = _auto_approved()
    assert await store.insert_request(taken, new_grant(taken, NOW), [], "key-taken", "hash")
    quota = AutoApproveQuota(count=2, since=NOW - timedelta(hours=1))
    limited = [_auto_approved(rule="limited") for _ in range(5)]
    same_key = [_auto_approved() for _ in range(2)]
    plain = [_auto_approved() for _ in range(3)]
    again = _auto_approved()

    def insert(request, key=None, quota=None):
        return store.insert_request(request, new_grant(request, NOW), [], key, "hash", quota=quota)

    # Issued together, so that they queue behind one another and are written in as few groups as the store likes.
    answers = await asyncio.gather(
        *(insert(request, quota=quota) for request in limited),
        *(insert(request, key="key-shared") for request in same_key),
        insert(again, key="key-taken"),
        *(insert(request) for request in plain),
        *(store.remember_signature(digest, NOW + timedelta(minutes=10), NOW) for digest in ["a" * 64] * 3 + ["b" * 64]),
        return_exceptions=True,
    )
    limited_answers, answers = answers[:5], answers[5:]
    assert sorted(map(repr, limited_answers)) == sorted(
        [repr(True)] * 2 + [repr(AutoApproveLimitReached(2))] * 3)
    assert all(a is True or isinstance(a, AutoApproveLimitReached) for a in limited_answers)
    key_answers, answers = answers[:2], answers[2:]
    assert sorted(key_answers) == [False, True]  # one request per Idempotency-Key
    assert answers[0] is False  # the key was taken before: answered alone
    assert answers[1:4] == [True, True, True]  # the rest of the group is written
    assert sorted(answers[4:7]) == [False, False, True] and answers[7] is True  # a signature is accepted once

    async with store.engine.connect() as conn:
        inserted = set((await conn.execute(select(R.c.id))).scalars())
        grants = set((await conn.execute(select(G.c.request_id))).scalars())
        audited = dict((await conn.execute(
            select(E.c.request_id, func.count()).where(E.c.kind == "grant.issued").group_by(E.c.request_id))).all())
        received = dict((await conn.execute(
            select(E.c.request_id, func.count()).where(E.c.kind == "request.received")
            .group_by(E.c.request_id))).all())
    written = {taken.id} | {r.id for r, a in zip(limited, limited_answers) if a is True} | {
        r.id for r, a in zip(same_key, key_answers) if a} | {r.id for r in plain}
    assert inserted == grants == written
    assert audited == received == {request_id: 1 for request_id in written}  # audit rows with their change, once


async def test_a_caller_cancelled_mid_group_leaves_the_group_alone(store, caplog):
    """A caller that goes away (cancelled) while its item waits in a group: the others are answered, its own rows
    are written all the same (the writer is a task of its own), and nothing is logged as an error."""
    requests = [_auto_approved() for _ in range(6)]
    callers = [asyncio.create_task(store.insert_request(r, new_grant(r, NOW), [], None, "hash")) for r in requests]
    await asyncio.sleep(0)  # every item is queued and a writer is on its way
    callers[2].cancel()
    answers = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(answers[2], asyncio.CancelledError)
    assert [a for i, a in enumerate(answers) if i != 2] == [True] * 5

    async def written() -> set[str]:
        async with store.engine.connect() as conn:
            return set((await conn.execute(select(R.c.id))).scalars())
    assert {r.id for r in requests} <= await written()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


async def test_an_exact_quota_holds_across_groups_and_replicas(database_url, store):
    """Two stores (replicas) on one database, many callers each: no more automatic approvals than the limit."""
    other = SqlStore(create_engine(database_url))
    quota = AutoApproveQuota(count=7, since=NOW - timedelta(hours=1))
    try:
        async def insert(into: SqlStore) -> bool:
            request = _auto_approved(rule="limited")
            try:
                return await into.insert_request(request, new_grant(request, NOW), [], quota=quota)
            except AutoApproveLimitReached:
                return False

        answers = await asyncio.gather(*(insert(store if i % 2 else other) for i in range(30)))
        assert answers.count(True) == 7
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(R))).scalar_one() == 7
    finally:
        await other.engine.dispose()
