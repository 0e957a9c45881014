"""Bad input gets a 4xx with a sentence a person can act on, and nothing is written (table-driven)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from sqlalchemy import text

from tests.support import hmac_headers

GOOD = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 600, "reason": "migration"}

BAD_BODIES = [
    # (name, raw body, status, error code, words the detail must contain)
    ("not json", b"{environment: production", 422, "invalid_request", "not valid JSON"),
    ("a list", b"[]", 422, "invalid_request", "JSON object"),
    ("unknown field", json.dumps({**GOOD, "role": "admin"}).encode(), 422, "invalid_request", "role: is not a field"),
    ("no scopes", json.dumps({**GOOD, "scopes": []}).encode(), 422, "invalid_request", "at least one scope"),
    ("scopes missing", json.dumps({"environment": "production"}).encode(), 422, "invalid_request", "scopes"),
    ("scope with a space", json.dumps({**GOOD, "scopes": ["db:write db:admin"]}).encode(), 422, "invalid_request",
     "without spaces"),
    ("scopes as a string", json.dumps({**GOOD, "scopes": "db:write"}).encode(), 422, "invalid_request", "scopes"),
    ("ttl above the cap", json.dumps({**GOOD, "ttl_seconds": 7200}).encode(), 422, "ttl_too_long", "1800 s cap"),
    ("ttl not a number", json.dumps({**GOOD, "ttl_seconds": "600"}).encode(), 422, "invalid_request",
     'ttl_seconds: Input should be a valid integer, not a string ("600")'),
    ("negative ttl", json.dumps({**GOOD, "ttl_seconds": -5}).encode(), 422, "invalid_request", "positive"),
    ("unknown environment", json.dumps({**GOOD, "environment": "prod"}).encode(), 422, "unknown_environment",
     "production, staging"),
    ("context not strings", json.dumps({**GOOD, "context": {"run": 42}}).encode(), 422, "invalid_request", "context"),
    # The actor is kept in a 255-character column: longer was a 500 on PostgreSQL.
    ("actor too long", json.dumps({**GOOD, "context": {"actor": "a" * 300}}).encode(), 422, "invalid_request",
     "at most 255"),
    ("too large", json.dumps({**GOOD, "reason": "x" * 70_000}).encode(), 413, "body_too_large", "64 KiB"),
]


@pytest.mark.parametrize("name,raw,status,code,words", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_body_is_refused_with_a_reason_and_nothing_is_stored(grantbot, sandbox, name, raw, status, code,
                                                                         words):
    got, body = await grantbot.api.request_access(None, raw=raw)
    assert got == status, body
    assert body["error"] == code
    assert words in body["detail"]
    assert body["detail"].endswith(".")
    assert await grantbot.count("access_requests") == 0
    assert await grantbot.count("outbox") == 0
    assert sandbox.messages == []


async def assert_nothing_stored(grantbot) -> None:
    """Nothing but the refusal's own audit event: no request, no message, no replay record."""
    for table in ("access_requests", "outbox", "used_signatures", "grants"):
        assert await grantbot.count(table) == 0, table
    async with grantbot.engine.connect() as conn:
        kinds = set((await conn.execute(text("SELECT kind FROM audit_events"))).scalars())
    assert kinds <= {"auth.refused"}, kinds


async def test_an_unsigned_request_is_refused(grantbot):
    status, body = await grantbot.api.request_access(GOOD, sign=False)
    assert status == 401 and body["error"] == "unauthenticated" and "Sign the request" in body["detail"]
    assert "X-Grantbot-Identity, X-Grantbot-Timestamp and X-Grantbot-Signature are missing" in body["detail"]
    await assert_nothing_stored(grantbot)


async def test_a_request_missing_one_header_is_told_which(grantbot):
    status, body = await grantbot.api.request_access(GOOD, sign=False, headers={
        "X-Grantbot-Identity": "deploy-bot", "X-Grantbot-Timestamp": str(int(grantbot.api.now()))})
    assert status == 401 and body["detail"].startswith("Sign the request: X-Grantbot-Signature is missing;")
    await assert_nothing_stored(grantbot)


