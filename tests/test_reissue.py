"""A lost hand-over is recoverable: ``POST /v1/grants/{id}/reissue`` gives the grant's holder a new token (new
``jti``, same expiry) and the lost one stops working (issue 9 item 3; DESIGN.md HTTP contract)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import jwt

from bot.web.keys import STORE
from tests.support import cards, eventually, message_text
from tests.test_end_to_end import grantbot_command
from tests.test_oauth_and_operations import form_post
from tests.test_oidc import bot, call, issuers, now  # noqa: F401  (fixtures: a grantbot trusting two CI issuers)

STAGING = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 600}


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def audit_export(grantbot) -> list[dict]:
    """``grantbot audit export`` run for real against the database the test's grantbot serves from."""
    env = {**os.environ, "GRANTBOT_DATABASE_URL": grantbot.settings.database_url}
    proc = await asyncio.create_subprocess_exec(*grantbot_command("audit"), "export", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_a_reissued_token_replaces_the_lost_one_with_the_same_expiry(grantbot, clock):
    _, created = await grantbot.api.request_access(STAGING)
    grant_id, lost = created["grant"]["id"], created["grant"]["access_token"]
    clock.advance(30)

    status, answer = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue")
    assert status == 200, answer
    new = answer["access_token"]
    assert answer["id"] == grant_id and answer["request_id"] == created["id"] and answer["status"] == "active"
    assert answer["expires_at"] == created["grant"]["expires_at"] and answer["expires_in"] == 570
    old_claims, new_claims = claims(lost), claims(new)
    assert new_claims["jti"] != old_claims["jti"]
    assert {k: v for k, v in new_claims.items() if k != "jti"} == {k: v for k, v in old_claims.items() if k != "jti"}

    assert await grantbot.api.introspect(lost) == (200, {"active": False})
    introspected = (await grantbot.api.introspect(new))[1]
    assert introspected["active"] is True and introspected["exp"] == old_claims["exp"]
    # The lost token cannot end the grant either (someone who found it could otherwise cut the holder off).
    assert (await form_post(grantbot, "/oauth/revoke", lost))[0] == 200
    assert (await grantbot.api.introspect(new))[1]["active"] is True
    _, read = await grantbot.api.get_request(created["id"])
    assert read["grant"]["status"] == "active" and "access_token" not in read["grant"]

    events = [e for e in await audit_export(grantbot) if e["kind"] == "token.reissued"]
    assert len(events) == 1
    event = events[0]
    assert (event["actor"], event["request_id"], event["grant_id"]) == ("deploy-bot", created["id"], grant_id)
    assert event["data"].pop("http_request_id")  # the re-issuing request's id, as in its log lines
    assert event["data"] == {"old_jti": old_claims["jti"], "new_jti": new_claims["jti"]}
    assert lost not in json.dumps(event) and new not in json.dumps(event)

    # A token answer must not be cached (RFC 6749 §5.1).
    _, headers, _ = await grantbot.api.exchange("POST", f"/v1/grants/{grant_id}/reissue",
                                                timestamp=int(grantbot.api.now()) + 1)
    assert headers["Cache-Control"] == "no-store"


async def test_only_the_holder_may_reissue_and_only_an_active_handed_over_grant(grantbot, sandbox, clock):
    _, created = await grantbot.api.request_access(STAGING)
    grant_id = created["grant"]["id"]
    status, body = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue", identity="other-bot")
    assert (status, body["error"]) == (404, "not_found")
    assert (await grantbot.api.call("POST", f"/v1/grants/{uuid.uuid4()}/reissue"))[0] == 404
    assert (await grantbot.api.call("POST", "/v1/grants/not-a-grant/reissue"))[0] == 404
    assert (await grantbot.api.introspect(created["grant"]["access_token"]))[1]["active"] is True  # untouched

    # Revoked: refused, and nothing comes back to life.
    assert (await grantbot.api.call("POST", f"/v1/grants/{grant_id}/revoke"))[0] == 200
    status, body = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue",
                                           timestamp=int(grantbot.api.now()) + 1)
    assert status == 409 and body["error"] == "grant_not_active" and "revoked" in body["detail"]

    # Expired: refused, even before the sweep has marked it.
    _, other = await grantbot.api.request_access({**STAGING, "ttl_seconds": 60})
    clock.advance(61)
    status, body = await grantbot.api.call("POST", f"/v1/grants/{other['grant']['id']}/reissue")
    assert status == 409 and body["error"] == "grant_not_active" and "expired" in body["detail"]

    # Approved in Slack but never collected: the read hands it over, not the reissue.
    _, pending = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]})
    card = await eventually(lambda: next((c for c in cards(sandbox) if pending["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    await eventually(lambda: "Approved" in message_text(card))
    grant_id = (await grantbot.app[STORE].grant_for_request(pending["id"])).id  # a read that hands nothing over
    status, body = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue")
    assert status == 409 and body["error"] == "not_handed_over"
    assert f"GET /v1/access-requests/{pending['id']}" in body["detail"]
    _, read = await grantbot.api.get_request(pending["id"], timestamp=int(grantbot.api.now()) + 1)
    assert read["grant"]["access_token"]
    assert (await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue",
                                    timestamp=int(grantbot.api.now()) + 2))[0] == 200


async def test_an_idempotent_retry_says_how_to_recover_the_token_it_cannot_repeat(grantbot):
    key = {"Idempotency-Key": "run-4242"}
    status, first = await grantbot.api.request_access(STAGING, headers=key)
    assert status == 201 and first["grant"]["access_token"] and "hint" not in first
    grant_id = first["grant"]["id"]
    # The answer was lost; the pipeline retries with the same key (signed anew).
    status, replay = await grantbot.api.request_access(STAGING, headers=key, timestamp=int(grantbot.api.now()) + 1)
    assert status == 201 and replay["id"] == first["id"] and "access_token" not in replay["grant"]
    assert f"POST /v1/grants/{grant_id}/reissue" in replay["hint"]
    status, reissued = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue")
    assert status == 200 and (await grantbot.api.introspect(reissued["access_token"]))[1]["active"] is True


async def test_concurrent_reissues_each_answer_and_the_last_committed_is_the_active_token(grantbot):
    _, created = await grantbot.api.request_access(STAGING)
    grant_id = created["grant"]["id"]
    now = int(grantbot.api.now())
    answers = await asyncio.gather(*(
        grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue", timestamp=now + i) for i in range(4)))
    assert [status for status, _ in answers] == [200] * 4
    tokens = {claims(body["access_token"])["jti"]: body["access_token"] for _, body in answers}
    assert len(tokens) == 4

    chain = [e["data"] for e in await audit_export(grantbot) if e["kind"] == "token.reissued"]
    assert len(chain) == 4
    assert chain[0]["old_jti"] == claims(created["grant"]["access_token"])["jti"]
    for before, after in zip(chain, chain[1:]):
        assert after["old_jti"] == before["new_jti"]  # serialised: each replaced the one committed before it
    active = [jti for jti, token in tokens.items() if (await grantbot.api.introspect(token))[1]["active"]]
    assert active == [chain[-1]["new_jti"]]


async def test_a_ci_job_reissues_with_any_valid_token_of_its_identity(bot, issuers, clock):
    """OIDC callers, like HMAC ones: the token that created the request is used up, a later one of the same
    identity (the same repository and environment) may re-issue; another identity's may not."""
    status, created = await call(bot, "POST", "/v1/access-requests", issuers.github.mint(now(clock)),
                                 {"environment": "production", "scopes": ["deploy:api"], "ttl_seconds": 300})
    assert status == 201, created
    path = f"/v1/grants/{created['grant']['id']}/reissue"
    other = issuers.github.mint(now(clock), sub="repo:acme/web:ref:refs/heads/main")
    assert (await call(bot, "POST", path, other))[0] == 404
    status, answer = await call(bot, "POST", path, issuers.github.mint(now(clock)))
    assert status == 200 and answer["expires_at"] == created["grant"]["expires_at"]
    assert await bot.api.introspect(created["grant"]["access_token"]) == (200, {"active": False})
    assert (await bot.api.introspect(answer["access_token"]))[1]["active"] is True
