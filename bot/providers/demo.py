"""The demo database ``grantbot dev --postgres URL`` sets up, so a real database grant can be tried in two minutes:
a database with an ``orders`` table, a read role, a write role and an owner role, and a policy whose production
rules hand out temporary roles in it. Everything is made once and found again on the next start."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import yaml

from bot.providers.postgresql import quote_ident

DEFAULT_DATABASE = "grantbot_demo"
URL_ENV = "GRANTBOT_DEV_POSTGRES_URL"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,23}")


def demo_database(url: str) -> str:
    """The demo database's name: the URL's database unless that is ``postgres`` (or none), then ``grantbot_demo``.
    Raises ``ValueError`` for a name that is not lower-case letters, digits and ``_`` (at most 24)."""
    name = urlsplit(url).path.lstrip("/") or "postgres"
    name = DEFAULT_DATABASE if name == "postgres" else name
    if not _NAME.fullmatch(name):
        raise ValueError(f"--postgres: the demo database name {name!r} must be lower-case letters, digits and _ "
                         "(at most 24), e.g. postgresql://postgres@127.0.0.1:5432/grantbot_demo")
    return name


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return urlunsplit(parts._replace(path="/" + database))


async def set_up(url: str) -> tuple[str, dict[str, str]]:
    """Make the demo database and its roles if missing (``url``: a role that may create databases and roles, e.g.
    ``postgresql://postgres@127.0.0.1:5432/postgres``). Returns the admin URL of the demo database and the names
    made (``database``, ``read``, ``write``, ``owner``, ``prefix``). Raises ``ValueError`` saying what PostgreSQL
    refused, ``OSError`` when it cannot be reached."""
    try:
        return await _set_up(url)
    except asyncpg.PostgresError as exc:
        raise ValueError(f"--postgres: PostgreSQL refused setting up the demo database: {exc}") from None


async def _set_up(url: str) -> tuple[str, dict[str, str]]:
    database = demo_database(url)
    names = {"database": database, "read": f"{database}_read", "write": f"{database}_write",
             "owner": f"{database}_owner", "prefix": f"gb_{database}_"}
    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f"CREATE DATABASE {quote_ident(database)}")
        for role in (names["read"], names["write"], names["owner"]):
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f"CREATE ROLE {quote_ident(role)} NOLOGIN")
    finally:
        await conn.close()
    demo_url = _with_database(url, database)
    conn = await asyncpg.connect(demo_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('public.orders') IS NOT NULL"):
            read, write, owner = (quote_ident(names[k]) for k in ("read", "write", "owner"))
            await conn.execute(f"""
                CREATE TABLE public.orders (id int PRIMARY KEY, item text NOT NULL, placed_at timestamptz DEFAULT now());
                INSERT INTO public.orders (id, item) VALUES (1, 'espresso'), (2, 'flat white'), (3, 'cortado');
                ALTER TABLE public.orders OWNER TO {owner};
                GRANT SELECT ON public.orders TO {read};
                GRANT SELECT, INSERT, UPDATE ON public.orders TO {write};
                GRANT CREATE ON SCHEMA public TO {write};
            """)
    finally:
        await conn.close()
    return demo_url, names


def demo_policy(example: Path, names: dict[str, str], out: Path) -> Path:
    """The example policy with the demo database as provider ``demo-db``: ``prod-read`` grants get a role in its
    read role, ``prod-write`` grants one in its read and write roles. Written to ``out``; returns it."""
    policy = yaml.safe_load(example.read_text())
    policy["providers"] = [{"name": "demo-db", "kind": "postgresql", "url_env": URL_ENV,
                            "username_prefix": names["prefix"], "owner_role": names["owner"]}]
    for rule in policy.get("rules", []):
        if rule.get("name") == "prod-read":
            rule["credentials"] = [{"provider": "demo-db", "roles": [names["read"]]}]
        elif rule.get("name") == "prod-write":
            rule["credentials"] = [{"provider": "demo-db", "roles": [names["read"], names["write"]]}]
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Written by `grantbot dev --postgres`: the example policy with the demo database.\n"
                   + yaml.safe_dump(policy, sort_keys=False))
    return out
