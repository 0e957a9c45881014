"""PostgreSQL provider: a grant becomes a temporary role, removed for good when the grant ends (kind ``postgresql``).

An admin connection (asyncpg) from the provider's ``url_env`` makes, for each grant, the role ``<prefix><grant id
without dashes>`` (so every step can be retried after a crash and finds the same role), with ``VALID UNTIL`` the
grant's expiry (a password stops working then even while grantbot is down), a ``CONNECTION LIMIT``, membership in
the rule's ``roles`` and a comment marking it as grantbot's (``grantbot grant=<id> provider=<name>
created=<time>``): a role without that marker is never altered or dropped, and reconciliation looks only at marked
roles with the prefix.

Secrets: the password is 32 random bytes (``secrets.token_urlsafe(32)``), made per hand-over and sent to the server
only as a SCRAM-SHA-256 verifier (RFC 5802 / RFC 7677, the form PostgreSQL stores and ``psql``'s ``\\password``
sends), built with ``scramp``: the plaintext never reaches the server's log or ``pg_stat_statements``. The admin
URL's password appears in no message (``_safe``).

Revoke, hard, in this order and as separate statements (vault#699, #1535, #1994; REFERENCE.md "Real
credentials"): ``ALTER ROLE … NOLOGIN`` (no new session), ``pg_terminate_backend`` of its sessions (waiting for
each to exit), ``REASSIGN OWNED BY … TO <owner_role>`` and ``DROP OWNED BY …`` in every database where
``pg_shdepend`` says it owns objects or holds privileges, then ``DROP ROLE``. The check after it: no such role in
``pg_roles``, none of its sessions in ``pg_stat_activity``.

Rights the admin role needs (README "PostgreSQL provider"): ``CREATEROLE``; ``ADMIN OPTION`` on each role it hands
out (PostgreSQL 16+; 15 lets ``CREATEROLE`` grant any non-superuser role); membership in ``owner_role``
(``REASSIGN OWNED`` needs the rights of both roles); PostgreSQL 14+ (``pg_terminate_backend`` with a timeout). It
makes itself a member of each temporary role before revoking it, which ``REASSIGN OWNED``, ``DROP OWNED`` and
``pg_terminate_backend`` of that role's sessions need.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scramp import ScramMechanism

from bot.domain.credentials import (
    Account,
    Credential,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationReport,
)
from bot.domain.errors import CredentialsRefused, CredentialsUnavailable
from bot.providers.common import PASSWORD_BYTES, model_problems

KIND = "postgresql"
MAX_IDENTIFIER = 63  # NAMEDATALEN - 1
GRANT_ID_CHARS = 32  # a UUID's hex digits
MAX_PREFIX = MAX_IDENTIFIER - GRANT_ID_CHARS
SCRAM_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
TERMINATE_WAIT_MS = 5000  # pg_terminate_backend waits this long for each session to exit
MARKER = re.compile(r"grantbot grant=(?P<grant>[0-9a-f-]{36}) provider=(?P<provider>\S+) created=(?P<created>\S+)")
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
_SCRAM = ScramMechanism("SCRAM-SHA-256")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (``"`` doubled), as ``quote_ident`` does; names are checked first."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """A string literal for a utility statement (they take no bind parameters); only grantbot's own text
    (a marker, a time, a SCRAM verifier: no quote or backslash) goes through here."""
    if "'" in text or "\\" in text:  # pragma: no cover - never made so
        raise ValueError("refusing to quote text with quotes or backslashes")
    return "'" + text + "'"


def scram_verifier(password: str) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64): what PostgreSQL stores for a
    password and accepts in ``PASSWORD '…'`` as already encrypted (RFC 5802 §3, RFC 7677)."""
    salt, stored_key, server_key, iterations = _SCRAM.make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS, salt=secrets.token_bytes(16))

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. The provider leaves no session state behind (no SET, LISTEN,
    advisory lock or open transaction: every statement is an implicit transaction of its own), so asyncpg's
    default reset would cost a round trip per release for nothing."""


def _new_secret() -> tuple[str, str]:
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    return password, scram_verifier(password)


def _identifier(value: str) -> str:
    if not value or len(value.encode()) > MAX_IDENTIFIER or "\x00" in value:
        raise ValueError(f"{value!r} is not a PostgreSQL role name (1 to {MAX_IDENTIFIER} bytes)")
    return value


class Options(BaseModel):
    """The provider's ``options:``. Time limits in seconds. ``host``/``port``/``database``: what the pipeline is
    told to connect to, when it differs from the admin connection's (a pooler, another address)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_limit: int = Field(default=10, ge=1, le=10_000)
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    statement_timeout: float = Field(default=10.0, gt=0, le=3600)
    pool_size: int = Field(default=4, ge=1, le=50)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = None


