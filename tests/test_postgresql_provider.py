"""The PostgreSQL provider on its own (the ``CredentialProvider`` port), against the hard cases of revocation:
objects in several schemas and in another database, privileges the temporary role granted to others, default
privileges, a session in a long transaction — and an admin role with exactly the rights README.md lists, not a
superuser. Each step is idempotent: a revoke repeated after it finished (a crash before it was recorded) verifies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bot.domain.credentials import Account, ProviderSpec
from bot.domain.errors import CredentialsUnavailable
from bot.providers.pool import ProviderPool
from tests.pg_target import BASE, target  # noqa: F401  (fixture)
from tests.test_credentials import session_ended


def spec_for(target, **overrides) -> ProviderSpec:
    return ProviderSpec(name="orders-db", kind="postgresql", url_env=target.url_env, username_prefix=target.prefix,
                        owner_role=target.owner_role, options={"connect_timeout": 2, "statement_timeout": 5},
                        **overrides)


def account_for(provider, *roles: str) -> Account:
    grant_id = str(uuid.uuid4())
    return Account(grant_id, "orders-db", "postgresql", provider.username(grant_id),
                   datetime.now(UTC) + timedelta(minutes=10), {"roles": list(roles)})


@pytest.fixture
async def pool():
    providers = ProviderPool()
    yield providers
    await providers.close()


async def test_a_role_that_owns_things_in_two_schemas_and_two_databases_is_revoked_cleanly(target, pool):
    other = f"gbt_other_{target.tag}"
    admin = await target.admin()
    await admin.execute(f'CREATE DATABASE "{other}"')
    await admin.execute(f'CREATE SCHEMA reports; GRANT CREATE, USAGE ON SCHEMA reports TO "{target.maker_role}"')
    await admin.close()
    elsewhere = await target.admin(other)
    await elsewhere.execute(f'GRANT CREATE ON SCHEMA public TO "{target.maker_role}"')
    await elsewhere.close()
    try:
        provider = pool.provider(spec_for(target))
        account = account_for(provider, target.read_role, target.maker_role)
        fields = (await provider.issue(account, datetime.now(UTC))).fields
        me = await target.login(fields)
        await me.execute(f"""
            CREATE TABLE public.mine (n serial PRIMARY KEY);
            CREATE VIEW reports.summary AS SELECT count(*) AS n FROM public.mine;
            CREATE FUNCTION reports.twice(x int) RETURNS int LANGUAGE sql AS 'SELECT 2 * x';
            -- Code that runs with its owner's rights: it must not run with the next owner's.
            CREATE FUNCTION reports.as_owner() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user::text';
            CREATE RULE also_notify AS ON INSERT TO public.mine DO ALSO NOTIFY mine;
            GRANT SELECT ON public.mine TO "{target.read_role}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA reports GRANT SELECT ON TABLES TO "{target.read_role}";
        """)
        away = await asyncpg.connect(f"{BASE}/{other}", user=fields["username"], password=fields["password"])
        await away.execute("CREATE TABLE public.elsewhere (n int)")
        long_transaction = await target.login(fields)
        await long_transaction.execute("BEGIN; INSERT INTO public.mine DEFAULT VALUES")

        report = await provider.revoke(account)
        assert report.facts["sessions_ended"] == 3
        assert sorted(report.facts["databases"]) == sorted([target.database, other])
        # public.mine, its sequence (serial), the view and the function here; the table in the other database.
        assert report.facts["reassigned"] == {"function": 2, "sequence": 1, "table": 2, "view": 1}, report.facts
        assert report.summary == (f"role {account.username} dropped, 3 sessions ended, 2 functions, 1 sequence, "
                                  f"2 tables, 1 view reassigned to {target.owner_role}, 1 function made SECURITY "
                                  "INVOKER, 1 rule dropped, 1 view made security_invoker")
        check = await provider.verify_revoked(account, report)
        assert check.gone and check.facts == {"role_exists": False, "open_sessions": 0}
        for conn in (me, away, long_transaction):
            assert await session_ended(conn)
        admin = await target.admin()
        owners = dict(await admin.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname IN ('mine', 'summary', 'mine_n_seq')"))
        assert owners == {"mine": target.owner_role, "summary": target.owner_role, "mine_n_seq": target.owner_role}
        # What the role left runs with its caller's rights, not the owner role's.
        assert await admin.fetchval("SELECT prosecdef FROM pg_proc WHERE proname = 'as_owner'") is False
        assert await admin.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'summary'") == \
            ["security_invoker=true"]
        assert await admin.fetchval("SELECT count(*) FROM pg_rewrite WHERE rulename = 'also_notify'") == 0
        assert await admin.fetchval("SELECT count(*) FROM public.mine") == 0  # the open transaction was rolled back
        await admin.close()
        elsewhere = await target.admin(other)
        assert await elsewhere.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'elsewhere'") == \
            target.owner_role
        await elsewhere.close()

        again = await provider.revoke(account)  # retried after a crash: already done
        assert again.summary == f"role {account.username} was already gone"
        assert (await provider.verify_revoked(account, again)).gone
    finally:
        admin = await target.admin()
        await admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        await admin.close()


async def test_an_admin_with_only_the_documented_rights_can_issue_and_hard_revoke(target, pool, monkeypatch):
    """README.md "PostgreSQL provider": CREATEROLE, membership in owner_role (and, on PostgreSQL 16+, ADMIN OPTION
    on each role handed out). Not a superuser, not a member of pg_signal_backend."""
    name = f"gbr_{target.tag}_admin"
    admin = await target.admin()
    await admin.execute(f'''
        CREATE ROLE "{name}" LOGIN CREATEROLE;
        GRANT "{target.read_role}" TO "{name}" WITH ADMIN OPTION;
        GRANT "{target.maker_role}" TO "{name}" WITH ADMIN OPTION;
        GRANT "{target.owner_role}" TO "{name}";
    ''')
    await admin.close()
    monkeypatch.setenv(target.url_env, f"postgresql://{name}@127.0.0.1:5432/{target.database}")
    provider = pool.provider(spec_for(target))
    account = account_for(provider, target.read_role, target.maker_role)
    await provider.create(account, datetime.now(UTC))  # as at approval: no way in yet
    assert not (await target.role(account.username))["rolcanlogin"]
    fields = (await provider.issue(account, datetime.now(UTC))).fields
    me = await target.login(fields)
    await me.execute("CREATE TABLE public.made_by_pipeline (n int)")

    report = await provider.revoke(account)
    assert report.summary == (f"role {account.username} dropped, 1 session ended, 1 table reassigned to "
                              f"{target.owner_role}")
    assert (await provider.verify_revoked(account, report)).gone and await session_ended(me)


async def test_an_owner_role_the_admin_is_not_a_member_of_makes_the_revocation_fail_visibly(target, pool,
                                                                                             monkeypatch):
    name = f"gbr_{target.tag}_admin"
    admin = await target.admin()
    await admin.execute(f'CREATE ROLE "{name}" LOGIN CREATEROLE')  # not a member of the owner role
    await admin.close()
    monkeypatch.setenv(target.url_env, f"postgresql://{name}:hunter2-admin@127.0.0.1:5432/{target.database}")
    provider = pool.provider(spec_for(target))
    account = account_for(provider, target.maker_role)
    fields = (await provider.issue(account, datetime.now(UTC))).fields
    me = await target.login(fields)
    await me.execute("CREATE TABLE public.stuck (n int)")
    with pytest.raises(CredentialsUnavailable, match="42501") as failed:
        await provider.revoke(account)
    assert "hunter2-admin" not in str(failed.value)
    # It got as far as it could: no new session, the open one ended; the role stays until someone fixes the rights.
    assert await session_ended(me)
    role = await target.role(account.username)
    assert role is not None and not role["rolcanlogin"]
    check = await provider.verify_revoked(account)
    assert not check.gone and check.problem == f"role {account.username} still exists"