async def test_a_wrong_signature_is_refused(grantbot):
    status, body = await grantbot.api.request_access(GOOD, secret="guessed")
    assert status == 401 and "does not match" in body["detail"]
    await assert_nothing_stored(grantbot)


async def test_an_unknown_identity_gets_the_same_answer_as_a_wrong_signature(grantbot):
    status, body = await grantbot.api.request_access(GOOD, identity="nobody", secret="whatever")
    assert status == 401 and "does not match" in body["detail"]
    await assert_nothing_stored(grantbot)


async def test_a_body_changed_after_signing_is_refused(grantbot):
    signed = json.dumps(GOOD).encode()
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", signed, timestamp=int(grantbot.api.now()))
    tampered = json.dumps({**GOOD, "scopes": ["db:read"]}).encode()
    status, _ = await grantbot.api.request_access(None, raw=tampered, sign=False, headers=headers)
    assert status == 401
    await assert_nothing_stored(grantbot)


@pytest.mark.parametrize("skew", [-301, 301])
async def test_a_stale_or_future_timestamp_is_refused(grantbot, skew):
    status, body = await grantbot.api.request_access(GOOD, timestamp=int(grantbot.api.now()) + skew)
    assert status == 401 and "300 s" in body["detail"]
    await assert_nothing_stored(grantbot)


async def test_a_replayed_signature_is_refused(grantbot):
    raw = json.dumps({"environment": "staging", "scopes": ["db:read"]}).encode()
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()))
    first, _ = await grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
    again, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
    assert (first, again) == (201, 401) and "already used" in body["detail"]
    assert await grantbot.count("grants") == 1


@pytest.mark.parametrize("body, created", [({"environment": "staging", "scopes": ["db:read"]}, 201),
                                           ({"environment": "production", "scopes": ["db:write"]}, 202)])
async def test_one_signed_request_sent_many_times_at_once_is_accepted_once(grantbot, sandbox, body, created):
    """The signature's replay record is written in the same transaction as the request (often in one group with
    its copies): the first copy is the request, every other one a replay that stores nothing."""
    raw = json.dumps(body).encode()
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()))
    answers = await asyncio.gather(*(grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
                                     for _ in range(8)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [created] + [401] * 7, answers
    assert all("already used" in answer["detail"] for status, answer in answers if status == 401)
    assert await grantbot.count("access_requests") == 1 and await grantbot.count("used_signatures") == 1
    assert await grantbot.count("grants") == (1 if created == 201 else 0)
    assert await grantbot.count("outbox") == (0 if created == 201 else 1)  # one card to post
    async with grantbot.engine.connect() as conn:
        refused = (await conn.execute(text(
            "SELECT COUNT(*) FROM audit_events WHERE kind = 'auth.refused'"))).scalar_one()
    assert refused >= 1  # the refusals are audited (repeats within a minute are counted in one event)


@pytest.mark.parametrize("raw", [
    b'{"environment": "moon", "scopes": ["db:read"]}',  # the use case refuses it (unknown environment)
    b'{"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 999999}',  # above the rule's TTL
    b'{"environment": "staging"',  # the route refuses it (not JSON)
])
async def test_a_refused_request_uses_its_signature_up(grantbot, raw):
    """A request refused with a 4xx stores nothing but its signature's replay record: sent again, it is a replay."""
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()))
    first, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
    assert 400 <= first < 500 and first != 401, body
    again, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
    assert again == 401 and "already used" in body["detail"], body
    assert await grantbot.count("access_requests") == 0 and await grantbot.count("used_signatures") == 1