class Params(BaseModel):
    """A rule's ``credentials:`` entry for this kind: ``roles`` the temporary role becomes a member of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    roles: list[str] = Field(default_factory=list)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        for role in value:
            _identifier(role)
        return value


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    """Problems of a ``providers:`` entry of this kind, as (key path inside the entry, sentence)."""
    problems = [((key,), "unknown key for a postgresql provider (check its spelling and indentation)")
                for key in spec.extras()]
    if not spec.url_env:
        problems.append((("url_env",), "a postgresql provider needs url_env: the variable holding its admin URL"))
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > MAX_PREFIX:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits and "
                         f"'_' (starting with a letter or '_'), at most {MAX_PREFIX} characters"))
    if spec.owner_role is not None:
        try:
            _identifier(spec.owner_role)
        except ValueError as exc:
            problems.append((("owner_role",), str(exc)))
    problems += [(("options", *loc), message) for loc, message in model_problems(Options, spec.options)]
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    """Problems of a rule's ``credentials:`` entry for a provider of this kind (key paths inside the entry)."""
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """What a grant under a rule gets from this provider, for ``grantbot policy explain``."""
    roles = ", ".join(params.get("roles") or []) or "no role"
    owner = spec.owner_role or "the admin role"
    return (f"a temporary PostgreSQL role {spec.username_prefix}<grant id> (LOGIN, VALID UNTIL the grant's expiry, "
            f"member of {roles}); at the end its sessions are ended, what it owns goes to {owner}, and it is "
            "dropped")


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith(("x", "s", "sh")) else f"{count} {noun}s"


# Object kinds as pg_describe_object names them, longest first ("materialized view public.v").
_OBJECT_KINDS = ("materialized view", "foreign table", "partitioned table", "table", "view", "sequence", "index",
                 "schema", "function", "procedure", "aggregate", "type", "domain", "collation", "conversion",
                 "operator", "extension", "large object", "event trigger", "publication", "subscription",
                 "text search configuration", "text search dictionary", "statistics object")


def _object_kind(description: str) -> str:
    return next((kind for kind in _OBJECT_KINDS if description.startswith(kind + " ")), description.split(" ")[0])


