"""Policy conditions and guard rails through the running app: auto-approve limits (also under concurrency),
first use, reasons, time windows, per-rule channel and pending timeout; the card says why people are asked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.conftest import POLICIES
from tests.support import cards, eventually, message_text

READ = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}


def read(n: int) -> dict:
    """Distinct bodies: the test clock stands still, and a same-second, same-body signature is a replay."""
    return {**READ, "reason": f"export {n}"}
MONDAY_10_BERLIN = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Mon 10:00 CET


@pytest.fixture
async def guarded(start_grantbot, clock):
    clock.set(MONDAY_10_BERLIN)
    return await start_grantbot(policy_file=POLICIES / "guard_rails.yaml")


async def test_beyond_the_auto_approve_limit_people_decide_and_the_card_says_why(guarded, sandbox, clock):
    for n in range(3):
        status, body = await guarded.api.request_access(read(n))
        assert (status, body["status"]) == (201, "approved"), body
    status, fourth = await guarded.api.request_access(read(3))
    assert (status, fourth["status"]) == (202, "pending")
    card = await eventually(lambda: next((c for c in cards(sandbox) if fourth["id"] in message_text(c)), None))
    assert "auto-approve limit reached: 3 automatic approvals of deploy-bot under rule 'staging-read'" in message_text(card)
    # another identity has its own allowance
    status, body = await guarded.api.request_access(read(4), identity="other-bot")
    assert body["status"] == "approved"
    # an hour later the window has moved on
    clock.advance(3601)
    status, body = await guarded.api.request_access(read(5))
    assert body["status"] == "approved"


async def test_concurrent_requests_cannot_overdraw_the_limit(guarded):
    results = await asyncio.gather(*(guarded.api.request_access(read(n)) for n in range(12)))
    statuses = sorted(body["status"] for _, body in results)
    assert statuses.count("approved") == 3 and statuses.count("pending") == 9, statuses


async def test_first_use_of_a_scope_goes_to_people_then_is_automatic(guarded, sandbox):
    body = {"environment": "production", "scopes": ["db:read"], "ttl_seconds": 60}
    status, first = await guarded.api.request_access(body)
    assert first["status"] == "pending"
    card = await eventually(lambda: next((c for c in cards(sandbox) if first["id"] in message_text(c)), None))
    assert "first use: deploy-bot has never been granted 'db:read'" in message_text(card)
    # Only a grant makes a scope known: asking again before anyone decided still goes to people.
    _, again = await guarded.api.request_access({**body, "reason": "again"})
    assert again["status"] == "pending"
    assert await guarded.api.click(card, "approve", "U0APPROVER") == 200
    _, approved = await guarded.api.get_request(first["id"], wait=5)
    assert approved["status"] == "approved"
    _, third = await guarded.api.request_access({**body, "reason": "third"})
    assert third["status"] == "approved"
    # a scope not granted before still asks
    _, wider = await guarded.api.request_access({**body, "scopes": ["db:read", "logs:app"]})
    assert wider["status"] == "pending" and "logs:app" in wider["decision_reason"]


async def test_a_reason_pattern_time_window_channel_and_pending_timeout(guarded, sandbox, clock):
    sandbox.channels["C0PRODWRITE"] = "prod-write-approvals"
    write = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60}
    _, missing = await guarded.api.request_access({**write, "reason": "hotfix"})
    assert missing["status"] == "denied" and "needs a reason matching '[A-Z]+-[0-9]+'" in missing["detail"]
    _, asked = await guarded.api.request_access({**write, "reason": "OPS-17 hotfix"})
    assert asked["status"] == "pending"
    card = await eventually(lambda: next((c for c in cards(sandbox) if asked["id"] in message_text(c)), None))
    assert card["channel"] == "C0PRODWRITE"
    clock.advance(301)  # the rule's pending timeout, not the default
    _, expired = await guarded.api.get_request(asked["id"], wait=5)
    assert expired["status"] == "expired"
    # Sunday: outside the rule's days, no rule matches, the default denies
    clock.set(datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    _, sunday = await guarded.api.request_access({**write, "reason": "OPS-18"})
    assert sunday["status"] == "denied" and "no rule matches" in sunday["detail"]
