"""Requests that need people: the approval card in Slack, clicks by approvers and others, races, expiry."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import text

from tests.support import (
    CHANNEL, block_actions_body, buttons, cards, deny_with_reason, eventually, message_text, open_modal, slack_signed,
)

PROD_WRITE = {
    "environment": "production",
    "scopes": ["db:write"],
    "ttl_seconds": 900,
    "reason": "hotfix <!channel> see <https://evil.example|ticket>",
    "context": {"run_url": "https://ci.acme.example/runs/42", "commit": "4f1c9e2", "repository": "acme/api"},
}


async def pending_card(grantbot, sandbox, body=PROD_WRITE):
    status, created = await grantbot.api.request_access(body)
    assert status == 202, created
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    return created, card


async def test_the_card_shows_the_request_and_escapes_what_the_pipeline_wrote(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    assert created["status"] == "pending" and created["expires_at"]
    assert card["channel"] == CHANNEL
    assert buttons(card) == ["approve", "approve_with_changes", "deny"]
    text = message_text(card)
    for shown in ("deploy-bot", "production", "db:write", "15 min", "prod-write", "https://ci.acme.example/runs/42",
                  "4f1c9e2", "acme/api"):
        assert shown in text
    # The reason is shown, but cannot ping the channel or render a link.
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text and "<https://evil" not in text


async def test_an_approver_click_issues_the_grant_and_updates_the_card(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    clock.advance(120)  # the TTL must count from the approval, not from the request
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200

    status, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "U0APPROVER"
    grant = decided["grant"]
    assert grant["access_token"] and grant["expires_in"] == 900
    assert grant["issued_at"] == decided["decided_at"]

    updated = await eventually(lambda: card["updated_count"] > 0 and card)
    assert buttons(updated) == ["revoke_grant"]  # while the grant is active
    assert "Approved" in message_text(updated) and "<@U0APPROVER>" in message_text(updated)


async def test_a_deny_click_denies_and_the_pipeline_hears_it(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    assert await deny_with_reason(sandbox, card, "U0SECOND") == (200, None)
    status, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "denied" and decided["decided_by"] == "U0SECOND" and "grant" not in decided
    await eventually(lambda: card["updated_count"] > 0)
    assert "Denied" in message_text(card) and buttons(card) == []


async def test_someone_who_is_not_an_approver_is_refused_privately_and_changes_nothing(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    assert await grantbot.api.click(card, "approve", "U0OTHER") == 200
    refusal = await eventually(lambda: next((e for e in sandbox.ephemerals if e["user"] == "U0OTHER"), None))
    assert "not one of them" in refusal["text"]
    _, still = await grantbot.api.get_request(created["id"])
    assert still["status"] == "pending"
    assert card["updated_count"] == 0 and buttons(card) == ["approve", "approve_with_changes", "deny"]
    assert await grantbot.count("approvals") == 0


async def test_a_double_click_and_a_redelivered_payload_issue_one_grant(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    statuses = await asyncio.gather(*[grantbot.api.click(card, "approve", "U0APPROVER") for _ in range(5)])
    assert statuses == [200] * 5
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved"
    await eventually(lambda: len(sandbox.ephemerals) >= 1)  # the later clicks are told it is already decided
    assert await grantbot.count("grants") == 1
    assert await grantbot.count("approvals") == 1
    assert sandbox.ephemerals[0]["text"] == "This request was already approved by <@U0APPROVER>."


async def test_the_same_signed_payload_delivered_twice_issues_one_grant(grantbot, sandbox):
    """Byte for byte the same request twice, the second as Slack marks a retry (X-Slack-Retry-Num)."""
    created, card = await pending_card(grantbot, sandbox)
    body = block_actions_body(card, "approve", "U0APPROVER")
    headers = slack_signed(body)
    retry = {**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    statuses = []
    for sent in (headers, retry):
        async with grantbot.api.http.post(grantbot.base_url + "/slack/events", data=body.encode(),
                                          headers=sent) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200]
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved" and decided["decided_by"] == "U0APPROVER"
    assert await grantbot.count("grants") == 1 and await grantbot.count("approvals") == 1
    updated = await eventually(lambda: next((c for c in cards(sandbox) if c["ts"] == card["ts"]
                                             and buttons(c) == ["revoke_grant"]), None))
    assert "Approved" in message_text(updated) and "<@U0APPROVER>" in message_text(updated)


async def test_approve_and_deny_racing_resolve_once(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    deny_form = await open_modal(sandbox, card, "deny", "U0SECOND")  # the race is the approval vs the submission
    await asyncio.gather(grantbot.api.click(card, "approve", "U0APPROVER"),
                         sandbox.submit_view(deny_form["id"], {"reason": "not today"}))
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    await eventually(lambda: len(sandbox.ephemerals) == 1)
    assert decided["status"] in ("approved", "denied")
    assert await grantbot.count("approvals") == 1
    assert await grantbot.count("grants") == (1 if decided["status"] == "approved" else 0)
    loser = sandbox.ephemerals[0]
    assert loser["user"] != decided["decided_by"] and f"already {decided['status']}" in loser["text"]


@pytest.mark.parametrize("how", ["wrong secret", "stale timestamp"])
async def test_a_badly_signed_slack_payload_is_refused(grantbot, sandbox, how):
    created, card = await pending_card(grantbot, sandbox)
    kwargs = {"secret": "not-the-signing-secret"} if how == "wrong secret" else {"timestamp": 1_700_000_000}
    assert await grantbot.api.click(card, "approve", "U0APPROVER", **kwargs) == 401
    _, still = await grantbot.api.get_request(created["id"])
    assert still["status"] == "pending"


async def test_the_grant_expires_after_its_ttl_with_a_thread_reply(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox, {**PROD_WRITE, "ttl_seconds": 60})
    await grantbot.api.click(card, "approve", "U0APPROVER")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    token = decided["grant"]["access_token"]
    assert (await grantbot.api.introspect(token))[1]["active"] is True

    clock.advance(59)
    assert (await grantbot.api.introspect(token))[1]["active"] is True
    clock.advance(1)
    reply = await eventually(lambda: next((m for m in sandbox.messages
                                           if m["thread_ts"] == card["ts"] and "expired" in m["text"]), None))
    assert "db:write" in reply["text"]
    assert await grantbot.api.introspect(token) == (200, {"active": False})
    _, after = await grantbot.api.get_request(created["id"])
    assert after["grant"]["status"] == "expired" and after["grant"]["expires_in"] == 0
    await eventually(lambda: "expired" in message_text(card))
    await asyncio.sleep(0.3)  # several sweeps later, still exactly one expiry message
    thread = [m["text"].split()[0] for m in sandbox.messages if m["thread_ts"] == card["ts"]]
    assert thread == [":white_check_mark:", ":key:", ":hourglass:"]  # approved, token collected, expired


async def test_an_auto_approved_grant_expiring_gets_a_channel_message(grantbot, sandbox, clock):
    _, body = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 30})
    clock.advance(31)
    message = await eventually(lambda: sandbox.messages and sandbox.messages[0])
    assert message["channel"] == CHANNEL and message["thread_ts"] is None
    assert "expired" in message["text"] and "auto-approved" in message["text"]


async def test_a_pending_request_times_out(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    stale_card = json.loads(json.dumps(card))
    clock.advance(1900)  # noticed 100 s after the deadline, as after a restart
    _, after = await grantbot.api.get_request(created["id"], wait=10)
    assert after["status"] == "expired"
    await eventually(lambda: card["updated_count"] > 0)
    deadline = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert buttons(card) == []
    assert f"*Expired*: nobody decided before {deadline:%Y-%m-%d %H:%M:%S} UTC" in message_text(card)
    # A stale copy of the card (as a slow client may still show it) changes nothing.
    assert await grantbot.api.click(stale_card, "approve", "U0APPROVER") == 200
    refusal = await eventually(lambda: sandbox.ephemerals and sandbox.ephemerals[0])
    assert "already expired" in refusal["text"]
    assert await grantbot.count("grants") == 0


async def test_a_long_poll_returns_as_soon_as_the_decision_is_made(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    poll = asyncio.create_task(grantbot.api.get_request(created["id"], wait=30))
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = asyncio.get_running_loop().time()
    await grantbot.api.click(card, "approve", "U0APPROVER")
    status, decided = await poll
    assert status == 200 and decided["status"] == "approved" and decided["grant"]["access_token"]
    assert asyncio.get_running_loop().time() - started < 5


async def forget_the_post_as_a_crash_would(grantbot, clock) -> None:
    """What a crash between Slack's answer and the database commit leaves behind: the card is in Slack, but the
    outbox item is unsent and still leased, and the request does not know its card."""

    async def drained() -> bool:  # first let the worker finish with the card: posted, recorded, marked sent
        return await grantbot.count("outbox WHERE sent_at IS NULL") == 0

    await eventually(drained)
    async with grantbot.engine.begin() as conn:
        await conn.execute(text("UPDATE outbox SET sent_at = NULL, locked_until = :until"), {"until": clock.now()})
        await conn.execute(text("UPDATE access_requests SET card_ts = NULL, card_channel = NULL"))
    clock.advance(1)


async def test_a_card_slack_took_just_before_a_crash_is_not_posted_again(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    await forget_the_post_as_a_crash_would(grantbot, clock)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    await eventually(lambda: card["updated_count"] > 0)
    assert len(cards(sandbox)) == 1 and buttons(card) == ["revoke_grant"]


async def test_a_crashed_post_is_found_even_after_a_busy_channel_moved_on(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    # People talk in the channel: 450 messages after the card, more than two pages of history.
    people = AsyncWebClient(token=sandbox.bot_token, base_url=sandbox.api_url)
    for i in range(450):
        await people.chat_postMessage(channel=CHANNEL, text=f"chatter {i}")
    await forget_the_post_as_a_crash_would(grantbot, clock)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    await eventually(lambda: card["updated_count"] > 0)
    assert len(cards(sandbox)) == 1 and buttons(card) == ["revoke_grant"]