class PostgresProvider:
    """A ``postgresql`` provider (``bot.domain.ports.CredentialProvider``) over asyncpg pools, one per database it
    needs (the admin URL's, and the others a role owned objects in, for ``REASSIGN OWNED``)."""

    def __init__(self, spec: ProviderSpec, url: str) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        self._url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        parts = urlsplit(self._url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise CredentialsUnavailable(
                f"provider {spec.name}: {spec.url_env} must be a postgresql://user:password@host:port/database URL",
                spec.name)
        self._secret = unquote(parts.password) if parts.password else None
        self._admin = unquote(parts.username or "postgres")
        self._host = parts.hostname
        self._port = parts.port or 5432
        self._database = unquote(parts.path.lstrip("/")) or self._admin
        self._pools: dict[str, asyncpg.Pool] = {}
        self._pools_lock = asyncio.Lock()
        self._superuser: bool | None = None
        self._owner = spec.owner_role or self._admin
        self._next_secret: asyncio.Task[tuple[str, str]] | None = None

    # -- connections ----------------------------------------------------------------------------------------

    def _safe(self, exc: BaseException) -> str:
        """What went wrong, without the admin password (asyncpg's messages carry none; this makes sure)."""
        if isinstance(exc, TimeoutError):
            text = f"no answer from {self._host}:{self._port} in time"
        elif isinstance(exc, asyncpg.PostgresError):
            text = f"{exc.sqlstate}: {exc.args[0] if exc.args else exc}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        if self._secret:
            text = text.replace(self._secret, "…")
        return text

    async def _pool(self, database: str) -> asyncpg.Pool:
        async with self._pools_lock:
            pool = self._pools.get(database)
            if pool is None:
                pool = await asyncpg.create_pool(
                    self._url, database=database, min_size=0, max_size=self.options.pool_size,
                    timeout=self.options.connect_timeout, command_timeout=self.options.statement_timeout,
                    max_inactive_connection_lifetime=60, server_settings={"application_name": "grantbot"},
                    reset=_keep_session,
                )
                self._pools[database] = pool
            return pool

    @asynccontextmanager
    async def _connection(self, what: str, database: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled admin connection; any failure becomes ``CredentialsUnavailable`` naming the provider and
        ``what`` was being done. A connection that failed other than by the server refusing a statement (a
        timeout, a reset) is closed rather than reused: it may be stuck on a network that stopped answering."""
        try:
            pool = await self._pool(database or self._database)
            conn = await pool.acquire(timeout=self.options.connect_timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._unavailable(what, exc) from None
        try:
            yield conn
        except (CredentialsRefused, CredentialsUnavailable):
            raise
        except asyncpg.PostgresError as exc:
            raise self._unavailable(what, exc) from None
        except (OSError, asyncpg.InterfaceError) as exc:
            conn.terminate()
            raise self._unavailable(what, exc) from None
        except BaseException:
            conn.terminate()
            raise
        finally:
            try:
                await pool.release(conn, timeout=self.options.connect_timeout)
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
                pass  # released by terminating it

    def _unavailable(self, what: str, exc: BaseException) -> CredentialsUnavailable:
        return CredentialsUnavailable(f"provider {self.spec.name}: {what} failed: {self._safe(exc)}", self.spec.name)

    async def close(self) -> None:
        if self._next_secret is not None:
            self._next_secret.cancel()
            self._next_secret = None
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), self.options.connect_timeout)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()

    # -- names and markers ----------------------------------------------------------------------------------

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_id.replace("-", "").lower()

    def _marker(self, account: Account, now: datetime) -> str:
        return (f"grantbot grant={account.grant_id} provider={self.spec.name} "
                f"created={now.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")

    @staticmethod
    async def _look_up(conn: asyncpg.Connection, username: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT oid, rolcanlogin, shobj_description(oid, 'pg_authid') AS marker FROM pg_roles WHERE rolname = $1",
            username)

    def _check_ours(self, username: str, marker: str | None, grant_id: str | None = None) -> None:
        found = MARKER.fullmatch(marker or "")
        if found is None or (grant_id is not None and found["grant"] != grant_id):
            raise CredentialsRefused(
                f"provider {self.spec.name}: role {username} exists but grantbot did not make it for this grant "
                "(no grantbot marker in its comment); it is left alone")

    def _create_statement(self, account: Account, now: datetime, verifier: str | None) -> str:
        role = quote_ident(account.username)
        login = f"LOGIN PASSWORD {_literal(verifier)}" if verifier else "NOLOGIN"
        roles = [quote_ident(_identifier(r)) for r in account.params.get("roles") or []]
        in_roles = f" IN ROLE {', '.join(roles)}" if roles else ""
        # One simple query: its statements run as one implicit transaction, so a role is never left unmarked or
        # without its memberships (a missing role or right rolls the whole of it back).
        return (f"CREATE ROLE {role} {login} VALID UNTIL {_literal(account.expires_at.isoformat())} "
                f"CONNECTION LIMIT {self.options.connection_limit}{in_roles}; "
                f"COMMENT ON ROLE {role} IS {_literal(self._marker(account, now))}")

    # -- the port -------------------------------------------------------------------------------------------

    async def create(self, account: Account, now: datetime) -> None:
        async with self._connection(f"making role {account.username}") as conn:
            row = await self._look_up(conn, account.username)
            if row is None:
                await conn.execute(self._create_statement(account, now, None))
            else:
                self._check_ours(account.username, row["marker"], account.grant_id)

    async def _fresh_secret(self) -> tuple[str, str]:
        """A new password and its SCRAM verifier, each used once. Hashing costs milliseconds of CPU by design
        (4096 iterations), so the next one is made ahead in a thread while this one is being set: it overlaps the
        round trips instead of adding to them. (The one made ahead stays in this process's memory until used.)"""
        this = self._next_secret or asyncio.ensure_future(asyncio.to_thread(_new_secret))
        self._next_secret = asyncio.ensure_future(asyncio.to_thread(_new_secret))
        return await this

    async def issue(self, account: Account, now: datetime) -> Credential:
        password, verifier = await self._fresh_secret()
        async with self._connection(f"setting the password of role {account.username}") as conn:
            try:  # a new grant's role, made in one round trip; one made at approval (or by a crashed try) exists
                await conn.execute(self._create_statement(account, now, verifier))
            except asyncpg.DuplicateObjectError:
                row = await self._look_up(conn, account.username)
                self._check_ours(account.username, row["marker"] if row else None, account.grant_id)
                await conn.execute(
                    f"ALTER ROLE {quote_ident(account.username)} LOGIN PASSWORD {_literal(verifier)} "
                    f"VALID UNTIL {_literal(account.expires_at.isoformat())}")
        host = self.options.host or self._host
        port = self.options.port or self._port
        database = self.options.database or self._database
        dsn = f"postgresql://{quote(account.username)}:{quote(password, safe='')}@{host}:{port}/{quote(database)}"
        return Credential(self.spec.name, KIND, account.expires_at, {
            "username": account.username, "password": password, "host": host, "port": port, "database": database,
            "dsn": dsn,
        })

    async def _is_superuser(self, conn: asyncpg.Connection) -> bool:
        if self._superuser is None:
            self._superuser = bool(await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        return self._superuser

    async def revoke(self, account: Account) -> RevocationReport:
        username = account.username
        role = quote_ident(username)
        owned: Counter[str] = Counter()
        defused: Counter[tuple[str, str]] = Counter()  # (kind, what was done) of code that ran as its owner
        async with self._connection(f"revoking role {username}") as conn:
            row = await self._look_up(conn, username)
            if row is None:
                return RevocationReport(f"role {username} was already gone", {"role": username, "existed": False})
            self._check_ours(username, row["marker"])
            oid = row["oid"]
            if not await self._is_superuser(conn):
                # REASSIGN OWNED, DROP OWNED and ending its sessions need the rights of the role; grantbot made it,
                # so it may grant it to itself (CREATEROLE, or ADMIN OPTION on PostgreSQL 16+).
                await conn.execute(f"GRANT {role} TO CURRENT_USER")
            # Separate statements, each committed: no new session once NOLOGIN is in, then the open ones end
            # (one transaction could not do both: vault PR #8668). pg_shdepend lists the databases where the role
            # owns objects or holds privileges (dbid 0: shared objects, handled from this database).
            await conn.execute(f"ALTER ROLE {role} NOLOGIN")
            ended, databases = await conn.fetchrow(
                "SELECT (SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, $2)) FROM pg_stat_activity "
                "        WHERE usesysid = $1 AND pid <> pg_backend_pid()), "
                "       array(SELECT DISTINCT coalesce(d.datname, current_database()) FROM pg_shdepend s "
                "             LEFT JOIN pg_database d ON d.oid = s.dbid "
                "             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = $1)", oid, TERMINATE_WAIT_MS)
            for database in databases:
                if database == self._database:
                    await self._hand_on(conn, role, oid, owned, defused)
                else:
                    async with self._connection(f"handing on what role {username} owns in database {database}",
                                                database) as elsewhere:
                        await self._hand_on(elsewhere, role, oid, owned, defused)
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
        parts = [f"role {username} dropped", _plural(ended, "session") + " ended"]
        if owned:
            kinds = ", ".join(_plural(n, kind) for kind, n in sorted(owned.items()))
            parts.append(f"{kinds} reassigned to {self._owner}")
        parts += [f"{_plural(n, kind)} {done}" for (kind, done), n in sorted(defused.items())]
        return RevocationReport(", ".join(parts), {
            "role": username, "existed": True, "oid": oid, "sessions_ended": ended,
            "reassigned": dict(owned), "reassigned_to": self._owner if owned else None, "databases": list(databases),
            **({"defused": {f"{kind} {done}": n for (kind, done), n in sorted(defused.items())}} if defused else {}),
        })

    async def _hand_on(self, conn: asyncpg.Connection, role: str, oid: int, owned: Counter[str],
                       defused: Counter[tuple[str, str]]) -> None:
        """In ``conn``'s database: count what the role owns, take the owner's rights out of the code it leaves
        (:meth:`_owner_rights_statements`), give it to the owner role, drop what is left (its privileges and default
        privileges), as one implicit transaction."""
        for (description,) in await conn.fetch(
            "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_shdepend "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND refclassid = 'pg_authid'::regclass AND refobjid = $1 AND deptype = 'o' "
            "AND classid <> 'pg_default_acl'::regclass", oid):
            owned[_object_kind(description)] += 1
        neutralize = await self._owner_rights_statements(conn, oid, defused)
        await conn.execute("".join(neutralize)
                           + f"REASSIGN OWNED BY {role} TO {quote_ident(self._owner)}; DROP OWNED BY {role}")

    @staticmethod
    async def _owner_rights_statements(conn: asyncpg.Connection, oid: int,
                                       defused: Counter[tuple[str, str]]) -> list[str]:
        """Statements that stop the role's code from running with its next owner's rights.

        A SECURITY DEFINER function, a view and a rule run with their owner's privileges, not their caller's
        (postgresql.org/docs/current/sql-createfunction.html, rules-privileges.html). Handed as they are to the owner
        role (or the admin), a temporary role's function or view would go on acting, for whoever it was granted to,
        with rights the role never had: a revoked grant turned into more access. So, before the hand-over: such
        functions and procedures become SECURITY INVOKER, views ``security_invoker`` (PostgreSQL 15+; dropped on
        older servers), and rules on its tables are dropped. Counted in ``defused`` by (kind, what was done)."""
        statements = []
        for signature, kind in await conn.fetch(
                "SELECT oid::regprocedure::text, prokind FROM pg_proc WHERE proowner = $1 AND prosecdef", oid):
            statements.append(f"ALTER {'PROCEDURE' if kind == 'p' else 'FUNCTION'} {signature} SECURITY INVOKER; ")
            defused[("procedure" if kind == "p" else "function", "made SECURITY INVOKER")] += 1
        modern = await conn.fetchval("SELECT current_setting('server_version_num')::int >= 150000")
        for (view,) in await conn.fetch("SELECT oid::regclass::text FROM pg_class WHERE relowner = $1 AND relkind = 'v'",
                                        oid):
            statements.append(f"ALTER VIEW {view} SET (security_invoker = true); " if modern else f"DROP VIEW {view}; ")
            defused[("view", "made security_invoker" if modern else "dropped")] += 1
        for name, table in await conn.fetch(
                "SELECT r.rulename, c.oid::regclass::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
                "WHERE c.relowner = $1 AND r.rulename <> '_RETURN'", oid):
            statements.append(f"DROP RULE {quote_ident(name)} ON {table}; ")
            defused[("rule", "dropped")] += 1
        return statements

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        username = account.username
        oid = (report.facts.get("oid") if report else None) or 0
        async with self._connection(f"checking that role {username} is gone") as conn:
            # Sessions by name, and by the role's id: a session outliving its role shows no name any more.
            roles, sessions = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1), "
                "       (SELECT count(*) FROM pg_stat_activity WHERE usename = $1 OR usesysid = $2)", username, oid)
        facts = {"role_exists": bool(roles), "open_sessions": sessions}
        if roles or sessions:
            left = [f"role {username} still exists" if roles else "", f"{sessions} of its sessions still open"
                    if sessions else ""]
            return RevocationCheck(False, facts, " and ".join(p for p in left if p))
        return RevocationCheck(True, facts, checked="the role is gone and none of its sessions is open")

    async def accounts(self) -> list[MadeAccount]:
        async with self._connection("listing the roles grantbot made") as conn:
            rows = await conn.fetch(
                "SELECT rolname, shobj_description(oid, 'pg_authid') AS marker FROM pg_roles "
                "WHERE starts_with(rolname, $1) ORDER BY rolname", self.spec.username_prefix)
        made = []
        for row in rows:
            found = MARKER.fullmatch(row["marker"] or "")
            if found is None:
                continue  # someone else's role that happens to share the prefix: never touched
            try:
                created: datetime | None = datetime.fromisoformat(found["created"].replace("Z", "+00:00"))
            except ValueError:
                created = None
            made.append(MadeAccount(row["rolname"], found["grant"], created))
        return made


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> PostgresProvider:
    """The provider for ``spec``, its admin URL read from ``environ[spec.url_env]``; raises
    ``CredentialsUnavailable`` when the variable is unset."""
    url = environ.get(spec.url_env or "")
    if not url:
        raise CredentialsUnavailable(
            f"provider {spec.name}: the environment variable {spec.url_env} (its admin URL) is not set", spec.name)
    return PostgresProvider(spec, url)
