"""Revocation claims fenced across requeues (bot/store/credentials.py): a worker whose lease ran out, and whose
revocation was since claimed again, given back and requeued by hand (`grantbot credentials reconcile` starts its
attempts again), records nothing, renews nothing and releases nothing; only the current claim does. The attempt
number repeats after a requeue; the claim count does not. A real database, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bot.domain.credentials import Account

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LEASE = 30


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


async def test_a_stale_claim_records_nothing_after_a_requeue_repeated_its_attempt_number(store):
    grant_id = str(uuid.uuid4())
    account = Account(grant_id, "orders-db", "postgresql", "gbt_" + grant_id.replace("-", ""), NOW,
                      target={"kind": "postgresql", "name": "orders-db"})
    assert await store.record_orphan(account, NOW)  # a pending revocation, due now

    [stale] = await store.claim_revocations(at(0), LEASE, 10)  # worker A: attempt 1; then it stalls
    [overtaking] = await store.claim_revocations(at(LEASE + 1), LEASE, 10)  # A's lease ran out: B, attempt 2
    assert (stale.attempts, overtaking.attempts) == (1, 2)
    assert await store.retry_revocation(overtaking, at(LEASE + 100), "the database did not answer")
    assert await store.requeue_revocations(at(LEASE + 2), failed=True) == 1  # reconcile, by hand: attempts from 0
    [current] = await store.claim_revocations(at(LEASE + 2), LEASE, 10)  # C: attempt 1 again
    assert current.attempts == stale.attempts == 1

    # A wakes up: everything it tries is fenced off.
    assert await store.renew_revocations([stale], at(LEASE + 60)) == 0
    assert not await store.finish_revocation(stale, at(LEASE + 3), {"summary": "stale"}, [])
    assert not await store.retry_revocation(stale, at(LEASE + 10), "stale")
    assert not await store.fail_revocation(stale, at(LEASE + 3), "stale", [])
    assert await store.release_revocations([stale]) == 0
    held, until = await store.held_revocations(at(LEASE + 3))
    assert held == 1 and until == at(2 * LEASE + 2)  # C's lease, untouched

    # C's own claim still holds.
    assert await store.renew_revocations([current], at(LEASE + 40)) == 1
    assert await store.finish_revocation(current, at(LEASE + 4), {"summary": "role dropped"}, [])
    async with store.engine.connect() as conn:
        row = (await conn.execute(text("SELECT revocation, attempts, claims, detail FROM credentials"))).one()
        revoked = (await conn.execute(text(
            "SELECT count(*) FROM audit_events WHERE kind = 'credentials.revoked'"))).scalar_one()
    assert (row.revocation, row.attempts, row.claims) == ("verified", 1, 3)
    assert revoked == 1


async def test_a_cut_off_claim_gives_its_lease_back_and_the_next_claim_is_at_once(store):
    grant_id = str(uuid.uuid4())
    account = Account(grant_id, "orders-db", "postgresql", "gbt_" + grant_id.replace("-", ""), NOW,
                      target={"kind": "postgresql", "name": "orders-db"})
    assert await store.record_orphan(account, NOW)
    [cut_off] = await store.claim_revocations(at(0), LEASE, 10)
    assert await store.claim_revocations(at(1), LEASE, 10) == []  # held
    assert await store.release_revocations([cut_off]) == 1
    [next_claim] = await store.claim_revocations(at(1), LEASE, 10)
    # The cut-off attempt is not counted against the retries (a rolling deploy must not use them up); the claim
    # count still moves on, so the cut-off worker records nothing.
    assert (next_claim.attempts, next_claim.claim) == (1, cut_off.claim + 1)
    assert not await store.finish_revocation(cut_off, at(2), {"summary": "late"}, [])
