"""MySQL / MariaDB provider: a grant becomes a temporary user, locked, its connections killed and dropped when the
grant ends (kind ``mysql``; MySQL 8 and MariaDB 10.5+; tested on MariaDB 10.11).

An admin connection (aiomysql) from the provider's ``url_env`` (``mysql://user:password@host:3306/db``) makes, for
each grant, the user ``'<prefix><grant token>'@'<account_host>'``, where the grant token is the grant's id in 26
characters (base32): MySQL allows 32 characters in a user name, so the prefix has at most 6. The name is the marker:
reconciliation looks only at users with the prefix whose rest is a grant token, so the prefix must be grantbot's
alone on that server (MySQL and MariaDB keep no comment on a user that both can read).

The user gets the rule's ``roles`` (granted, and made its default roles: MariaDB activates one default role, the
first) and ``privileges`` (``SELECT ON shop.orders``), ``MAX_USER_CONNECTIONS``, and is made locked (``ACCOUNT
LOCK``) until its password is set at the hand-over. The password is 32 random bytes; MariaDB receives only its
``mysql_native_password`` hash (``IDENTIFIED BY PASSWORD '*…'``, what ``PASSWORD()`` makes), so the plaintext is in
no server log; MySQL 8 receives ``IDENTIFIED BY '…'`` (it rewrites the statement in its logs).

Revoke, in this order (REFERENCE.md "Real credentials"): ``ALTER USER … ACCOUNT LOCK`` (no new connection), ``KILL
CONNECTION`` of each of its connections (from ``information_schema.PROCESSLIST``), ``DROP USER``. The check: no
such user, none of its connections. MySQL has no ``VALID UNTIL``: a user outlives its grant while grantbot is down
(reconciliation removes it when grantbot is back).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiomysql
import pymysql
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.domain.credentials import (
    Account,
    Credential,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationReport,
)
from bot.domain.errors import CredentialsUnavailable
from bot.providers.common import (
    GRANT_TOKEN_CHARS,
    grant_of_token,
    grant_token,
    model_problems,
    new_password,
    plural,
    spec_problems,
)

KIND = "mysql"
MAX_USER_NAME = 32  # MySQL 8; MariaDB allows more
MAX_PREFIX = MAX_USER_NAME - GRANT_TOKEN_CHARS
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$-]{0,63}")
# Privileges a rule may hand out on a database or table (never GRANT OPTION, nor server-wide administration).
_PRIVILEGES = {
    "SELECT", "INSERT", "UPDATE", "DELETE", "EXECUTE", "SHOW VIEW", "CREATE", "CREATE VIEW", "CREATE TEMPORARY TABLES",
    "CREATE ROUTINE", "ALTER ROUTINE", "INDEX", "ALTER", "DROP", "REFERENCES", "LOCK TABLES", "TRIGGER", "EVENT",
    "DELETE HISTORY", "ALL", "ALL PRIVILEGES",
}
_PRIVILEGE = re.compile(r"\s*(?P<privileges>[A-Za-z ,]+?)\s+ON\s+(?P<database>\*|[A-Za-z0-9_$]+)\.(?P<table>\*|[A-Za-z0-9_$]+)\s*",
                        re.IGNORECASE)
UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD: the connection ended by itself meanwhile
# KILL only flags a connection: its thread leaves the process list when it next looks at the flag (at once when
# idle, later on a loaded server). The revocation waits this long for them to go before its check counts them.
KILLED_EXIT_SECONDS = 5.0


def parse_privilege(text: str) -> tuple[list[str], str, str]:
    """``"SELECT, INSERT ON shop.orders"`` → (["SELECT", "INSERT"], "shop", "orders"); raises ``ValueError``."""
    found = _PRIVILEGE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a privilege like 'SELECT ON shop.orders' or 'SELECT, INSERT ON shop.*'")
    privileges = [" ".join(p.split()).upper() for p in found["privileges"].split(",")]
    for privilege in privileges:
        if privilege not in _PRIVILEGES:
            raise ValueError(f"{privilege!r} is not a privilege grantbot hands out; use one of "
                             f"{', '.join(sorted(_PRIVILEGES))}")
    return privileges, found["database"], found["table"]


def _quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class Options(BaseModel):
    """The provider's ``options:``. ``account_host``: the host part of every user it makes; ``host``/``port``/
    ``database``: what the pipeline is told to connect to, when not the admin URL's. Time limits in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_user_connections: int = Field(default=10, ge=1, le=10_000)
    # Roles become the user's default roles (active at login). MariaDB's SET DEFAULT ROLE … FOR another user needs
    # UPDATE on the mysql database; with false, the pipeline runs SET ROLE itself and the admin needs no such right.
    default_roles: bool = True
    account_host: str = Field(default="%", min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.%:-]+$")
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    statement_timeout: float = Field(default=10.0, gt=0, le=3600)
    pool_size: int = Field(default=4, ge=1, le=50)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = None


