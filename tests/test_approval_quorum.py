"""Who may approve (tests/policies/quorum.yaml): N-of-M distinct approvers, Slack user groups, the person who
triggered the pipeline, and denial rules — through signed Slack clicks to the running app and the sandbox."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from sqlalchemy import text

from tests.conftest import POLICIES
from tests.support import Api, buttons, cards, deny_with_reason, eventually, message_text
from tests.test_end_to_end import Process, at_head

QUORUM = POLICIES / "quorum.yaml"
PROD_DB = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 900, "reason": "migration 12"}


@pytest.fixture
async def grantbot(start_grantbot, sandbox):
    sandbox.users["U0THIRD"] = "kim"
    return await start_grantbot(policy_file=QUORUM)


async def pending_card(grantbot, sandbox, body):
    status, created = await grantbot.api.request_access(body)
    assert status == 202, created
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    return created, card


def ephemeral_for(sandbox, user: str, number: int = 1):
    """The ``number``-th private message ``user`` got, once it arrived."""
    return lambda: (mine := [e for e in sandbox.ephemerals if e["user"] == user])[number - 1:] and mine[number - 1]


async def test_two_distinct_approvers_are_needed_and_the_pipelines_own_person_is_not_one(grantbot, sandbox, clock):
    # The pipeline was triggered by octocat, whom the policy's people: map names as U0APPROVER, a listed approver.
    created, card = await pending_card(grantbot, sandbox, {**PROD_DB, "context": {"actor": "octocat"}})
    assert "0 of 2 approvals" in message_text(card)
    assert "<@U0APPROVER> triggered this pipeline and can't approve it" in message_text(card)
    poll = asyncio.create_task(grantbot.api.get_request(created["id"], wait=30))

    # octocat (as U0APPROVER) tries to approve their own pipeline's request: refused privately, nothing changes.
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    refusal = await eventually(ephemeral_for(sandbox, "U0APPROVER"))
    assert "You triggered this pipeline (as octocat), so you can't approve" in refusal["text"]
    assert await grantbot.count("approvals") == 0 and card["updated_count"] == 0

    # A first approver: recorded, the card shows the progress and who approved, the request stays pending.
    clock.advance(60)
    assert await grantbot.api.click(card, "approve", "U0SECOND") == 200
    await eventually(lambda: card["updated_count"] == 1)
    assert "1 of 2 approvals" in message_text(card) and "<@U0SECOND>" in message_text(card)
    assert buttons(card) == ["approve", "deny"]
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"

    # The same approver again: counted once; told what the request still waits for.
    assert await grantbot.api.click(card, "approve", "U0SECOND") == 200
    again = await eventually(ephemeral_for(sandbox, "U0SECOND"))
    assert again["text"] == "You already approved this request; it is waiting for 1 more approval."
    assert await grantbot.count("approvals") == 1
    assert await grantbot.count("outbox") == 2  # the card's post and one update: the repeat queued nothing
    assert not poll.done()

    # A second, distinct approver: the grant is issued, its TTL counted from this approval; the poll gets it.
    clock.advance(60)
    assert await grantbot.api.click(card, "approve", "U0THIRD") == 200
    status, decided = await poll
    assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "U0THIRD"
    assert decided["grant"]["access_token"] and decided["grant"]["expires_in"] == 900
    assert decided["grant"]["issued_at"] == decided["decided_at"]
    assert await grantbot.count("grants") == 1 and await grantbot.count("approvals") == 2
    await eventually(lambda: card["updated_count"] == 2)
    assert buttons(card) == ["revoke_grant"] and "Approved* by <@U0SECOND>, <@U0THIRD>" in message_text(card)

    async with grantbot.engine.connect() as conn:
        trail = (await conn.execute(text("SELECT kind, actor FROM audit_events WHERE request_id = :id ORDER BY id"),
                                    {"id": created["id"]})).all()
    assert [tuple(row) for row in trail][2:7] == [  # the refused clicks are audited too
        ("approval.refused", "U0APPROVER"), ("request.approval_recorded", "U0SECOND"),
        ("approval.refused", "U0SECOND"), ("request.approval_recorded", "U0THIRD"), ("request.approved", "U0THIRD")]


async def test_a_user_group_member_may_approve_and_a_non_member_may_not(grantbot, sandbox):
    sandbox.set_usergroup("S0ONCALL", ["U0SECOND"])
    created, card = await pending_card(grantbot, sandbox, {"environment": "production", "scopes": ["deploy:api"]})

    assert await grantbot.api.click(card, "approve", "U0OTHER") == 200
    refusal = await eventually(ephemeral_for(sandbox, "U0OTHER"))
    assert "you are not one of them" in refusal["text"]
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"

    assert await grantbot.api.click(card, "approve", "U0SECOND") == 200
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved" and decided["decided_by"] == "U0SECOND"
    lookups = [c["args"] for c in sandbox.calls if c["method"] == "usergroups.users.list"]
    assert lookups == [{"usergroup": "S0ONCALL"}]  # the membership was looked up once, then cached


async def test_by_default_the_first_denial_denies(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox, PROD_DB)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    await eventually(lambda: card["updated_count"] == 1)
    assert await deny_with_reason(sandbox, card, "U0SECOND") == (200, None)
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "denied" and decided["decided_by"] == "U0SECOND" and "grant" not in decided
    await eventually(lambda: card["updated_count"] == 2)
    assert buttons(card) == [] and "Denied* by <@U0SECOND>" in message_text(card)


async def test_without_deny_on_first_denial_a_request_is_denied_once_approval_is_out_of_reach(grantbot, sandbox):
    # Two of three must approve: one denial still leaves two who could; the second denial leaves one.
    created, card = await pending_card(grantbot, sandbox, {**PROD_DB, "environment": "staging"})
    assert await deny_with_reason(sandbox, card, "U0SECOND") == (200, None)
    await eventually(lambda: card["updated_count"] == 1)
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert "Denied so far by <@U0SECOND>" in message_text(card) and buttons(card) == ["approve", "deny"]

    await grantbot.api.click(card, "approve", "U0APPROVER")
    await eventually(lambda: card["updated_count"] == 2)
    assert "1 of 2 approvals* so far: <@U0APPROVER>" in message_text(card)

    await deny_with_reason(sandbox, card, "U0THIRD")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "denied" and decided["decided_by"] == "U0THIRD"
    assert await grantbot.count("grants") == 0


async def test_one_denial_does_not_stop_two_approvals_when_denial_waits(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox, {**PROD_DB, "environment": "staging"})
    await deny_with_reason(sandbox, card, "U0SECOND")
    await eventually(lambda: card["updated_count"] == 1)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    await eventually(lambda: card["updated_count"] == 2)
    await grantbot.api.click(card, "approve", "U0THIRD")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved" and decided["grant"]["access_token"]


async def test_two_approvers_giving_the_last_approvals_at_once_on_two_replicas_issue_one_grant(
    grantbot, start_grantbot, sandbox
):
    other_replica = await start_grantbot(policy_file=QUORUM)
    for attempt in range(3):
        created, card = await pending_card(grantbot, sandbox, {**PROD_DB, "reason": f"migration {attempt}"})
        statuses = await asyncio.gather(grantbot.api.click(card, "approve", "U0SECOND"),
                                        other_replica.api.click(card, "approve", "U0THIRD"))
        assert statuses == [200, 200]
        _, decided = await grantbot.api.get_request(created["id"], wait=10)
        assert decided["status"] == "approved" and decided["decided_by"] in ("U0SECOND", "U0THIRD")
    # Neither approval was lost (both counted, no request left pending with two approvals) and none doubled.
    assert await grantbot.count("grants") == 3 and await grantbot.count("approvals") == 6
    assert await grantbot.count("access_requests WHERE status = 'approved'") == 3
    assert sandbox.ephemerals == []


async def test_the_real_process_needs_two_approvers_who_did_not_trigger_the_pipeline(tmp_path, database_url, sandbox):
    """The same story against ``grantbot serve`` (a child process), with the Slack sandbox as its Slack."""
    sandbox.users["U0THIRD"] = "kim"
    proc = Process(tmp_path, database_url, sandbox)
    proc.env["GRANTBOT_POLICY_FILE"] = str(QUORUM)
    sandbox.events_url = proc.base_url + "/slack/events"
    await at_head(proc)
    await proc.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, proc.base_url, proc.now)
            status, created = await api.request_access({**PROD_DB, "context": {"actor": "octocat"}})
            assert status == 202, created
            card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)),
                                                 None))
            poll = asyncio.create_task(api.get_request(created["id"], wait=30))

            assert await api.click(card, "approve", "U0APPROVER") == 200  # octocat, via people:
            assert "can't approve" in (await eventually(ephemeral_for(sandbox, "U0APPROVER")))["text"]
            assert await api.click(card, "approve", "U0SECOND") == 200
            await eventually(lambda: "1 of 2 approvals" in message_text(card))
            assert await api.click(card, "approve", "U0SECOND") == 200
            assert "already approved" in (await eventually(ephemeral_for(sandbox, "U0SECOND")))["text"]
            assert not poll.done()

            assert await api.click(card, "approve", "U0THIRD") == 200
            status, decided = await poll
            assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "U0THIRD"
            assert decided["grant"]["access_token"] and decided["grant"]["issued_at"] == decided["decided_at"]
            assert 895 <= decided["grant"]["expires_in"] <= 900  # the TTL counts from the last approval (real time)
            await eventually(lambda: buttons(card) == ["revoke_grant"] and "<@U0SECOND>, <@U0THIRD>" in message_text(card))
    finally:
        assert await proc.kill(signal.SIGTERM) == 0
    proc.check_log()
