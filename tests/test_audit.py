"""Every state change leaves an audit event, in order, in the same transaction; `grantbot audit export` writes
them as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os

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

    assert (await export("--since", "2999-01-01T00:00:00Z"))[:2] == (0, "")
    code, _, stderr = await export("--since", "yesterday")
    assert code == 2 and "ISO 8601" in stderr
