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