async def test_an_idempotent_retry_must_sign_again(grantbot):
    raw = json.dumps({"environment": "staging", "scopes": ["db:read"]}).encode()
    key = {"Idempotency-Key": "deploy-42"}
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()))
    first, created = await grantbot.api.request_access(None, raw=raw, sign=False, headers={**headers, **key})
    assert first == 201
    again, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers={**headers, **key})
    assert again == 401 and "already used" in body["detail"]
    resigned = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()),
                            nonce="retry-" + "a" * 16)
    status, replayed = await grantbot.api.request_access(None, raw=raw, sign=False, headers={**resigned, **key})
    assert status == 201 and replayed["id"] == created["id"] and "access_token" not in replayed["grant"]
    assert await grantbot.count("access_requests") == 1 and await grantbot.count("used_signatures") == 2


async def test_identical_requests_in_one_second_with_different_nonces_are_not_replays(grantbot):
    """Parallel CI jobs (a matrix build) sign the same request in the same second; a nonce tells them apart."""
    raw = json.dumps({"environment": "staging", "scopes": ["db:read"]}).encode()
    second = int(grantbot.api.now())
    signed = [hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=second, nonce=nonce)
              for nonce in ("job-1-" + "a" * 16, "job-2-" + "b" * 16)]
    answers = [await grantbot.api.request_access(None, raw=raw, sign=False, headers=h) for h in signed]
    assert [status for status, _ in answers] == [201, 201], answers
    assert answers[0][1]["id"] != answers[1][1]["id"]
    # Replaying one of them, nonce and all, is still refused.
    status, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers=signed[1])
    assert status == 401 and "already used" in body["detail"]
    # The nonce is signed: another nonce under the same signature does not match.
    status, body = await grantbot.api.request_access(None, raw=raw, sign=False,
                                                     headers={**signed[0], "X-Grantbot-Nonce": "c" * 32})
    assert status == 401 and "{timestamp}:{nonce}" in body["detail"], body
    assert await grantbot.count("grants") == 2


@pytest.mark.parametrize("nonce", ["", "short", "x" * 65, "has space in it 0123", "dot.is.not.allowed.here",
                                   "\u00e9" * 16])
async def test_a_malformed_nonce_is_refused_with_what_a_nonce_must_be(grantbot, nonce):
    raw = json.dumps(GOOD).encode()
    headers = hmac_headers("deploy-bot", "POST", "/v1/access-requests", raw, timestamp=int(grantbot.api.now()),
                           nonce=nonce)
    headers["X-Grantbot-Nonce"] = nonce.encode().decode("latin-1")
    status, body = await grantbot.api.request_access(None, raw=raw, sign=False, headers=headers)
    assert status == 401 and body["error"] == "unauthenticated", body
    assert "X-Grantbot-Nonce must be 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'" in body["detail"]
    for table in ("access_requests", "used_signatures"):
        assert await grantbot.count(table) == 0, table


async def test_the_signature_covers_the_query_string(grantbot):
    _, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    path = f"/v1/access-requests/{created['id']}"
    headers = hmac_headers("deploy-bot", "GET", path + "?wait=0", b"", timestamp=int(grantbot.api.now()))
    status, _ = await grantbot.api.call("GET", path + "?wait=5", sign=False, headers=headers)
    assert status == 401


async def test_an_unknown_request_id_is_404(grantbot):
    status, body = await grantbot.api.get_request("00000000-0000-0000-0000-000000000000")
    assert status == 404 and body["error"] == "not_found"


async def test_another_identitys_request_is_404(grantbot):
    _, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    status, body = await grantbot.api.get_request(created["id"], identity="other-bot")
    assert status == 404 and "grant" not in body


@pytest.mark.parametrize("wait", ["abc", "61", "-1"])
async def test_a_bad_wait_is_refused(grantbot, wait):
    _, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    status, body = await grantbot.api.call("GET", f"/v1/access-requests/{created['id']}?wait={wait}")
    assert status == 422 and "wait" in body["detail"]


async def test_unknown_routes_and_methods_answer_json(grantbot):
    status, body = await grantbot.api.call("GET", "/v1/nope")
    assert status == 404 and body["error"] == "not_found"
    status, body = await grantbot.api.call("DELETE", "/v1/access-requests")
    assert status == 405 and body["error"] == "method_not_allowed"


