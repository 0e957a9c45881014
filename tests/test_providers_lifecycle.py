"""Real credentials of every kind with an account in a real server — a MariaDB user, a Redis ACL user, a RabbitMQ
user — through grantbot's HTTP API and Slack, as a pipeline and approvers see them: the credential works within the
granted scope and is refused outside it; at expiry and at an early revoke the access is gone, open connections
included, and ``grant.revocation`` is ``verified`` with a message in Slack; a server down at revoke time is
retried, then ``failed`` with one alert; an account left by a crash is found and removed, another's never; the
secret is in no log, audit event or Slack message. (PostgreSQL's are in tests/test_credentials*.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.provider_targets import TARGETS, make_target
from tests.support import TcpProxy, buttons, cards, eventually, message_text
from tests.test_credentials import revocation, verified

STAGING_READ = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}
PROD_WRITE = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 120, "reason": "migration 42"}
KINDS = list(TARGETS)


@pytest.fixture(params=KINDS)
async def target(request, monkeypatch):
    made = await make_target(request.param, monkeypatch)
    yield made
    await made.drop()


async def audit_events(grantbot) -> list[dict]:
    from bot.web.keys import STORE

    return await grantbot.app[STORE].audit_events()


async def test_a_credential_works_within_its_scope_and_ends_at_expiry(target, start_grantbot, tmp_path, clock, sandbox,
                                                                      caplog):
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201, created
    grant = created["grant"]
    [credential] = grant["credentials"]
    assert credential["provider"] == target.name and credential["kind"] == target.kind
    assert credential["username"].startswith(target.prefix) and credential["expires_at"] == grant["expires_at"]
    assert len(credential["password"]) >= 43  # 32 random bytes
    session = await target.use(credential)
    await target.refused_outside(credential, session)
    _, again = await grantbot.api.get_request(created["id"])
    assert "credentials" not in again["grant"]  # handed over once

    clock.advance(61)  # past expires_at: the sweep ends the grant, the revocation round removes the account
    await eventually(lambda: target.session_ended(session), timeout=15)
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert credential["username"] in seen["detail"] and target.name in seen["detail"], seen
    assert await target.login_refused(credential)
    assert credential["username"] not in await target.accounts_made()
    told = await eventually(lambda: next((m for m in sandbox.messages if "Access removed" in m["text"]), None))
    assert credential["username"] in told["text"] and "Checked:" in told["text"], told["text"]
    events = await audit_events(grantbot)
    assert [e["kind"] for e in events if e["kind"].startswith("credentials.")] == ["credentials.issued",
                                                                                   "credentials.revoked"]
    assert credential["password"] not in caplog.text and credential["password"] not in json.dumps(events, default=str)
    assert all(credential["password"] not in json.dumps(m) for m in sandbox.messages)
    await target.close(session)


async def test_an_approved_credential_revoked_early_from_the_card_ends_its_open_session(
        target, start_grantbot, tmp_path, clock, sandbox):
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    status, created = await grantbot.api.request_access(PROD_WRITE)
    assert status == 202
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await target.accounts_made() == []  # nothing before someone approves
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    [credential] = decided["grant"]["credentials"]
    session = await target.use(credential)

    updated = await eventually(lambda: buttons(card) == ["revoke_grant"] and card)
    assert await grantbot.api.click(updated, "revoke_grant", "U0APPROVER") == 200
    await eventually(lambda: target.session_ended(session), timeout=10)
    reply = await eventually(lambda: next((m for m in sandbox.messages if m.get("thread_ts") == card["ts"]
                                           and "Access removed" in m["text"]), None), timeout=10)
    assert credential["username"] in reply["text"], reply["text"]
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert seen["status"] == "verified"
    assert await target.login_refused(credential)
    await target.close(session)


async def test_a_server_down_at_revoke_time_is_retried_then_failed_with_one_alert(
        target, start_grantbot, tmp_path, clock, sandbox, monkeypatch):
    relay = TcpProxy(*target.admin)
    await relay.start()
    monkeypatch.setenv(target.url_env, target.admin_url("127.0.0.1", relay.port))
    try:
        grantbot = await start_grantbot(policy_file=target.policy(tmp_path), revocation_retry_seconds="2,4")
        status, created = await grantbot.api.request_access(STAGING_READ)
        assert status == 201, created
        [credential] = created["grant"]["credentials"]
        session = await target.use(credential)
        relay.cut()
        clock.advance(61)

        seen = await eventually(lambda: _failed_once(grantbot, clock, created["id"]), timeout=20)
        assert seen["status"] == "pending" and "attempt 1 failed" in seen["detail"], seen

        async def failed():
            seen = await revocation(grantbot, clock, created["id"])
            if seen and seen["status"] == "failed":
                return seen
            clock.advance(2)  # on to the next retry
            return None

        seen = await eventually(failed, timeout=30, interval=0.3)
        assert target.name in seen["detail"], seen
        for _ in range(3):  # however long it stays failed, it is said once
            clock.advance(30)
            await asyncio.sleep(0.2)
        await eventually(lambda: [m for m in sandbox.messages if "Revocation failed" in m["text"]])
        await asyncio.sleep(0.3)
        alerts = [m for m in sandbox.messages if "Revocation failed" in m["text"]]
        assert len(alerts) == 1 and credential["username"] in alerts[0]["text"], alerts
        assert "after 3 attempts" in alerts[0]["text"] and credential["password"] not in alerts[0]["text"]
        assert not await target.session_ended(session)  # still open: exactly why it is an alert
        await target.close(session)
    finally:
        await relay.stop()


async def _failed_once(grantbot, clock, request_id):
    seen = await revocation(grantbot, clock, request_id)
    return seen if seen and "failed" in (seen["detail"] or "") else None


async def test_an_account_left_by_a_crash_is_removed_and_anothers_is_never_touched(
        target, start_grantbot, tmp_path, clock):
    """An account made for a grant that was never recorded (grantbot killed in between) is found by reconciliation
    once older than the grace, and removed; an account with the prefix that grantbot did not make is left alone."""
    import uuid

    from bot.domain.credentials import Account
    from bot.web.keys import DEPS

    foreign = target.prefix + "someone_else"
    await target.make_foreign(foreign)
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path), reconcile_interval_seconds=0.2)
    deps = grantbot.app[DEPS]
    spec = deps.policy.provider_named(target.name)
    provider = deps.credentials.provider(spec)
    grant_id = str(uuid.uuid4())
    orphan = Account(grant_id, spec.name, spec.kind, provider.username(grant_id), clock.now(),
                     deps.policy.rule_named("staging-read").credentials[0].params(), spec.target())
    credential = (await provider.issue(orphan, clock.now())).as_json()
    await asyncio.sleep(0.6)  # reconciliations within the grace leave it alone: its grant may be committing
    assert orphan.username in await target.accounts_made()

    clock.advance(180)
    await eventually(lambda: _gone(target, orphan.username), timeout=15)
    assert await target.login_refused(credential)
    assert foreign in await target.accounts_made()
    assert "credentials.orphan_found" in [e["kind"] for e in await audit_events(grantbot)]


async def _gone(target, username: str) -> bool:
    return username not in await target.accounts_made()
