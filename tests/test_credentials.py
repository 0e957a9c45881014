"""Real credentials on a real PostgreSQL: a grant becomes a temporary role that a pipeline logs in with, and when the
grant ends the role's sessions end, what it created goes to the owner role, the role is dropped, and grantbot checks
and says so (the pipeline's ``grant.revocation``, a thread reply or channel message). Grantbot's own database is
SQLite or PostgreSQL (``database_url``); the provider's target is a scratch PostgreSQL database (tests.pg_target)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import asyncpg
import pytest

from tests.pg_target import target  # noqa: F401  (fixture)
from tests.support import buttons, cards, eventually, message_text

STAGING_READ = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}
PROD_WRITE = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 120, "reason": "migration 42"}


def verifier_matches(stored: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier as PostgreSQL stores it (``SCRAM-SHA-256$<i>:<salt>$<StoredKey>:<ServerKey>``)
    was made from ``password`` (RFC 5802 §3), computed here independently of grantbot's code."""
    method, _, rest = stored.partition("$")
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return (method == "SCRAM-SHA-256" and hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)
            and hmac.new(salted, b"Server Key", "sha256").digest() == base64.b64decode(server_key))


async def session_ended(conn: asyncpg.Connection) -> bool:
    """True once the server ended ``conn`` (a statement on it fails because the connection is gone). asyncpg may
    also refuse the statement itself, having read the server's FATAL "terminating connection due to
    administrator command" while the connection was idle (InternalClientError: "another operation is in
    progress")."""
    if conn.is_closed():
        return True
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError, ConnectionError):
        return True
    return False


async def login_refused(target, credential: dict) -> bool:
    try:
        conn = await target.login(credential)
    except (asyncpg.exceptions.InvalidAuthorizationSpecificationError, asyncpg.exceptions.InvalidPasswordError):
        return True
    await conn.close()
    return False


async def revocation(grantbot, clock, request_id: str) -> dict | None:
    """The request's ``grant.revocation`` as its pipeline reads it (each read signed anew: a second later)."""
    clock.advance(1)
    status, seen = await grantbot.api.get_request(request_id)
    assert status == 200, seen
    return seen["grant"].get("revocation")


async def verified(grantbot, clock, request_id: str) -> dict | None:
    seen = await revocation(grantbot, clock, request_id)
    return seen if seen and seen["status"] == "verified" else None


async def test_an_auto_approved_grant_is_a_role_that_reads_is_refused_a_write_and_ends_at_expiry(
        target, start_grantbot, tmp_path, clock, sandbox):
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201, created
    grant = created["grant"]
    [credential] = grant["credentials"]
    username = credential["username"]
    assert credential["provider"] == "orders-db" and credential["kind"] == "postgresql"
    assert username == target.prefix + grant["id"].replace("-", "")
    assert (credential["host"], credential["port"], credential["database"]) == ("127.0.0.1", 5432, target.database)
    assert credential["expires_at"] == grant["expires_at"] and len(credential["password"]) >= 43  # 32 random bytes
    assert credential["dsn"] == (f"postgresql://{username}:{credential['password']}@127.0.0.1:5432/"
                                 f"{target.database}")

    role = await target.role(username)
    assert role["rolcanlogin"] and role["rolconnlimit"] == 10
    assert role["rolvaliduntil"].isoformat().replace("+00:00", "Z") == grant["expires_at"]
    assert role["marker"].startswith(f"grantbot grant={grant['id']} provider=orders-db created=")
    # The server keeps a SCRAM verifier of the password handed over, never the password (nor did it receive it).
    assert role["rolpassword"].startswith("SCRAM-SHA-256$4096:")
    assert verifier_matches(role["rolpassword"], credential["password"])

    pipeline = await target.login(credential)
    assert await pipeline.fetchval("SELECT item FROM orders WHERE id = 1") == "espresso"
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
        await pipeline.execute("INSERT INTO orders VALUES (3, 'cortado')")
    _, again = await grantbot.api.get_request(created["id"])
    assert "credentials" not in again["grant"] and "access_token" not in again["grant"]  # handed over once

    clock.advance(61)  # past expires_at: the sweep ends the grant, the revocation round removes the role
    await eventually(lambda: session_ended(pipeline), timeout=15)
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert seen["detail"] == f"orders-db: role {username} dropped, 1 session ended", seen
    assert await target.role(username) is None and await target.sessions_of(username) == 0
    assert await login_refused(target, credential)
    # Auto-approved: no card; the channel hears it.
    told = await eventually(lambda: next((m for m in sandbox.messages if "Access removed" in m["text"]), None))
    assert f"role {username} dropped, 1 session ended" in told["text"] and "orders-db" in told["text"]
    await pipeline.close()