async def test_introspection_needs_a_known_client(grantbot):
    _, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    token = created["grant"]["access_token"]
    assert (await grantbot.api.introspect(token, client=("rs", "wrong")))[0] == 401
    assert (await grantbot.api.introspect(token, client=("stranger", "rs-secret")))[0] == 401
    assert await grantbot.api.introspect("not-a-jwt") == (200, {"active": False})
    assert await grantbot.api.introspect(token[:-4] + "AAAA") == (200, {"active": False})


SLACK_GARBAGE = [
    # (name, body bytes, extra headers, signed?, expected status)
    ("truncated payload, unsigned", b"payload=%7B", {}, False, 401),
    ("truncated payload, signed", b"payload=%7B", {}, True, 400),
    ("not UTF-8", b"payload=\xff\xfe", {}, False, 400),
    ("timestamp not a number", b"payload=%7B%7D", {"X-Slack-Request-Timestamp": "abc"}, False, 401),
    ("non-ASCII signature", b"payload=%7B%7D", {"X-Slack-Signature": "v0=\u00e9" + "a" * 63}, False, 401),
    ("no actions, signed", b"payload=" + json.dumps({"type": "block_actions", "actions": [],
                                                     "user": {"id": "U0APPROVER"}}).encode(), {}, True, 400),
]


@pytest.mark.parametrize("name,raw,headers,signed,status", SLACK_GARBAGE, ids=[g[0] for g in SLACK_GARBAGE])
async def test_garbage_to_the_slack_endpoint_is_refused_cleanly(grantbot, name, raw, headers, signed, status, caplog):
    from tests.support import SIGNING_SECRET, slack_signed

    all_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        all_headers.update(slack_signed(raw.decode(), secret=SIGNING_SECRET))
    else:
        all_headers.update({"X-Slack-Request-Timestamp": str(int(grantbot.api.now())), "X-Slack-Signature": "v0=00"})
    all_headers.update({k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()})
    async with grantbot.api.http.post(grantbot.base_url + "/slack/events", data=raw, headers=all_headers) as resp:
        assert resp.status == status
    assert "Traceback" not in caplog.text and "payload=" not in caplog.text


async def test_an_idempotency_key_that_is_not_printable_ascii_is_refused(grantbot):
    raw = json.dumps({"environment": "staging", "scopes": ["db:read"]}).encode()
    for key in ("k\u00ff", "a" * 256, "tab\there"):
        status, body = await grantbot.api.request_access(None, raw=raw, headers={"Idempotency-Key": key},
                                                         timestamp=int(grantbot.api.now()) + len(key))
        assert status == 422 and "Idempotency-Key" in body["detail"]
    assert await grantbot.count("access_requests") == 0


async def test_a_body_that_cannot_be_decoded_is_400(grantbot):
    raw = b"this is not gzip"
    status, body = await grantbot.api.request_access(None, raw=raw, headers={"Content-Encoding": "gzip"})
    assert status == 400 and body["error"] == "unreadable_body"