class Params(BaseModel):
    """A rule's ``credentials:`` entry: ``roles`` granted (and made default), ``privileges`` granted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    roles: list[str] = Field(default_factory=list)
    privileges: list[str] = Field(default_factory=list)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        for role in value:
            if not _NAME.fullmatch(role):
                raise ValueError(f"{role!r} is not a role name (letters, digits, _, $ and -, at most 64)")
        return value

    @field_validator("privileges")
    @classmethod
    def _privileges(cls, value: list[str]) -> list[str]:
        for privilege in value:
            parse_privilege(privilege)
        return value


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    """Problems of a ``providers:`` entry of this kind, as (key path inside the entry, sentence)."""
    problems = spec_problems(spec, KIND, options=Options)
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > MAX_PREFIX:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits and "
                         f"'_' (starting with a letter or '_'), at most {MAX_PREFIX} characters (MySQL user names "
                         f"have 32, and the grant takes {GRANT_TOKEN_CHARS})"))
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """``a MySQL/MariaDB user gb_<grant> with role shop_read and SELECT ON shop.orders; …``"""
    roles = params.get("roles") or []
    privileges = params.get("privileges") or []
    what = []
    if roles:
        what.append(("roles " if len(roles) > 1 else "role ") + ", ".join(roles))
    if privileges:
        what.append("; ".join(" ".join(p.split()) for p in privileges))
    has = " with " + " and ".join(what) if what else " with no privilege"
    return (f"a MySQL/MariaDB user {spec.username_prefix}<grant>{has}; at the end it is locked, its connections are "
            "killed and it is dropped")


class MySQLProvider:
    """A ``mysql`` provider (``bot.domain.ports.CredentialProvider``) over an aiomysql pool of admin connections."""

    def __init__(self, spec: ProviderSpec, url: str) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
            raise CredentialsUnavailable(
                f"provider {spec.name}: {spec.url_env} must be a mysql://user:password@host:port/database URL",
                spec.name)
        self._secret = unquote(parts.password) if parts.password else ""
        self._admin = unquote(parts.username or "root")
        self._host = parts.hostname
        self._port = parts.port or 3306
        self._database = unquote(parts.path.lstrip("/")) or None
        self._pool: aiomysql.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._mariadb: bool | None = None

    # -- connections ----------------------------------------------------------------------------------------

    def _safe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            text = f"no answer from {self._host}:{self._port} in time"
        elif isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
            text = f"{exc.args[0]}: {exc.args[1]}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return text.replace(self._secret, "…") if self._secret else text

    def _unavailable(self, what: str, exc: BaseException) -> CredentialsUnavailable:
        return CredentialsUnavailable(f"provider {self.spec.name}: {what} failed: {self._safe(exc)}", self.spec.name)

    async def _get_pool(self) -> aiomysql.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await aiomysql.create_pool(
                    host=self._host, port=self._port, user=self._admin, password=self._secret, db=self._database,
                    minsize=0, maxsize=self.options.pool_size, autocommit=True,
                    connect_timeout=self.options.connect_timeout, pool_recycle=60)
            return self._pool

    @asynccontextmanager
    async def _cursor(self, what: str) -> AsyncIterator[aiomysql.Cursor]:
        """A pooled admin connection's cursor; the whole step runs within ``statement_timeout`` (aiomysql has no
        limit of its own, and a network that stops answering would hang it). Any failure becomes
        ``CredentialsUnavailable`` naming the provider and ``what`` was being done; a connection that failed other
        than by the server refusing a statement is closed rather than reused."""
        conn = None
        try:
            async with asyncio.timeout(self.options.statement_timeout):
                pool = await self._get_pool()
                conn = await pool.acquire()
                async with conn.cursor() as cursor:
                    yield cursor
        except CredentialsUnavailable:
            raise
        except (pymysql.err.ProgrammingError, pymysql.err.IntegrityError, pymysql.err.NotSupportedError,
                pymysql.err.InternalError) as exc:
            raise self._unavailable(what, exc) from None
        except (TimeoutError, OSError, pymysql.err.MySQLError) as exc:
            if conn is not None:
                conn.close()
            raise self._unavailable(what, exc) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            if conn is not None and self._pool is not None:
                self._pool.release(conn)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), self.options.connect_timeout)
            except (TimeoutError, OSError):
                pool.terminate()

    async def _is_mariadb(self, cursor: aiomysql.Cursor) -> bool:
        if self._mariadb is None:
            await cursor.execute("SELECT VERSION()")
            self._mariadb = "mariadb" in (await cursor.fetchone())[0].lower()
        return self._mariadb

    # -- names ----------------------------------------------------------------------------------------------

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_token(grant_id)

    def _grant_of(self, username: str) -> str | None:
        if not username.startswith(self.spec.username_prefix):
            return None
        return grant_of_token(username[len(self.spec.username_prefix):])

    @property
    def _account_host(self) -> str:
        return self.options.account_host

    # -- the port -------------------------------------------------------------------------------------------

    async def _make(self, cursor: aiomysql.Cursor, account: Account) -> None:
        """The user, locked, with its roles and privileges; every statement may be repeated (a crashed try)."""
        user = (account.username, self._account_host)
        if not await self._exists(cursor, account.username):  # (IF NOT EXISTS alone would warn on every repeat)
            await cursor.execute(
                f"CREATE USER IF NOT EXISTS %s@%s WITH MAX_USER_CONNECTIONS {self.options.max_user_connections} "
                "ACCOUNT LOCK", user)
        roles = account.params.get("roles") or []
        if roles:
            await cursor.execute(f"GRANT {', '.join(_quote_name(r) for r in roles)} TO %s@%s", user)
            if not self.options.default_roles:
                pass
            elif await self._is_mariadb(cursor):
                await cursor.execute(f"SET DEFAULT ROLE {_quote_name(roles[0])} FOR %s@%s", user)
            else:
                await cursor.execute("SET DEFAULT ROLE ALL TO %s@%s", user)
        for privilege in account.params.get("privileges") or []:
            privileges, database, table = parse_privilege(privilege)
            on = f"{'*' if database == '*' else _quote_name(database)}.{'*' if table == '*' else _quote_name(table)}"
            await cursor.execute(f"GRANT {', '.join(privileges)} ON {on} TO %s@%s", user)

    async def create(self, account: Account, now: datetime) -> None:
        async with self._cursor(f"making user {account.username}") as cursor:
            await self._make(cursor, account)

    async def issue(self, account: Account, now: datetime) -> Credential:
        password = new_password()
        user = (account.username, self._account_host)
        async with self._cursor(f"setting the password of user {account.username}") as cursor:
            await self._make(cursor, account)
            if await self._is_mariadb(cursor):
                # The mysql_native_password hash (SHA1(SHA1(password))), as PASSWORD() makes it: the server never
                # sees the plaintext, so it is in none of its logs.
                native = "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()
                await cursor.execute("ALTER USER %s@%s IDENTIFIED BY PASSWORD %s ACCOUNT UNLOCK", (*user, native))
            else:
                await cursor.execute("ALTER USER %s@%s IDENTIFIED BY %s ACCOUNT UNLOCK", (*user, password))
        host = self.options.host or self._host
        port = self.options.port or self._port
        database = self.options.database or self._database
        dsn = f"mysql://{quote(account.username)}:{quote(password, safe='')}@{host}:{port}/{quote(database or '')}"
        return Credential(self.spec.name, KIND, account.expires_at, {
            "username": account.username, "password": password, "host": host, "port": port, "database": database,
            "dsn": dsn,
        })

    async def _exists(self, cursor: aiomysql.Cursor, username: str) -> bool:
        table = "mysql.global_priv" if await self._is_mariadb(cursor) else "mysql.user"
        await cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE User = %s AND Host = %s",
                             (username, self._account_host))
        return bool((await cursor.fetchone())[0])

    @staticmethod
    async def _connections(cursor: aiomysql.Cursor, username: str) -> list[int]:
        await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (username,))
        return [row[0] for row in await cursor.fetchall()]

    async def revoke(self, account: Account) -> RevocationReport:
        username = account.username
        user = (username, self._account_host)
        async with self._cursor(f"revoking user {username}") as cursor:
            existed = await self._exists(cursor, username)
            if existed:
                await cursor.execute("ALTER USER IF EXISTS %s@%s ACCOUNT LOCK", user)
            killed = 0
            # After the lock no new connection comes; the open ones end (a user's connections outlive DROP USER).
            for connection in await self._connections(cursor, username):
                try:
                    await cursor.execute(f"KILL CONNECTION {int(connection)}")
                    killed += 1
                except pymysql.err.InternalError as exc:
                    if exc.args[0] != UNKNOWN_THREAD:
                        raise
            if killed:
                await self._wait_for_exit(cursor, username)
            if existed:
                await cursor.execute("DROP USER IF EXISTS %s@%s", user)
        summary = (f"user {username} dropped, {plural(killed, 'connection')} killed" if existed
                   else f"user {username} was already gone" + (f", {plural(killed, 'connection')} killed"
                                                               if killed else ""))
        return RevocationReport(summary, {"user": username, "host": self._account_host, "existed": existed,
                                          "connections_killed": killed})

    async def _wait_for_exit(self, cursor: aiomysql.Cursor, username: str) -> None:
        """Wait (at most ``KILLED_EXIT_SECONDS``) until no connection of ``username`` is left in the process list."""
        deadline = asyncio.get_running_loop().time() + KILLED_EXIT_SECONDS
        delay = 0.01
        while await self._connections(cursor, username) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        username = account.username
        async with self._cursor(f"checking that user {username} is gone") as cursor:
            exists = await self._exists(cursor, username)
            connections = len(await self._connections(cursor, username))
        facts = {"user_exists": exists, "open_connections": connections}
        if exists or connections:
            left = [f"user {username} still exists" if exists else "",
                    f"{plural(connections, 'connection')} of it still open" if connections else ""]
            return RevocationCheck(False, facts, " and ".join(p for p in left if p))
        return RevocationCheck(True, facts, checked="the user is gone and none of its connections is open")

    async def accounts(self) -> list[MadeAccount]:
        prefix = self.spec.username_prefix
        async with self._cursor("listing the users grantbot made") as cursor:
            if await self._is_mariadb(cursor):
                await cursor.execute(
                    "SELECT User, JSON_VALUE(Priv, '$.password_last_changed') FROM mysql.global_priv "
                    "WHERE Host = %s AND LEFT(User, CHAR_LENGTH(%s)) = %s ORDER BY User",
                    (self._account_host, prefix, prefix))
            else:
                await cursor.execute(
                    "SELECT User, UNIX_TIMESTAMP(password_last_changed) FROM mysql.user "
                    "WHERE Host = %s AND LEFT(User, CHAR_LENGTH(%s)) = %s ORDER BY User",
                    (self._account_host, prefix, prefix))
            rows = await cursor.fetchall()
        made = []
        for name, changed in rows:
            name = name.decode() if isinstance(name, bytes) else name
            grant_id = self._grant_of(name)
            if grant_id is None:
                continue  # shares the prefix but is no grant's: never touched
            # The last time its password was set (at creation, or at the hand-over): young ones may be committing.
            created = datetime.fromtimestamp(float(changed), UTC) if changed not in (None, "") else None
            made.append(MadeAccount(name, grant_id, created))
        return made


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> MySQLProvider:
    """The provider for ``spec``, its admin URL read from ``environ[spec.url_env]``; raises
    ``CredentialsUnavailable`` when the variable is unset."""
    url = environ.get(spec.url_env or "")
    if not url:
        raise CredentialsUnavailable(
            f"provider {spec.name}: the environment variable {spec.url_env} (its admin URL) is not set", spec.name)
    return MySQLProvider(spec, url)
