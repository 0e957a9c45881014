"""A staging token never works in production: every token carries its environment, and each environment may give
its tokens their own audience (issue 9 item 1; DESIGN.md "Access tokens"). Checked as a resource server would, with
PyJWT against the JWKS, and through introspection."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import jwt
import pytest

from tests.conftest import POLICIES
from tests.support import cards, eventually, message_text

PRODUCTION = "https://api.acme.example"
STAGING = "https://staging.api.acme.example"


@pytest.fixture
async def grantbot(start_grantbot):
    return await start_grantbot(policy_file=POLICIES / "environments.yaml")


async def jwks(grantbot) -> jwt.PyJWKSet:
    async with grantbot.api.http.get(grantbot.base_url + "/.well-known/jwks.json") as resp:
        return jwt.PyJWKSet.from_dict(await resp.json())


def production_server_accepts(token: str, keys: jwt.PyJWKSet) -> dict:
    """What a production resource server checks (README "Checking a token"): signature, typ, issuer, its own
    audience, expiry, and the environment. Raises ``jwt.InvalidTokenError`` for a token it must refuse."""
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "at+jwt":
        raise jwt.InvalidTokenError("not an access token")
    claims = jwt.decode(token, keys[header["kid"]].key, algorithms=["ES256"], audience=PRODUCTION,
                        issuer="https://grantbot.test",
                        options={"require": ["exp", "iat", "aud", "iss", "sub", "jti", "environment"]})
    if claims["environment"] != "production":
        raise jwt.InvalidTokenError(f"a token for {claims['environment']!r}, not production")
    return claims


async def test_a_staging_token_is_refused_by_production_and_a_production_one_accepted(grantbot, sandbox):
    status, staging = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:write"]})
    assert status == 201, staging
    staging_token = staging["grant"]["access_token"]
    assert staging["grant"]["audience"] == STAGING  # the request named none: its environment's
    keys = await jwks(grantbot)
    with pytest.raises(jwt.InvalidAudienceError):
        production_server_accepts(staging_token, keys)

    status, pending = await grantbot.api.request_access(
        {"environment": "production", "scopes": ["db:write"], "reason": "migration 7"})
    assert status == 202, pending
    card = await eventually(lambda: next((c for c in cards(sandbox) if pending["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    _, approved = await grantbot.api.get_request(pending["id"], wait=10)
    production_token = approved["grant"]["access_token"]
    claims = production_server_accepts(production_token, keys)
    assert claims["environment"] == "production" and claims["aud"] == PRODUCTION and claims["scope"] == "db:write"

    # Introspection says which environment a token is for, as its claims do.
    _, introspected = await grantbot.api.introspect(staging_token)
    assert introspected["active"] is True
    assert (introspected["environment"], introspected["aud"]) == ("staging", STAGING)
    _, introspected = await grantbot.api.introspect(production_token)
    assert (introspected["environment"], introspected["aud"]) == ("production", PRODUCTION)


async def test_a_staging_token_asked_for_production_s_audience_is_still_refused_by_its_environment(grantbot):
    # The staging rule has no match.audiences (policy check warns of exactly this): the request may name
    # production's audience, so aud alone does not tell the token apart; its environment claim does.
    status, body = await grantbot.api.request_access(
        {"environment": "staging", "scopes": ["db:write"], "audience": PRODUCTION})
    assert status == 201, body
    token = body["grant"]["access_token"]
    keys = await jwks(grantbot)
    with pytest.raises(jwt.InvalidTokenError, match="a token for 'staging', not production"):
        production_server_accepts(token, keys)
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == PRODUCTION


async def test_an_environment_without_its_own_audience_gets_the_default_one(grantbot):
    status, body = await grantbot.api.request_access({"environment": "dev", "scopes": ["db:read"]})
    assert status == 201, body
    claims = jwt.decode(body["grant"]["access_token"], options={"verify_signature": False})
    assert (claims["aud"], claims["environment"]) == ("https://shared.acme.example", "dev")


async def test_the_readme_s_resource_server_check_accepts_production_s_token_and_refuses_staging_s(grantbot, sandbox):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Access tokens and what a resource server checks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # the README's example as written; then pointed at this grantbot
    namespace["GRANTBOT"] = "https://grantbot.test"
    namespace["jwks"] = jwt.PyJWKClient(grantbot.base_url + "/.well-known/jwks.json")

    def check(token: str, scope: str = "db:write"):
        return namespace["check"](token, PRODUCTION, "production", scope)

    _, staging = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:write"]})
    with pytest.raises(jwt.InvalidAudienceError):
        await asyncio.to_thread(check, staging["grant"]["access_token"])
    _, named = await grantbot.api.request_access(
        {"environment": "staging", "scopes": ["db:write"], "audience": PRODUCTION, "reason": "names production's"})
    with pytest.raises(jwt.InvalidTokenError, match="a token for staging, not production"):
        await asyncio.to_thread(check, named["grant"]["access_token"])

    _, pending = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]})
    card = await eventually(lambda: next((c for c in cards(sandbox) if pending["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    _, approved = await grantbot.api.get_request(pending["id"], wait=10)
    token = approved["grant"]["access_token"]
    assert (await asyncio.to_thread(check, token))["environment"] == "production"
    with pytest.raises(jwt.InvalidTokenError, match="does not carry db:admin"):
        await asyncio.to_thread(check, token, "db:admin")
