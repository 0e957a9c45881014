"""Pending requests: a reminder in the card's thread mentions the approvers once, after remind_after_seconds;
at the pending timeout the request expires, the card says so and the pipeline's long poll answers expired."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import POLICIES
from tests.support import buttons, cards, eventually, message_text

WRITE = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 600, "reason": "migration 12"}


@pytest.fixture
async def reminding(start_grantbot):
    return await start_grantbot(policy_file=POLICIES / "reminders.yaml")


def replies(sandbox, card) -> list[dict]:
    return [m for m in sandbox.messages if m["thread_ts"] == card["ts"] and m["channel"] == card["channel"]]


async def pending_card(api, sandbox):
    _, created = await api.request_access(WRITE)
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    return created, card


async def test_a_waiting_request_reminds_its_approvers_once_then_times_out(reminding, sandbox, clock):
    created, card = await pending_card(reminding.api, sandbox)
    clock.advance(599)
    await asyncio.sleep(0.3)
    assert replies(sandbox, card) == []
    clock.advance(2)
    reminder = await eventually(lambda: replies(sandbox, card) and replies(sandbox, card)[0])
    text = message_text(reminder)
    assert "<@U0APPROVER>" in text and "<@U0SECOND>" in text and "still waiting" in text
    assert "deploy-bot" in text and "db:write" in text and "expires at" in text
    clock.advance(300)
    await asyncio.sleep(0.3)
    assert len(replies(sandbox, card)) == 1  # once

    clock.advance(1800 - 901 + 1)  # past the pending timeout
    status, body = await reminding.api.get_request(created["id"], wait=5)
    assert (status, body["status"]) == (200, "expired")
    updated = await eventually(lambda: card["updated_count"] > 0 and "Expired" in message_text(card) and card)
    assert buttons(updated) == []
    assert await reminding.count("audit_events WHERE kind = 'request.reminded'") == 1


async def test_no_reminder_for_a_request_decided_in_time(reminding, sandbox, clock):
    created, card = await pending_card(reminding.api, sandbox)
    assert await reminding.api.click(card, "approve", "U0APPROVER") == 200
    _, body = await reminding.api.get_request(created["id"], wait=5)
    assert body["status"] == "approved"
    clock.advance(700)
    await asyncio.sleep(0.4)
    assert not any("still waiting" in message_text(m) for m in replies(sandbox, card))
    assert await reminding.count("audit_events WHERE kind = 'request.reminded'") == 0


async def test_without_remind_after_there_are_no_reminders(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot.api, sandbox)
    clock.advance(1700)
    await asyncio.sleep(0.4)
    assert replies(sandbox, card) == []
