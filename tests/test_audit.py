"""Every state change leaves an audit event, in order, in the same transaction; `grantbot audit export` writes
them as JSON lines."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.web.keys import STORE
from tests.conftest import POLICIES
from tests.oidc_issuer import LocalIssuer, new_key
from tests.support import SECRETS, buttons, cards, eventually, hmac_headers, message_text
from tests.test_end_to_end import grantbot_command
from tests.test_oidc import write_policy


@pytest.mark.slow
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
    # The two grants' end notices (the card's own text, updated, says "grant expired" too: not counted).
    await eventually(lambda: len([m for m in sandbox.messages if "access has ended" in m["text"]]) == 2)

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


async def export_events(database_url: str, *args: str) -> tuple[list[dict], str]:
    """Run the real `grantbot audit export` (while grantbot serves in this process): its events and raw output."""
    env = {**os.environ, "GRANTBOT_DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(*grantbot_command("audit"), "export", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()], out.decode()


def refusals(events: list[dict], kind: str) -> list[tuple[str, str, int]]:
    return [(e["actor"], e["data"]["reason"], e["data"]["count"]) for e in events if e["kind"] == kind]


async def test_refused_clicks_revokes_and_signatures_are_audited_with_who_and_why(start_grantbot, sandbox, clock):
    sandbox.users.update({"U0THIRD": "kim"})
    grantbot = await start_grantbot(policy_file=POLICIES / "quorum.yaml")  # 2 of 3; octocat is U0APPROVER
    api = grantbot.api
    _, created = await api.request_access({"environment": "production", "scopes": ["db:write"], "ttl_seconds": 600,
                                           "context": {"actor": "octocat"}})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    stale = copy.deepcopy(card)  # as an approver's Slack may still show it after the decision
    assert await api.click(card, "approve", "U0APPROVER") == 200  # triggered the pipeline: refused
    assert await api.click(card, "approve", "U0OTHER") == 200  # not an approver: refused
    assert await api.click(card, "approve", "U0SECOND") == 200
    assert await api.click(card, "approve", "U0SECOND") == 200  # approved already: refused
    # Clicks are acknowledged at once and handled after: U0SECOND's refusal proves both of its clicks are counted
    # before U0THIRD's approval, which then resolves the request.
    await eventually(lambda: any(e["user"] == "U0SECOND" for e in sandbox.ephemerals))
    # And the first two refusals are handled (each click in a task of its own) before the request is resolved:
    # one handled after would be refused as "already approved" instead.
    await eventually(lambda: {"U0APPROVER", "U0OTHER"} <= {e["user"] for e in sandbox.ephemerals})
    assert await api.click(card, "approve", "U0THIRD") == 200
    _, approved = await api.get_request(created["id"], wait=10)
    token = approved["grant"]["access_token"]
    await eventually(lambda: buttons(card) == ["revoke_grant"])
    assert await api.click(stale, "approve", "U0THIRD") == 200  # decided already: refused
    assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id="revoke_grant",
                               user_id="U0OTHER") == 200  # not an approver: refused
    assert await sandbox.slash_command(f"revoke {created['id']} curious", user_id="U0OTHER") == 200  # refused
    await eventually(lambda: len([e for e in sandbox.ephemerals if e["user"] == "U0OTHER"]) == 3)
    # The stale click too is acknowledged at once and handled after: its refusal is audited by the time it is said.
    await eventually(lambda: any("already approved" in e["text"] for e in sandbox.ephemerals if e["user"] == "U0THIRD"))

    body = {"environment": "production", "scopes": ["db:write"]}
    raw = json.dumps(body).encode()
    now = int(api.now())
    assert (await api.request_access(body, secret="guessed-secret"))[0] == 401
    assert (await api.request_access(body, timestamp=now - 400))[0] == 401
    assert (await api.request_access(body, identity="nobody", secret="whatever"))[0] == 401
    replayed = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=now)
    assert (await api.request_access(None, raw=raw, sign=False, headers=replayed))[0] == 202
    assert (await api.request_access(None, raw=raw, sign=False, headers=replayed))[0] == 401
    assert (await api.request_access(body, sign=False))[0] == 401

    events, output = await export_events(grantbot.settings.database_url)
    # Sorted: each click is acknowledged at once and handled after, so two people's refusals may be recorded in
    # either order (the trail's order is the order they were handled in).
    assert sorted(refusals(events, "approval.refused")) == [
        ("U0APPROVER", "You triggered this pipeline (as octocat), so you can't approve or deny its access request; "
                       "another approver has to.", 1),
        ("U0OTHER", "Only the approvers of rule 'prod-db-two-of-three' can decide this request; you are not one of "
                    "them.", 1),
        ("U0SECOND", "You already approved this request; it is waiting for 1 more approval.", 1),
        ("U0THIRD", "This request was already approved by U0THIRD.", 1),
    ]
    assert all(e["request_id"] == created["id"] for e in events if e["kind"] in ("approval.refused", "revoke.refused"))
    revoke = refusals(events, "revoke.refused")
    # The button and the command are one use case with one wording: the second refusal, the same who and reason
    # in the same minute, is counted, not audited again (its count comes when the minute is over).
    assert [(who, count) for who, _, count in revoke] == [("U0OTHER", 1)], revoke
    assert "Only approvers of rule prod-db-two-of-three or grantbot admins can revoke this grant" in revoke[0][1]
    auth = refusals(events, "auth.refused")
    assert [(who, reason.split(":")[0].split(";")[0]) for who, reason, _ in auth] == [
        ("deploy-bot", "The signature does not match"),
        ("deploy-bot", "The request timestamp is more than 300 s away from the server's clock"),
        ("nobody", "The identity is not one of the policy's identities."),
        ("deploy-bot", "This signature was already used"),
        ("(none)", "Sign the request"),
    ], auth
    assert all(e["data"]["scheme"] == "hmac" for e in events if e["kind"] == "auth.refused")
    # Never a secret, a signature or a token; and the refusals changed nothing.
    for secret in ("guessed-secret", "whatever", replayed["X-Grantbot-Signature"][3:], token, SECRETS["deploy-bot"]):
        assert secret not in output
    assert (await api.introspect(token))[1]["active"] is True


async def test_a_flood_of_bad_signatures_leaves_a_handful_of_events_that_count_it(grantbot, clock):
    body = {"environment": "staging", "scopes": ["db:read"]}

    async def flood(identity: str) -> None:
        status, _ = await grantbot.api.request_access(body, identity=identity, secret="guessed-secret")
        assert status == 401

    for start in range(0, 200, 20):  # 200 bad signatures of deploy-bot, 20 at a time
        await asyncio.gather(*(flood("deploy-bot") for _ in range(20)))
    for start in range(0, 200, 20):  # and 200 more, each naming another made-up identity
        await asyncio.gather(*(flood(f"made-up-{start + i}") for i in range(20)))
    events, _ = await export_events(grantbot.settings.database_url)
    assert [(e["actor"], e["data"]["count"]) for e in events if e["actor"] == "deploy-bot"] == [("deploy-bot", 1)]

    clock.advance(61)  # the minute is over: the sweep audits what it counted

    async def summaries() -> list[dict]:
        return [e for e in await grantbot.app[STORE].audit_events() if e["data"].get("repeated")]

    await eventually(lambda: summaries(), timeout=10)
    events, output = await export_events(grantbot.settings.database_url)
    refused = [e for e in events if e["kind"] == "auth.refused"]
    assert len(refused) <= 25, len(refused)
    assert sum(e["data"]["count"] for e in refused) == 400
    mine = [e for e in refused if e["actor"] == "deploy-bot"]
    assert [e["data"]["count"] for e in mine] == [1, 199]
    assert mine[1]["data"]["repeated"] is True and mine[1]["data"]["reason"] == mine[0]["data"]["reason"]
    assert mine[1]["data"]["since"] < mine[1]["data"]["until"] <= mine[1]["at"]
    lumped = [e for e in refused if e["actor"] == "*"]
    assert lumped and "more than 20 different callers or reasons in a minute" in lumped[0]["data"]["reason"]
    assert "guessed-secret" not in output and not re.search(r"[0-9a-f]{64}", output)  # no signature
    for table in ("access_requests", "used_signatures", "outbox"):
        assert await grantbot.count(table) == 0, table
    assert await grantbot.count("refusal_counts") == 0  # nothing left counting


async def test_a_bad_ci_token_is_audited_with_the_identity_it_claims_and_never_the_token(start_grantbot, clock,
                                                                                        tmp_path):
    github = LocalIssuer("RSA")
    await github.start()
    try:
        grantbot = await start_grantbot(policy_file=write_policy(tmp_path, github.url, "https://gitlab.example"))
        t = clock.now().timestamp()
        tokens = [github.mint(t, aud="https://other.example"), github.mint(t, key=new_key()), "not-a-jwt"]
        for token in tokens:
            status, _ = await grantbot.api.request_access(
                {"environment": "production", "scopes": ["deploy:api"]}, sign=False,
                headers={"Authorization": f"Bearer {token}"})
            assert status == 401
        events, output = await export_events(grantbot.settings.database_url)
    finally:
        await github.stop()
    auth = [(e["actor"], e["data"]["reason"], e["data"]["scheme"]) for e in events if e["kind"] == "auth.refused"]
    who = "github:repo:acme/api:environment:production"
    assert [a[0] for a in auth] == [who, who, "(none)"] and {a[2] for a in auth} == {"oidc"}
    assert "meant for another audience" in auth[0][1] and "signature does not verify" in auth[1][1]
    assert "not a well-formed JWT" in auth[2][1]
    for token in tokens:
        assert token not in output and token.split(".")[-1] not in output


async def test_an_export_whose_reader_went_away_ends_quietly_as_cat_would(grantbot):
    # `grantbot audit export | head` in a shell: the reader leaves before the export writes (here `true` exits at
    # once), and the export must end as `cat` would, with no "cannot start" line and no traceback.
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 30})
    env = {**os.environ, "GRANTBOT_DATABASE_URL": grantbot.settings.database_url}
    command = " ".join(grantbot_command("audit")) + " export"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f'{command} | true; echo "exit=${{PIPESTATUS[0]}}"', env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().strip() == "exit=141" and err.decode() == "", (out, err)
