"""The MySQL / MariaDB provider on its own (the ``CredentialProvider`` port) with an admin account holding exactly
the rights README.md lists, not root: the user is made locked (no way in before the hand-over), MariaDB receives
only the password's hash, the revocation ends every connection and is idempotent, and a user grantbot did not make
is refused."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import aiomysql
import pytest

from bot.domain.credentials import Account, ProviderSpec
from bot.domain.errors import CredentialsUnavailable
from bot.providers.pool import ProviderPool
from tests.provider_targets import MYSQL, MySQLTarget


@pytest.fixture
async def shop(monkeypatch):
    target = MySQLTarget()
    await target.create()
    admin = f"{target.prefix}admin"  # shares the prefix: reconciliation must not take it for a grant's user
    password = secrets.token_urlsafe(16)
    conn = await target._root()
    async with conn.cursor() as cursor:
        await cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (admin, password))
        # README "MySQL / MariaDB set-up", word for word:
        for statement in (
            f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO `{admin}`@`%`",
            f"GRANT SELECT ON mysql.global_priv TO `{admin}`@`%`",
            f"GRANT `{target.read_role}` TO `{admin}`@`%` WITH ADMIN OPTION",
            f"GRANT INSERT, UPDATE ON `{target.database}`.orders TO `{admin}`@`%` WITH GRANT OPTION",
        ):
            await cursor.execute(statement)
    conn.close()
    monkeypatch.setenv(target.url_env, f"mysql://{admin}:{password}@{MYSQL[0]}:{MYSQL[1]}/{target.database}")
    target.admin_user, target.admin_password = admin, password
    yield target
    await target.drop()


@pytest.fixture
async def pool():
    providers = ProviderPool()
    yield providers
    await providers.close()


def spec_for(target, **options) -> ProviderSpec:
    return ProviderSpec(name="shop-db", kind="mysql", url_env=target.url_env, username_prefix=target.prefix,
                        options={"connect_timeout": 2, "statement_timeout": 5, **options})


def account_for(provider, **params) -> Account:
    grant_id = str(uuid.uuid4())
    return Account(grant_id, "shop-db", "mysql", provider.username(grant_id),
                   datetime.now(UTC) + timedelta(minutes=10), params)


async def _stored_hash(target, username: str) -> str:
    conn = await target._root()
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT JSON_VALUE(Priv, '$.authentication_string'), JSON_VALUE(Priv, '$.account_locked') "
                             "FROM mysql.global_priv WHERE User = %s", (username,))
        row = await cursor.fetchone()
    conn.close()
    return row


async def test_an_admin_with_the_documented_rights_makes_locks_and_removes_users(shop, pool):
    provider = pool.provider(spec_for(shop, default_roles=False))
    account = account_for(provider, roles=[shop.read_role], privileges=[f"INSERT ON {shop.database}.orders"])
    await provider.create(account, datetime.now(UTC))  # at approval: locked, no password
    assert (await _stored_hash(shop, account.username))[1] == "1"
    fields = (await provider.issue(account, datetime.now(UTC))).fields
    stored, locked = await _stored_hash(shop, account.username)
    # MariaDB stored the native hash grantbot sent; it never saw the password itself.
    assert stored == "*" + hashlib.sha1(hashlib.sha1(fields["password"].encode()).digest()).hexdigest().upper()
    assert locked == "0"
    sessions = []
    for n in (3, 4):
        conn = await aiomysql.connect(host=MYSQL[0], port=MYSQL[1], user=fields["username"],
                                      password=fields["password"], db=shop.database, autocommit=True)
        async with conn.cursor() as cursor:
            await cursor.execute(f"SET ROLE `{shop.read_role}`")  # default_roles: false
            await cursor.execute("SELECT item FROM orders WHERE id = 1")
            await cursor.execute("INSERT INTO orders VALUES (%s, 'cortado')", (n,))
        sessions.append(conn)
    assert [a.username for a in await provider.accounts()] == [account.username]  # not the admin

    report = await provider.revoke(account)
    assert report.summary == f"user {account.username} dropped, 2 connections killed"
    assert (await provider.verify_revoked(account, report)).gone
    for conn in sessions:
        assert await shop.session_ended(conn)
    assert await shop.login_refused(fields)
    again = await provider.revoke(account)  # retried after a crash: already done
    assert again.summary == f"user {account.username} was already gone"


async def test_default_roles_on_mariadb_need_update_on_the_mysql_database(shop, pool):
    provider = pool.provider(spec_for(shop))
    account = account_for(provider, roles=[shop.read_role])
    with pytest.raises(CredentialsUnavailable, match="1044: Access denied") as refused:
        await provider.issue(account, datetime.now(UTC))
    assert shop.admin_password not in str(refused.value)
    conn = await shop._root()
    async with conn.cursor() as cursor:
        await cursor.execute(f"GRANT UPDATE ON mysql.* TO `{shop.admin_user}`@`%`")
    conn.close()
    fields = (await provider.issue(account, datetime.now(UTC))).fields
    session = await shop.use(fields)  # the role is active at login
    await provider.revoke(account)
    assert await shop.session_ended(session)
