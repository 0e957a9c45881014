"""Every state change leaves an audit event, in order, in the same transaction; `grantbot audit export` writes
them as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support import cards, eventually, message_text
from tests.test_end_to_end import grantbot_command


async def test_an_approved_request_leaves_a_complete_ordered_trail(grantbot, sandbox, clock, tmp_path):
    _, auto = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 30})
    _, denied = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:admin"]})
    _, pending = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"],
                                                    "ttl_seconds": 60, "reason": "migration 7"})
    card = await eventually(lambda: next((c for c in cards(sandbox) if pending["id"] in message_text(c)), None))
    await grantbot.api.click(card, "approve", "U0APPROVER")
    _, approved = await grantbot.api.get_request(pending["id"], wait=10)
    assert approved["grant"]["access_token"]
    clock.advance(61)
    await eventually(lambda: len([m for m in sandbox.messages if "expired" in m["text"]]) == 2)

    env = {**os.environ, "GRANTBOT_DATABASE_URL": grantbot.settings.database_url}

    async def export(*args: str) -> tuple[int, str, str]:
        # Run the real command while grantbot keeps serving (and sweeping) in this process.
        proc = await asyncio.create_subprocess_exec(*grantbot_command("audit"), "export", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    code, stdout, stderr = await export()
    assert code == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    def trail(request_id):
        return [(e["kind"], e["actor"]) for e in events if e["request_id"] == request_id]

    assert trail(auto["id"]) == [("request.received", "deploy-bot"), ("policy.decided", "policy"),
                                 ("grant.issued", "policy"), ("token.handed_over", "deploy-bot"),
                                 ("grant.expired", "expiry")]
    assert trail(denied["id"]) == [("request.received", "deploy-bot"), ("policy.decided", "policy")]
    assert trail(pending["id"]) == [("request.received", "deploy-bot"), ("policy.decided", "policy"),
                                    ("request.approval_recorded", "U0APPROVER"), ("request.approved", "U0APPROVER"), ("grant.issued", "U0APPROVER"),
                                    ("token.handed_over", "deploy-bot"), ("grant.expired", "expiry")]
    received = next(e for e in events if e["request_id"] == pending["id"] and e["kind"] == "request.received")
    assert received["data"]["scopes"] == ["db:write"] and received["data"]["reason"] == "migration 7"
    decided = next(e for e in events if e["request_id"] == denied["id"] and e["kind"] == "policy.decided")
    assert decided["data"]["decision"] == "deny" and decided["data"]["rule"] == "no-admin"
    assert decided["data"]["reason"] == "rule 'no-admin' denies it"
    assert decided["data"]["reasons"][0] == "no-admin (deny): matches"  # the explanation, rule by rule
    # No token ever reaches the trail.
    assert approved["grant"]["access_token"] not in stdout

    # --since keeps the events at or after it: here those after the clock moved 61 s on (the expiries).
    since = next(e["at"] for e in events if e["kind"] == "grant.expired")
    code, later, stderr = await export("--since", since)
    assert code == 0, stderr
    assert [json.loads(line) for line in later.splitlines()] == [e for e in events if e["at"] >= since]
    assert {e["kind"] for e in map(json.loads, later.splitlines())} == {"grant.expired"}
    assert (await export("--since", "2999-01-01T00:00:00Z"))[:2] == (0, "")
    code, _, stderr = await export("--since", "yesterday")
    assert code == 2 and "ISO 8601" in stderr


async def test_the_database_refuses_to_change_or_remove_an_audit_event(grantbot):
    """Append-only is enforced by the database (migration 0007), not only by grantbot's code never updating."""
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 30})
    before = await grantbot.count("audit_events")
    assert before > 0
    statements = ["UPDATE audit_events SET actor = 'someone-else'", "DELETE FROM audit_events"]
    if grantbot.settings.database_url.startswith("postgresql"):
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with grantbot.engine.begin() as conn:
                await conn.execute(text(statement))
    assert await grantbot.count("audit_events") == before
    async with grantbot.engine.connect() as conn:
        actors = set((await conn.execute(text("SELECT actor FROM audit_events"))).scalars())
    assert "someone-else" not in actors
