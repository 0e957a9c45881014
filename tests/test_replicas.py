"""Several real `grantbot serve` processes on one database behave as one; a SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import collections
import signal

import aiohttp
import pytest
from sqlalchemy import text

from bot.store.engine import create_engine
from tests.support import Api, cards, eventually, message_text
from tests.test_end_to_end import Process, migrate

AUTO = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}
NEEDS_APPROVAL = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60}
DENIED = {"environment": "production", "scopes": ["db:admin"]}


async def audit(database_url: str) -> list:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT id, kind, request_id, grant_id FROM audit_events ORDER BY id"))).all()
    finally:
        await engine.dispose()


async def gather_in_chunks(calls, size: int = 15) -> list:
    results = []
    for start in range(0, len(calls), size):
        results += await asyncio.gather(*calls[start:start + size])
    return results


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_three_replicas_handle_300_requests_and_every_transition_happens_once(tmp_path, database_url, sandbox):
    replicas = [Process(tmp_path, database_url, sandbox, name=f"replica-{i}") for i in range(3)]
    for replica in replicas:
        # 400 Slack writes into one channel: at Slack's 1/s that takes minutes. This test is about each happening
        # once across replicas (pacing has its own test, tests/test_outbox_faults.py), so let them go faster.
        replica.env["GRANTBOT_SLACK_POSTS_PER_SECOND"] = "50"
    migrate(replicas[0])
    await asyncio.gather(*(r.start() for r in replicas))
    async with aiohttp.ClientSession() as http:
        apis = [Api(http, r.base_url, r.now) for r in replicas]
        bodies = [AUTO, NEEDS_APPROVAL, DENIED] * 100
        answers = await gather_in_chunks(
            [apis[i % 3].request_access({**body, "reason": f"load {i}"}) for i, body in enumerate(bodies)]
        )
        by_kind = collections.defaultdict(list)
        for i, (status, answer) in enumerate(answers):
            by_kind[status].append((i % 3, answer))
        assert sorted((k, len(v)) for k, v in by_kind.items()) == [(201, 100), (202, 100), (403, 100)]

        pending = {answer["id"]: replica for replica, answer in by_kind[202]}
        card_of = {}

        def all_cards_posted():
            for card in cards(sandbox):
                for request_id in pending:
                    if request_id in message_text(card):
                        card_of[request_id] = card
            return len(card_of) == len(pending)

        await eventually(all_cards_posted, timeout=60, interval=0.2)
        # Each approval goes through a replica other than the one that took the request.
        clicks = [apis[(replica + 1) % 3].click(card_of[rid], "approve", "U0APPROVER") for rid, replica in pending.items()]
        assert set(await gather_in_chunks(clicks)) == {200}
        decided = await gather_in_chunks([apis[replica].get_request(rid, wait=30) for rid, replica in pending.items()])
        assert all(status == 200 and d["status"] == "approved" and d["grant"]["access_token"] for status, d in decided)

        replicas[0].advance(61)  # one clock file for all three: every grant is now due

        def expiry_messages():
            return [m for m in sandbox.messages if "expired" in (m["text"] or "") and not m["blocks"]]

        await eventually(lambda: len(expiry_messages()) == 200, timeout=60, interval=0.2)
        await asyncio.sleep(1.5)  # several more sweeps and outbox rounds on every replica: nothing more may come

    for replica in replicas:
        assert await replica.kill(signal.SIGTERM) == 0
        replica.check_log()

    assert len(cards(sandbox)) == 100
    assert len(expiry_messages()) == 200
    threaded = collections.Counter(m["thread_ts"] for m in expiry_messages() if m["thread_ts"])
    assert sorted(threaded) == sorted(card["ts"] for card in card_of.values()) and set(threaded.values()) == {1}
    assert all(buttons == [] for buttons in ([e for b in c["blocks"] if b["type"] == "actions" for e in b["elements"]]
                                             for c in card_of.values()))

    events = await audit(database_url)
    per_request = collections.defaultdict(list)
    for _, kind, request_id, _grant_id in events:
        per_request[request_id].append(kind)
    expected = {
        201: ["request.received", "policy.decided", "grant.issued", "token.handed_over", "grant.expired"],
        202: ["request.received", "policy.decided", "request.approval_recorded", "request.approved", "grant.issued",
              "token.handed_over", "grant.expired"],
        403: ["request.received", "policy.decided"],
    }
    for status, answered in by_kind.items():
        for _, answer in answered:
            assert per_request[answer["id"]] == expected[status], answer["id"]
    assert len(per_request) == 300


async def test_sigkill_while_grants_are_due_and_messages_queued_loses_and_repeats_nothing(tmp_path, database_url,
                                                                                        sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    live_slack = proc.env["SLACK_API_URL"]
    proc.env["SLACK_API_URL"] = "http://127.0.0.1:9/api/"  # Slack unreachable: every message stays queued
    migrate(proc)
    await proc.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base_url, proc.now)
        auto = [await api.request_access({**AUTO, "ttl_seconds": 30 + i}) for i in range(20)]
        pending = [await api.request_access({**NEEDS_APPROVAL, "reason": f"queued {i}"}) for i in range(10)]
        assert {s for s, _ in auto} == {201} and {s for s, _ in pending} == {202}

        proc.advance(120)  # every grant is due now; the sweep may or may not get to them before the kill
        await asyncio.sleep(0.3)
        assert await proc.kill(signal.SIGKILL) == -signal.SIGKILL
        assert sandbox.messages == []

        proc.env["SLACK_API_URL"] = live_slack
        await proc.start()
        proc.advance(400)  # past the failed posts' backoff and the dead process's outbox leases

        def delivered():
            expired = [m for m in sandbox.messages if not m["blocks"] and "expired" in m["text"]]
            return len(expired) >= 20 and len(cards(sandbox)) >= 10

        await eventually(delivered, timeout=30, interval=0.2)
        await asyncio.sleep(1.5)
        for _, answer in auto:
            _, after = await api.get_request(answer["id"])
            assert after["grant"]["status"] == "expired"
    assert await proc.kill(signal.SIGTERM) == 0
    proc.check_log()

    assert len(cards(sandbox)) == 10
    assert len([m for m in sandbox.messages if not m["blocks"]]) == 20
    for _, answer in pending:
        assert sum(answer["id"] in message_text(c) for c in cards(sandbox)) == 1
    expired = collections.Counter(grant for _, kind, _, grant in await audit(database_url) if kind == "grant.expired")
    assert len(expired) == 20 and set(expired.values()) == {1}
