"""RFC 7009 revocation, the holder's own revoke, RFC 8414 metadata, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support import buttons, cards, eventually, message_text


async def form_post(grantbot, path: str, token: str, client=("rs", "rs-secret")):
    import base64

    basic = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
    async with grantbot.api.http.post(grantbot.base_url + path, data={"token": token},
                                      headers={"Authorization": f"Basic {basic}"}) as resp:
        return resp.status, await resp.text()


async def test_a_resource_server_revokes_a_token_and_the_card_says_so(grantbot, sandbox):
    _, created = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"],
                                                    "ttl_seconds": 600})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    await grantbot.api.click(card, "approve", "U0APPROVER")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    token = decided["grant"]["access_token"]

    status, body = await form_post(grantbot, "/oauth/revoke", token, client=("rs", "wrong"))
    assert status == 401 and "invalid_client" in body
    assert (await grantbot.api.introspect(token))[1]["active"] is True
    assert (await form_post(grantbot, "/oauth/revoke", token))[0] == 200
    assert await grantbot.api.introspect(token) == (200, {"active": False})
    assert (await form_post(grantbot, "/oauth/revoke", token))[0] == 200  # again: still 200, nothing more happens
    assert (await form_post(grantbot, "/oauth/revoke", "not-a-token"))[0] == 200  # RFC 7009 §2.2

    reply = await eventually(lambda: next((m for m in sandbox.messages
                                           if m["thread_ts"] == card["ts"] and "revoked" in m["text"]), None))
    assert "revoked by client:rs" in reply["text"]
    await eventually(lambda: "revoked" in message_text(card))
    # approved, token collected, revoked: one reply each
    assert len([m for m in sandbox.messages if m["thread_ts"] == card["ts"]]) == 3
    _, after = await grantbot.api.get_request(created["id"])
    assert after["grant"]["status"] == "revoked"


async def test_the_holder_revokes_its_own_grant_once(grantbot, sandbox):
    _, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60})
    grant_id = created["grant"]["id"]
    status, body = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/revoke")
    assert status == 200 and body["status"] == "revoked"
    status, again = await grantbot.api.call("POST", f"/v1/grants/{grant_id}/revoke", timestamp=int(grantbot.api.now()) + 1)
    assert status == 200 and again["status"] == "revoked" and again["ended_at"] == body["ended_at"]
    assert (await grantbot.api.call("POST", f"/v1/grants/{grant_id}/revoke", identity="other-bot"))[0] == 404
    assert await grantbot.api.introspect(created["grant"]["access_token"]) == (200, {"active": False})
    message = await eventually(lambda: sandbox.messages and sandbox.messages[0])
    assert "revoked by deploy-bot" in message["text"] and buttons(message) == []


async def test_metadata_metrics_and_openapi(grantbot):
    _, approved = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:admin"]})
    for token in (approved["grant"]["access_token"], approved["grant"]["access_token"], "not-a-token"):
        await grantbot.api.introspect(token)
    http, base = grantbot.api.http, grantbot.base_url
    async with http.get(base + "/.well-known/oauth-authorization-server") as resp:
        meta = await resp.json()
    assert meta["issuer"] == "https://grantbot.test"
    assert meta["jwks_uri"] == "https://grantbot.test/.well-known/jwks.json"
    assert meta["revocation_endpoint"].endswith("/oauth/revoke")
    async with http.get(base + "/metrics") as resp:
        metrics = await resp.text()
    assert 'grantbot_access_requests_total{status="approved"} 1.0' in metrics
    assert 'grantbot_access_requests_total{status="denied"} 1.0' in metrics
    assert 'grantbot_introspections_total{active="true"} 2.0' in metrics
    assert 'grantbot_introspections_total{active="false"} 1.0' in metrics
    assert ('grantbot_http_request_duration_seconds_count{method="POST",route="/oauth/introspect",status="200"} 3.0'
            in metrics)
    assert ('grantbot_http_request_duration_seconds_count{method="POST",route="/v1/access-requests",status="403"} 1.0'
            in metrics)
    async with http.get(base + "/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    served = {(r.method, r.resource.canonical) for r in grantbot.app.router.routes() if r.method != "HEAD"}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert doc["components"]["schemas"]["AccessRequest"]["required"] == ["environment", "scopes"]


async def scrape(grantbot) -> dict[str, float]:
    async with grantbot.api.http.get(grantbot.base_url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_metrics_count_requests_once_and_show_what_waits_including_a_message_slack_keeps_failing(
        grantbot, sandbox, clock):
    sandbox.inject("chat.postMessage", "server_error", times=None, seconds=120)  # Slack fails every post
    body = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 900}
    key = {"Idempotency-Key": "run-42"}
    assert (await grantbot.api.request_access(body, headers=key))[0] == 201
    # The pipeline retries (signed anew): the same request, not a second one.
    assert (await grantbot.api.request_access(body, headers=key, timestamp=int(grantbot.api.now()) + 1))[0] == 201
    status, pending = await grantbot.api.request_access(
        {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60, "reason": "hotfix"})
    assert status == 202

    async def card_refused() -> bool:  # the worker has had Slack's 500 and put the card back, from its clock's now
        return await grantbot.count("outbox WHERE kind = 'card.post' AND last_error LIKE 'Slack answered 500%' "
                                    "AND locked_until IS NULL") == 1
    await eventually(card_refused)
    clock.advance(400)  # the card has waited 400 s, Slack failing all along

    metrics = await scrape(grantbot)
    assert metrics["grantbot_access_requests_total{status=approved}"] == 1.0
    assert metrics["grantbot_access_requests_total{status=pending}"] == 1.0
    assert metrics["grantbot_database_up"] == 1.0
    assert metrics["grantbot_pending_requests"] == 1.0
    assert metrics["grantbot_active_grants"] == 1.0
    assert metrics["grantbot_outbox_unsent"] >= 1.0  # the card (and the auto-approval's notice, if any)
    assert metrics["grantbot_outbox_oldest_unsent_age_seconds"] >= 400.0

    sandbox.faults.clear()  # Slack recovers: the card goes out, nothing waits any more
    # A retry the worker made after the clock moved (due again at once, refused once more) is due within its
    # backoff, at most 30 s for a card; the clock stands still otherwise.
    clock.advance(31)
    await eventually(lambda: any(pending["id"] in message_text(c) for c in cards(sandbox)), timeout=20)

    async def drained():
        metrics = await scrape(grantbot)
        return metrics["grantbot_outbox_unsent"] == 0 and metrics
    metrics = await eventually(drained, timeout=20)
    assert metrics["grantbot_outbox_oldest_unsent_age_seconds"] == 0.0
    assert metrics["grantbot_slack_messages_total{result=sent}"] >= 1.0


async def test_an_introspection_client_whose_secret_has_special_characters_may_form_encode_it(start_grantbot):
    """RFC 6749 §2.3.1: OAuth clients form-urlencode the id and secret before Basic's base64; clients that do
    not are accepted too. Anything else is still refused."""
    import base64
    from urllib.parse import quote_plus

    grantbot = await start_grantbot(introspection_clients="rs:rs-secret,edge proxy:p+ss w%rd:é")
    status, answer = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert status == 201, answer
    token = answer["grant"]["access_token"]

    async def introspect(credentials: str) -> int:
        basic = base64.b64encode(credentials.encode()).decode()
        async with grantbot.api.http.post(grantbot.base_url + "/oauth/introspect", data={"token": token},
                                          headers={"Authorization": f"Basic {basic}"}) as resp:
            return resp.status

    assert await introspect(f"{quote_plus('edge proxy')}:{quote_plus('p+ss w%rd:é')}") == 200  # as RFC 6749 says
    assert await introspect("edge proxy:p+ss w%rd:é") == 200  # as sent
    assert await introspect(f"{quote_plus('edge proxy')}:{quote_plus('p+ss w%rd:e')}") == 401
    assert await introspect("rs:rs-secret") == 200
    padded = base64.b64encode("edge proxy:p+ss w%rd:é".encode()).decode()
    assert padded.endswith("=")  # 23 bytes: some clients leave the padding out
    async with grantbot.api.http.post(grantbot.base_url + "/oauth/introspect", data={"token": token},
                                      headers={"Authorization": f"Basic  {padded.rstrip('=')}"}) as resp:
        assert resp.status == 200