async def test_an_approved_grant_is_made_at_approval_and_its_password_set_at_hand_over(
        target, start_grantbot, tmp_path, clock, sandbox):
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    status, created = await grantbot.api.request_access(PROD_WRITE)
    assert status == 202
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await target.roles_made() == []  # nothing before someone approves
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200

    async def role_made():
        return await target.roles_made()

    [username] = await eventually(role_made)
    role = await target.role(username)
    assert not role["rolcanlogin"] and role["rolpassword"] is None  # no way in until the hand-over

    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    [credential] = decided["grant"]["credentials"]
    assert credential["username"] == username and decided["grant"]["access_token"]
    role = await target.role(username)
    assert role["rolcanlogin"] and verifier_matches(role["rolpassword"], credential["password"])

    # The pipeline creates a table (it may: maker role) and keeps a session open inside a transaction.
    pipeline = await target.login(credential)
    await pipeline.execute("CREATE TABLE scratch_report (n int); INSERT INTO scratch_report VALUES (1)")
    busy = await target.login(credential)
    await busy.execute("BEGIN; SELECT count(*) FROM orders")

    updated = await eventually(lambda: buttons(card) == ["revoke_grant"] and card)
    assert await grantbot.api.click(updated, "revoke_grant", "U0APPROVER") == 200
    await eventually(lambda: session_ended(pipeline), timeout=10)
    await eventually(lambda: session_ended(busy), timeout=10)
    reply = await eventually(lambda: next((m for m in sandbox.messages if m.get("thread_ts") == card["ts"]
                                           and "Access removed" in m["text"]), None), timeout=10)
    assert (f"role {username} dropped, 2 sessions ended, 1 table reassigned to {target.owner_role}"
            in reply["text"]), reply["text"]
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert seen["detail"].startswith("orders-db: role ")
    conn = await target.admin()
    try:
        owner = await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'scratch_report'")
        assert owner == target.owner_role and await conn.fetchval("SELECT n FROM scratch_report") == 1
    finally:
        await conn.close()
    assert await target.role(username) is None and await login_refused(target, credential)
    await asyncio.gather(pipeline.close(), busy.close(), return_exceptions=True)


async def test_a_reissue_also_resets_the_password_so_the_lost_one_stops_working(
        target, start_grantbot, tmp_path, clock):
    """POST /v1/grants/{id}/reissue (a lost hand-over): a new token and a new password for the same role; the
    password the lost answer carried no longer logs in."""
    grantbot = await start_grantbot(policy_file=target.policy(tmp_path))
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201, created
    [lost] = created["grant"]["credentials"]
    clock.advance(1)
    status, reissued = await grantbot.api.call("POST", f"/v1/grants/{created['grant']['id']}/reissue")
    assert status == 200, reissued
    [fresh] = reissued["credentials"]
    assert fresh["username"] == lost["username"] and fresh["password"] != lost["password"]
    assert fresh["expires_at"] == lost["expires_at"] == reissued["expires_at"]
    # The server trusts 127.0.0.1, so which password works is read from the SCRAM verifier it now stores.
    stored = (await target.role(fresh["username"]))["rolpassword"]
    assert verifier_matches(stored, fresh["password"]) and not verifier_matches(stored, lost["password"])
    pipeline = await target.login(fresh)
    assert await pipeline.fetchval("SELECT item FROM orders WHERE id = 1") == "espresso"
    await pipeline.close()
    async with grantbot.api.http.get(grantbot.base_url + "/metrics") as resp:
        metrics = await resp.text()
    # Two issues (the 201, the reissue), counted and timed by kind and operation.
    assert 'grantbot_provider_operations_total{kind="postgresql",operation="issue",result="ok"} 2.0' in metrics
    assert 'grantbot_provider_operation_seconds_count{kind="postgresql",operation="issue"} 2.0' in metrics
