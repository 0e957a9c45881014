"""A PostgreSQL database a provider hands out access to, for the credential tests: a scratch database per test with
an ``orders`` table, a read role, a role that may create tables, an owner role, and a policy file whose provider
points at it. Roles are cluster-wide and other test sessions run at the same time, so every name carries this
test's random tag (the provider's ``username_prefix`` too: reconciliation never sees another test's roles), and
whatever is left is dropped at the end."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ADMIN_URL, POLICIES

BASE = ADMIN_URL.rsplit("/", 1)[0]


@dataclass
class Target:
    """The scratch database and the names of this test's roles."""

    tag: str
    database: str
    url_env: str
    prefix: str
    read_role: str
    maker_role: str
    owner_role: str

    @property
    def url(self) -> str:
        return f"{BASE}/{self.database}"

    async def admin(self, database: str | None = None) -> asyncpg.Connection:
        return await asyncpg.connect(f"{BASE}/{database or self.database}")

    async def login(self, credential: dict, **kw) -> asyncpg.Connection:
        """Connect as a pipeline does, with the handed-over credential's user, password and database, straight to
        the server (tests that put a relay in front of the provider's admin connection must not cut the pipeline
        off too; the credential's host and port are checked separately). The server trusts 127.0.0.1, so the
        password's correctness is checked against the SCRAM verifier the server stores."""
        return await asyncpg.connect(host="127.0.0.1", port=5432, user=credential["username"],
                                     password=credential["password"], database=credential["database"], **kw)

    async def role(self, name: str) -> asyncpg.Record | None:
        conn = await self.admin()
        try:
            return await conn.fetchrow(
                "SELECT r.rolname, r.rolcanlogin, r.rolvaliduntil, r.rolconnlimit, a.rolpassword, "
                "shobj_description(r.oid, 'pg_authid') AS marker FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid "
                "WHERE r.rolname = $1", name)
        finally:
            await conn.close()

    async def roles_made(self) -> list[str]:
        conn = await self.admin()
        try:
            return [r["rolname"] for r in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1", self.prefix)]
        finally:
            await conn.close()

    async def sessions_of(self, name: str) -> int:
        conn = await self.admin()
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", name)
        finally:
            await conn.close()

    def policy(self, tmp_path: Path, *, options: str = "{connect_timeout: 1, statement_timeout: 3}",
               name: str = "policy.yaml", extra_rules: str = "") -> Path:
        """tests/policies/basic.yaml with this provider, and credentials on its staging-read (auto-approved:
        the read role) and prod-write (people approve: read, and may create tables) rules."""
        text = (POLICIES / "basic.yaml").read_text()
        text = text.replace(
            "    decision: auto_approve\n    max_ttl_seconds: 1800\n",
            "    decision: auto_approve\n    max_ttl_seconds: 1800\n"
            f"    credentials:\n      - provider: orders-db\n        roles: [{self.read_role}]\n", 1)
        text = text.replace(
            "    approvers: {users: [U0APPROVER, U0SECOND]}\n",
            "    approvers: {users: [U0APPROVER, U0SECOND]}\n"
            f"    credentials:\n      - provider: orders-db\n        roles: [{self.read_role}, {self.maker_role}]\n", 1)
        text = text.replace("default: deny", extra_rules + "default: deny")
        text += "admins: {users: [U0ADMIN]}\n"
        text += (f"providers:\n  - name: orders-db\n    kind: postgresql\n    url_env: {self.url_env}\n"
                 f"    username_prefix: {self.prefix}\n    owner_role: {self.owner_role}\n    options: {options}\n")
        path = tmp_path / name
        path.write_text(text)
        return path


async def make_target() -> Target:
    tag = secrets.token_hex(4)
    target = Target(tag=tag, database=f"gbt_target_{tag}", url_env=f"GRANTBOT_TEST_TARGET_{tag.upper()}",
                    prefix=f"gbt_{tag}_", read_role=f"gbr_{tag}_read", maker_role=f"gbr_{tag}_maker",
                    owner_role=f"gbr_{tag}_owner")
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{target.database}"')
        for role in (target.read_role, target.maker_role, target.owner_role):
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    finally:
        await conn.close()
    conn = await target.admin()
    try:
        await conn.execute(f'''
            CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);
            INSERT INTO orders VALUES (1, 'espresso'), (2, 'flat white');
            ALTER TABLE orders OWNER TO "{target.owner_role}";
            GRANT SELECT ON orders TO "{target.read_role}";
            GRANT CREATE ON SCHEMA public TO "{target.maker_role}";
        ''')
    finally:
        await conn.close()
    return target


async def drop_target(target: Target) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE starts_with(usename, $1)",
                           target.prefix)
        await conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        for name in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) "
                                     "OR starts_with(rolname, $2)", target.prefix, f"gbr_{target.tag}_"):
            await conn.execute(f'DROP ROLE IF EXISTS "{name["rolname"]}"')
    finally:
        await conn.close()


@pytest.fixture
async def target(monkeypatch):
    """This test's scratch database and roles; the provider's admin URL is in the environment."""
    made = await make_target()
    monkeypatch.setenv(made.url_env, made.url)
    yield made
    await drop_target(made)
