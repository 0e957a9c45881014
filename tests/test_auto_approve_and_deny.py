"""A pipeline asks; the policy auto-approves (201 + token) or denies (403). No Slack card in either case."""

from __future__ import annotations

import aiohttp
import jwt
import pytest

from bot.domain.models import AccessRequestInput
from bot.domain.usecases.request_access import _body_hash
from tests.support import cards


async def jwks_key(base_url: str, kid: str):
    async with aiohttp.ClientSession() as http, http.get(base_url + "/.well-known/jwks.json") as resp:
        keys = (await resp.json())["keys"]
    jwk = next(k for k in keys if k["kid"] == kid)
    return jwt.PyJWK(jwk).key


async def test_auto_approve_returns_a_verifiable_token_and_posts_no_card(grantbot, sandbox, clock):
    status, body = await grantbot.api.request_access(
        {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 300, "reason": "nightly export"}
    )
    assert status == 201, body
    assert body["status"] == "approved" and body["decided_by"] == "policy"
    grant = body["grant"]
    assert grant["token_type"] == "Bearer" and grant["scope"] == "db:read" and grant["expires_in"] == 300

    token = grant["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    claims = jwt.decode(token, await jwks_key(grantbot.base_url, header["kid"]), algorithms=["ES256"],
                        audience="https://api.acme.example", issuer="https://grantbot.test",
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims["sub"] == claims["client_id"] == "deploy-bot"
    assert claims["scope"] == "db:read" and claims["grant_id"] == grant["id"]
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - clock.now().timestamp()) < 2

    assert await grantbot.api.introspect(token) == (200, {**{k: claims[k] for k in claims}, "active": True,
                                                          "token_type": "Bearer"})
    assert cards(sandbox) == [] and sandbox.messages == []


async def test_deny_rule_wins_even_when_one_scope_would_be_auto_approved(grantbot, sandbox):
    status, body = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read", "db:admin"]})
    assert status == 403, body
    assert body["error"] == "denied" and body["status"] == "denied" and body["rule"] == "no-admin"
    assert "no-admin" in body["detail"]
    assert "grant" not in body
    assert await grantbot.count("grants") == 0
    assert sandbox.messages == []


async def test_nothing_matching_falls_to_the_default_deny(grantbot):
    status, body = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]},
                                                     identity="other-bot")
    assert status == 403 and body["rule"] is None and "default" in body["detail"]


async def test_requested_ttl_defaults_to_the_policy_default_within_the_rule_cap(grantbot):
    status, body = await grantbot.api.request_access({"environment": "staging", "scopes": ["logs:app"]})
    assert status == 201 and body["ttl_seconds"] == 600 and body["grant"]["expires_in"] == 600


async def test_the_token_is_handed_over_once(grantbot):
    _, first = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    status, again = await grantbot.api.get_request(first["id"])
    assert status == 200 and again["status"] == "approved"
    assert again["grant"]["id"] == first["grant"]["id"] and "access_token" not in again["grant"]


async def test_an_idempotent_retry_returns_the_same_request_without_a_second_grant(grantbot):
    body = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}
    headers = {"Idempotency-Key": "run-7777-attempt-1"}
    s1, first = await grantbot.api.request_access(body, headers=headers)
    # A retry signs again; its timestamp differs from the first attempt's (identical signatures are replays).
    s2, second = await grantbot.api.request_access(body, headers=headers, timestamp=int(grantbot.api.now()) + 1)
    assert (s1, s2) == (201, 201)
    assert second["id"] == first["id"] and second["grant"]["id"] == first["grant"]["id"]
    assert "access_token" not in second["grant"]
    assert await grantbot.count("grants") == 1

    status, conflict = await grantbot.api.request_access({**body, "ttl_seconds": 120}, headers=headers,
                                                         timestamp=int(grantbot.api.now()) + 2)
    assert status == 422 and conflict["error"] == "idempotency_conflict"


@pytest.mark.parametrize("body, stored", [
    (AccessRequestInput("staging", ("db:read",)),
     "e83da448e72b283956e43a92c8c4821d2d4175560ce0fa55ff9dece323685070"),
    (AccessRequestInput("production", ("db:write", "deploy:api"), 600, "migration 12", "https://api",
                        {"run": "https://ci/1", "sha": "abc"}),
     "3ba007d22724992fad56cefec76c6ce3e370ba659a5d451535235ddbe81498f9"),
    (AccessRequestInput("production", ("ssh:login",), 60, None, None, {}, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG3 test"),
     "7cf51023b8efa54488c8c30369ff5a2a8adb4e5146d03dd6540508e10473b12f"),
])
def test_an_idempotent_retry_matches_the_body_hash_earlier_versions_stored(body, stored):
    """Hashes as earlier versions wrote them into ``access_requests.body_hash``: a pipeline retrying with its
    Idempotency-Key across an upgrade gets its request back, not a 409."""
    assert _body_hash(body) == stored
