"""Introspection answers from a short-lived cache of active grants, yet a revocation is seen at once on the replica
that made it and within a second on every other one (two replicas on one database, one injected clock)."""

from __future__ import annotations

from bot.store.recent_grants import FRESH_SECONDS

BODY = {"scopes": ["db:read"], "environment": "staging", "ttl_seconds": 600, "reason": "cache test"}


async def test_a_revocation_ends_introspection_at_once_here_and_within_a_second_on_other_replicas(
        start_grantbot, clock):
    here, there = await start_grantbot(), await start_grantbot()
    status, answer = await here.api.request_access(BODY)
    assert status == 201, answer
    token, grant_id = answer["grant"]["access_token"], answer["grant"]["id"]
    for replica in (here, there, here, there):  # the second round may answer from each replica's cache
        assert (await replica.api.introspect(token))[1]["active"] is True

    status, _ = await here.api.call("POST", f"/v1/grants/{grant_id}/revoke")
    assert status == 200
    assert (await here.api.introspect(token))[1] == {"active": False}  # at once on the replica that revoked
    clock.advance(FRESH_SECONDS)
    assert (await there.api.introspect(token))[1] == {"active": False}  # the other one, within a second


async def test_a_reissued_token_replaces_the_old_one_in_introspection_at_once(grantbot):
    status, answer = await grantbot.api.request_access(BODY)
    assert status == 201, answer
    old, grant_id = answer["grant"]["access_token"], answer["grant"]["id"]
    assert (await grantbot.api.introspect(old))[1]["active"] is True
    status, reissued = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/reissue")
    assert status in (200, 201), reissued
    assert (await grantbot.api.introspect(old))[1] == {"active": False}
    assert (await grantbot.api.introspect(reissued["access_token"]))[1]["active"] is True


async def test_a_token_is_inactive_from_its_own_exp_even_while_its_grant_runs_a_moment_longer(grantbot, clock):
    """A token's exp is whole seconds (RFC 7519 NumericDate, issued_at rounded down), its grant ends at the exact
    issued_at + TTL: introspection must not say active with an exp it shows as past."""
    import jwt

    clock.advance((0.5 - clock.now().timestamp() % 1) % 1)  # issued at a half second: exp is 0.5 s before the end
    status, answer = await grantbot.api.request_access(BODY)
    assert status == 201, answer
    token = answer["grant"]["access_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    clock.advance(exp - clock.now().timestamp() - 0.1)
    assert (await grantbot.api.introspect(token))[1]["active"] is True
    clock.advance(0.2)  # past exp, before the grant's expires_at
    assert (await grantbot.api.introspect(token))[1] == {"active": False}
