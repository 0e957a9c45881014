"""Credentials exist only for an active grant, whatever happened: an account made by a process that died before
recording it is found and revoked, a role grantbot did not make is never touched, two hand-overs never hand out a
password that does not work, a reissue resets the password, a policy reload does not strand a revocation, and the
password is in no log line, audit event, Slack message or database column."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from bot.domain.credentials import Account
from bot.domain.errors import CredentialsRefused, CredentialsUnavailable
from bot.domain.usecases.issue_credentials import reset_credentials
from bot.providers.postgresql import scram_verifier
from bot.web.keys import DEPS, RELOADER, STORE
from tests.conftest import POLICIES
from tests.pg_target import target  # noqa: F401  (fixture)
from tests.support import cards, eventually, message_text
from tests.test_credentials import (PROD_WRITE, STAGING_READ, login_refused, session_ended, verified,
                                    verifier_matches)


async def orphan(target, *, created: datetime, marker: bool = True, login: bool = True) -> tuple[str, str]:
    """A role as a crash between making it and recording its grant leaves it: grantbot's name and marker, a
    password, membership in the read role; no grant. Returns (role, its grant id)."""
    grant_id = str(uuid.uuid4())
    role = target.prefix + grant_id.replace("-", "")
    comment = (f"grantbot grant={grant_id} provider=orders-db created={created:%Y-%m-%dT%H:%M:%SZ}" if marker
               else "the reporting service account")
    conn = await target.admin()
    try:
        await conn.execute(
            f'''CREATE ROLE "{role}" {'LOGIN' if login else 'NOLOGIN'} PASSWORD '{scram_verifier("pw")}'
                VALID UNTIL '{(created + timedelta(hours=1)).isoformat()}' IN ROLE "{target.read_role}";
                COMMENT ON ROLE "{role}" IS '{comment}' ''')
    finally:
        await conn.close()
    return role, grant_id


async def test_an_account_left_by_a_crash_is_revoked_at_start_and_a_young_one_after_the_grace(
        target, start_grantbot, tmp_path, clock, sandbox):
    old, old_grant = await orphan(target, created=clock.now() - timedelta(minutes=10))
    young, _ = await orphan(target, created=clock.now())
    session = await target.login({"username": old, "password": "pw", "database": target.database})

    grantbot = await start_grantbot(policy_file=target.policy(tmp_path), reconcile_interval_seconds=0.2)
    await eventually(lambda: session_ended(session), timeout=10)
    await eventually(lambda: _gone(target, old), timeout=10)

    async def audited(kind):
        return [e for e in await grantbot.app[STORE].audit_events() if e["kind"] == kind]

    revoked = await eventually(lambda: audited("credentials.revoked"))
    found = await audited("credentials.orphan_found")
    assert [e["grant_id"] for e in found] == [old_grant] and found[0]["data"]["username"] == old
    assert [e["data"]["summary"] for e in revoked] == [f"role {old} dropped, 1 session ended"]

    await asyncio.sleep(1)  # several reconciliations: the young one may be a grant committing right now
    assert await target.role(young) is not None
    clock.advance(180)  # past the grace: nobody recorded it, so it is an orphan too
    await eventually(lambda: _gone(target, young), timeout=10)
    assert not [m for m in sandbox.messages if "Access removed" in m["text"]]  # nobody asked for these in Slack
    await session.close()


async def _gone(target, role: str) -> bool:
    return await target.role(role) is None


async def test_a_role_grantbot_did_not_make_is_never_altered_or_dropped(target, start_grantbot, tmp_path, clock):
    theirs, _ = await orphan(target, created=clock.now() - timedelta(hours=1), marker=False)
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path), reconcile_interval_seconds=0.1)
    await asyncio.sleep(1)  # several reconciliations
    assert await target.role(theirs) is not None

    # The provider refuses to touch it, whichever step is asked: a name taken by someone else is refused at issue.
    deps = grantbot.app[DEPS]
    provider = deps.credentials.provider(deps.policy.provider_named("orders-db"))
    taken = Account(str(uuid.uuid4()), "orders-db", "postgresql", theirs, clock.now() + timedelta(minutes=5),
                    {"roles": [target.read_role]})
    for step in (provider.issue(taken, clock.now()), provider.create(taken, clock.now()), provider.revoke(taken)):
        with pytest.raises(CredentialsRefused, match="grantbot did not make it"):
            await step
    role = await target.role(theirs)
    assert role["marker"] == "the reporting service account" and role["rolcanlogin"]
    assert theirs not in [a.username for a in await provider.accounts()]


async def test_two_polls_at_once_hand_over_one_token_whose_password_works(target, start_grantbot, tmp_path, sandbox,
                                                                        clock):
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    _, created = await grantbot.api.request_access(PROD_WRITE)
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    await eventually(lambda: target.roles_made())

    async def approved() -> bool:  # the role is made before the approval commits
        return await grantbot.count("access_requests WHERE status = 'approved'") == 1
    await eventually(approved)
    answers = await asyncio.gather(*(grantbot.api.get_request(created["id"], wait=w) for w in (1, 2, 3, 4)))
    handed = [a["grant"] for _, a in answers if "credentials" in a["grant"]]
    assert len(handed) == 1 and all("access_token" not in a["grant"] for _, a in answers if a["grant"] is not handed[0])
    [credential] = handed[0]["credentials"]
    assert verifier_matches((await target.role(credential["username"]))["rolpassword"], credential["password"])


async def test_reset_credentials_on_reissue_gives_a_new_password_and_the_old_one_stops_working(
        target, start_grantbot, tmp_path, clock):
    metrics = ("  - name: staging-metrics\n    match: {environment: staging, scopes: [\"metrics:read\"]}\n"
               "    decision: auto_approve\n")
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path, extra_rules=metrics))
    deps = grantbot.app[DEPS]
    _, created = await grantbot.api.request_access(STAGING_READ)
    [first] = created["grant"]["credentials"]
    grant = await deps.store.get_grant(created["grant"]["id"])

    [second] = [c.as_json() for c in await reset_credentials(deps, grant)]
    assert second["username"] == first["username"] and second["password"] != first["password"]
    stored = (await target.role(first["username"]))["rolpassword"]
    assert verifier_matches(stored, second["password"]) and not verifier_matches(stored, first["password"])
    session = await target.login(second)
    assert await session.fetchval("SELECT count(*) FROM orders") == 2
    await session.close()

    # While another caller holds the grant's hand-over lease, a reset waits its turn (nothing changes).
    now = clock.now()
    assert await deps.store.claim_hand_over(grant.id, now, now + timedelta(seconds=30), undelivered=False)
    with pytest.raises(CredentialsUnavailable, match="retry"):
        await reset_credentials(deps, grant)
    await deps.store.release_hand_over(grant.id)

    status, _ = await grantbot.api.call("POST", f"/v1/grants/{grant.id}/revoke")
    assert status == 200
    with pytest.raises(CredentialsUnavailable, match="has ended"):
        await reset_credentials(deps, await deps.store.get_grant(grant.id))
    # A grant without credentials has nothing to reset.
    _, plain = await grantbot.api.request_access({"environment": "staging", "scopes": ["metrics:read"]})
    assert await reset_credentials(deps, await deps.store.get_grant(plain["grant"]["id"])) == ()


async def test_a_reload_that_drops_the_provider_still_revokes_what_it_issued(target, start_grantbot, tmp_path,
                                                                           clock):
    policy = target.policy(tmp_path)
    grantbot = await start_grantbot(policy_file=policy, policy_watch_seconds=0)
    _, created = await grantbot.api.request_access(STAGING_READ)
    [credential] = created["grant"]["credentials"]
    session = await target.login(credential)

    policy.write_text((POLICIES / "basic.yaml").read_text())  # no providers:, no credentials:
    assert await grantbot.app[RELOADER].check() == "reloaded"
    assert grantbot.app[DEPS].policy.providers == []
    clock.advance(61)
    await eventually(lambda: session_ended(session), timeout=10)
    assert (await eventually(lambda: verified(grantbot, clock, created["id"])))["status"] == "verified"
    assert await login_refused(target, credential)
    _, plain = await grantbot.api.request_access(STAGING_READ)
    assert "credentials" not in plain["grant"]  # new grants under the new policy get none
    await session.close()


async def test_the_password_is_in_no_log_line_audit_event_slack_message_or_column(
        target, start_grantbot, tmp_path, clock, sandbox, caplog):
    caplog.set_level("DEBUG")
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    passwords = []
    _, auto = await grantbot.api.request_access(STAGING_READ)
    passwords.append(auto["grant"]["credentials"][0]["password"])
    _, asked = await grantbot.api.request_access(PROD_WRITE)
    card = await eventually(lambda: next((c for c in cards(sandbox) if asked["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    _, decided = await grantbot.api.get_request(asked["id"], wait=10)
    passwords.append(decided["grant"]["credentials"][0]["password"])
    grant = await grantbot.app[DEPS].store.get_grant(decided["grant"]["id"])
    passwords += [c.fields["password"] for c in await reset_credentials(grantbot.app[DEPS], grant)]
    clock.advance(200)  # both expire and are revoked, with messages
    await eventually(lambda: len([m for m in sandbox.messages if "Access removed" in m["text"]]) == 2, timeout=15)

    everything = [caplog.text, json.dumps(await grantbot.app[STORE].audit_events()),
                  json.dumps(sandbox.messages, default=str), json.dumps(sandbox.ephemerals, default=str)]
    async with grantbot.engine.connect() as conn:
        for table in ("access_requests", "grants", "credentials", "outbox", "audit_events", "approvals"):
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            assert rows or table == "approvals"
            everything.append(repr(rows))
    for password in passwords:
        assert len(password) >= 43
        for place in everything:
            assert password not in place
    assert any("credentials.issued" in place for place in everything)  # the scan saw the audit trail
