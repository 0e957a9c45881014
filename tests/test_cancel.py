"""``POST /v1/access-requests/{id}/cancel``: a requester withdraws its pending request, once, on both databases,
however many cancels race; a request decided first is returned as it stands."""

from __future__ import annotations

import asyncio
import secrets

from sqlalchemy import text

from tests.support import cards, eventually, message_text

PENDING = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 600, "reason": "migration"}


async def audit_kinds(grantbot, request_id: str) -> list[str]:
    async with grantbot.engine.connect() as conn:
        return list((await conn.execute(text("SELECT kind FROM audit_events WHERE request_id = :id ORDER BY id"),
                                        {"id": request_id})).scalars())


async def test_racing_cancels_cancel_once_and_the_card_says_so(grantbot, sandbox):
    status, created = await grantbot.api.request_access(PENDING)
    assert status == 202
    path = f"/v1/access-requests/{created['id']}/cancel"
    # Distinct nonces: five identical signatures in one second would be one request and four replays.
    answers = await asyncio.gather(*(grantbot.api.call("POST", path, nonce=secrets.token_hex(16)) for _ in range(5)))
    assert {(code, body["status"]) for code, body in answers} == {(200, "cancelled")}
    assert all("grant" not in body and body["decided_by"] == "deploy-bot" for _, body in answers)
    assert (await audit_kinds(grantbot, created["id"])).count("request.cancelled") == 1
    await eventually(lambda: any(created["id"] in message_text(c) and "*Cancelled* by deploy-bot" in message_text(c)
                                 for c in cards(sandbox)))


async def test_a_request_decided_first_is_returned_as_it_stands_without_its_token(grantbot):
    status, approved = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert status == 201
    code, body = await grantbot.api.call("POST", f"/v1/access-requests/{approved['id']}/cancel")
    assert code == 200 and body["status"] == "approved" and "access_token" not in body["grant"]
    assert "request.cancelled" not in await audit_kinds(grantbot, approved["id"])


async def test_another_identitys_request_or_an_unknown_one_is_not_found(grantbot):
    _, created = await grantbot.api.request_access(PENDING)
    path = f"/v1/access-requests/{created['id']}/cancel"
    assert (await grantbot.api.call("POST", path, identity="other-bot"))[0] == 404
    assert (await grantbot.api.call("POST", "/v1/access-requests/not-an-id/cancel"))[0] == 404
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