async def exchange_raw(base_url: str, request: bytes) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it (so it is done with them)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_a_gzip_body_that_is_not_gzip_without_credentials_is_400_and_at_most_a_log_line(grantbot, caplog):
    caplog.set_level(logging.INFO)
    body = b"this is not gzip at all" * 10
    answer = await exchange_raw(grantbot.base_url, b"POST /v1/access-requests HTTP/1.1\r\nHost: grantbot\r\n"
                                b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(payload)["error"] == "unreadable_body"
    # The access log line is not a report of the failure; the sweep's scheduler may warn of a skipped run under load.
    logged = [r for r in caplog.records
              if not r.name.startswith(("aiosqlite", "sqlalchemy", "asyncio", "apscheduler", "bot.web.access"))]
    assert len(logged) <= 1 and "Traceback" not in caplog.text and not any(r.exc_info for r in logged), caplog.text
    await assert_nothing_stored(grantbot)


@pytest.mark.parametrize("authorization,content_type,body", [
    ("Basic \u00e9", "application/x-www-form-urlencoded", b"token=x"),
    (None, "application/x-www-form-urlencoded; charset=bogus", b"token=x"),
    (None, "multipart/form-data; boundary=x", b"--x\r\nbroken"),
])
async def test_introspection_refuses_malformed_requests_cleanly(grantbot, authorization, content_type, body):
    import base64

    basic = "Basic " + base64.b64encode(b"rs:rs-secret").decode()
    headers = {"Authorization": (authorization or basic).encode().decode("latin-1"), "Content-Type": content_type}
    async with grantbot.api.http.post(grantbot.base_url + "/oauth/introspect", data=body, headers=headers) as resp:
        assert resp.status == (401 if authorization else 400)


async def test_a_replay_record_refuses_until_stale_and_the_sweep_forgets_stale_ones(database_url):
    """The record of a used signature is written with one conditional upsert: a fresh record refuses (a replay,
    even when many try at once: exactly one wins), a stale one is taken over, and the sweep deletes stale ones."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from bot.store.engine import create_engine
    from bot.store.repository import SqlStore
    from bot.store.schema import upgrade

    engines = [create_engine(database_url) for _ in range(2)]  # two replicas
    await upgrade(engines[0])
    stores = [SqlStore(engine) for engine in engines]
    try:
        now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
        until = now + timedelta(seconds=600)
        wins = await asyncio.gather(*(stores[i % 2].remember_signature("a" * 64, until, now) for i in range(8)))
        assert sorted(wins) == [False] * 7 + [True]
        assert not await stores[1].remember_signature("a" * 64, until, until)  # not stale yet at its expiry
        later = until + timedelta(seconds=1)
        assert await stores[0].remember_signature("a" * 64, later + timedelta(seconds=600), later)  # stale: taken
        assert not await stores[1].remember_signature("a" * 64, later + timedelta(seconds=600), later)
        assert await stores[0].remember_signature("b" * 64, until, now)
        assert await stores[0].forget_stale_signatures(later, 100) == 1  # b; a was renewed
        assert await stores[0].forget_stale_signatures(later, 100) == 0
        assert not await stores[0].remember_signature("a" * 64, later + timedelta(seconds=600), later)
    finally:
        for engine in engines:
            await engine.dispose()


MALFORMED_REQUESTS = [
    # (name, raw request, status, error code)
    ("a 10 KB header line", b"GET /healthz HTTP/1.1\r\nHost: grantbot\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
     431, "headers_too_large"),
    ("a 10 KB URL", b"GET /healthz?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: grantbot\r\n\r\n", 431, "headers_too_large"),
    ("200 headers", b"GET /healthz HTTP/1.1\r\nHost: grantbot\r\n"
     + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431, "headers_too_large"),
    ("a header without a colon", b"GET /healthz HTTP/1.1\r\nHost: grantbot\r\nno colon here\r\n\r\n",
     400, "bad_request"),
]


@pytest.mark.parametrize("name, raw, status, code", MALFORMED_REQUESTS, ids=[m[0] for m in MALFORMED_REQUESTS])
async def test_a_request_the_http_parser_refuses_gets_the_json_error_shape_and_one_log_line(grantbot, caplog, name,
                                                                                             raw, status, code):
    caplog.set_level(logging.INFO)
    answer = await exchange_raw(grantbot.base_url, raw)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] %d " % status, head), answer[:300]
    assert b"Content-Type: application/json" in head
    body = json.loads(payload)
    assert body["error"] == code and body["detail"].endswith("."), body
    logged = [r for r in caplog.records if r.name.startswith(("aiohttp", "bot"))]
    assert len(logged) == 1 and not logged[0].exc_info and "Traceback" not in caplog.text, caplog.text
    assert "aaaa" not in caplog.text and "no colon" not in caplog.text  # the request's content is not logged
