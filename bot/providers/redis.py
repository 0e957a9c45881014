"""Redis provider: a grant becomes an ACL user, its connections killed and the user deleted when the grant ends
(kind ``redis``; Redis 7+, one server or primary; Cluster and Sentinel are not handled yet: README).

The admin connection (redis-py's asyncio client) from the provider's ``url_env`` (``redis://user:password@host:6379/0``)
makes, for each grant, the user ``<prefix><grant id without dashes>`` with the rule's ``acl`` (key patterns, channel
patterns and commands: ``~orders:* +get``), and a marker: an ACL selector that allows nothing, whose key pattern
names grantbot, the grant, the provider and when it was made (``(~__grantbot__:grant=<id>:provider=<name>:
created=<time> -@all)``; Redis keeps no comment on a user). A user without it is never altered or deleted, and
reconciliation looks only at marked users with the prefix.

Made ``off`` (no login) at approval; at the hand-over it gets a password, 32 random bytes sent only as their SHA-256
(``#<hex>``, what Redis stores), and is turned ``on``. Revoke: ``ACL SETUSER … off`` (no new login), ``CLIENT KILL
USER`` (its open connections), ``ACL DELUSER``. The check: no such user, no client authenticated as it. Redis has no
expiry of its own for a user: it outlives its grant while grantbot is down (reconciliation removes it when grantbot
is back). The users live in the server's memory: ``ACL SAVE`` is never called, so an ``aclfile`` does not keep them.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bot.domain.credentials import (
    Account,
    Credential,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationReport,
)
from bot.domain.errors import CredentialsRefused, CredentialsUnavailable
from bot.providers.common import model_problems, new_password, parse_stamp, plural, spec_problems, utc_stamp

KIND = "redis"
MARKER = re.compile(r"~__grantbot__:grant=(?P<grant>[0-9a-f-]{36}):provider=(?P<provider>[A-Za-z0-9_.-]+):"
                    r"created=(?P<created>[0-9TZ:-]+)")
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
# ACL rules a rule may hand out: key, channel and command permissions (never on/off, passwords or selectors).
_RULE = re.compile(r"(?:~|%R~|%W~|%RW~|&|[+-]@?)[^\s()]+|allkeys|allchannels|allcommands|nocommands|resetkeys|"
                   r"resetchannels")


def check_acl(acl: str) -> list[str]:
    """The rules of an ``acl:`` string; raises ``ValueError`` naming the first that grantbot does not hand out."""
    rules = acl.split()
    if not rules:
        raise ValueError("an empty acl grants nothing: write key patterns and commands, e.g. '~orders:* +get'")
    for rule in rules:
        if not _RULE.fullmatch(rule):
            raise ValueError(f"ACL rule {rule!r} is not handed out by grantbot: use key patterns (~…, %R~…), channel "
                             "patterns (&…) and commands (+get, -@dangerous, allkeys …); a password, on/off or a "
                             "selector is grantbot's to set")
    return rules


class Options(BaseModel):
    """The provider's ``options:``. ``host``/``port``: what the pipeline is told to connect to, when not the admin
    URL's. Time limits in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    statement_timeout: float = Field(default=10.0, gt=0, le=3600)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class Params(BaseModel):
    """A rule's ``credentials:`` entry: ``acl``, the user's ACL rules (``~orders:* +get``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    acl: str = Field(min_length=1, max_length=4000)

    @field_validator("acl")
    @classmethod
    def _acl(cls, value: str) -> str:
        check_acl(value)
        return value


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    problems = spec_problems(spec, KIND, options=Options)
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > 64:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits and "
                         "'_' (starting with a letter or '_'), at most 64 characters"))
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """``a Redis ACL user gb_<grant id> with ~orders:* +get; …``"""
    return (f"a Redis ACL user {spec.username_prefix}<grant id> with {' '.join((params.get('acl') or '').split())}; "
            "at the end it is turned off, its connections are killed and it is deleted")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisProvider:
    """A ``redis`` provider (``bot.domain.ports.CredentialProvider``) over one redis-py client and its pool."""

    def __init__(self, spec: ProviderSpec, url: str) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise CredentialsUnavailable(
                f"provider {spec.name}: {spec.url_env} must be a redis://user:password@host:port/db URL", spec.name)
        self._secret = unquote(parts.password) if parts.password else ""
        self._host = parts.hostname
        self._port = parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=self.options.connect_timeout, socket_timeout=self.options.statement_timeout,
            # No retries of its own: a failed step is the revocation's to retry (bounded, then failed and said).
            retry=Retry(NoBackoff(), 0), health_check_interval=30)

    def _safe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            text = f"no answer from {self._host}:{self._port} in time"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return text.replace(self._secret, "…") if self._secret else text

    @asynccontextmanager
    async def _admin(self, what: str) -> AsyncIterator[aioredis.Redis]:
        """The admin client; the whole step runs within ``statement_timeout``, and any failure becomes
        ``CredentialsUnavailable`` naming the provider and ``what`` was being done."""
        try:
            async with asyncio.timeout(self.options.statement_timeout):
                yield self._client
        except (CredentialsRefused, CredentialsUnavailable):
            raise
        except (TimeoutError, OSError, RedisError) as exc:
            raise CredentialsUnavailable(f"provider {self.spec.name}: {what} failed: {self._safe(exc)}",
                                         self.spec.name) from None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._client.aclose(), self.options.connect_timeout)
        except (TimeoutError, OSError, RedisError):
            pass

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_id.replace("-", "").lower()

    def _marker(self, account: Account, now: datetime) -> str:
        return (f"(~__grantbot__:grant={account.grant_id}:provider={self.spec.name}:created={utc_stamp(now)} "
                "-@all)")

    async def _found(self, client: aioredis.Redis, username: str, grant_id: str | None = None) -> bool:
        """Whether the user exists; raises ``CredentialsRefused`` when it does without grantbot's marker (for
        ``grant_id``, when given)."""
        user = await client.acl_getuser(username)
        if user is None:
            return False
        found = MARKER.search(repr(user.get("selectors")))
        if found is None or (grant_id is not None and found["grant"] != grant_id):
            raise CredentialsRefused(
                f"provider {self.spec.name}: user {username} exists but grantbot did not make it for this grant "
                "(no grantbot marker among its selectors); it is left alone")
        return True

    async def create(self, account: Account, now: datetime) -> None:
        async with self._admin(f"making user {account.username}") as client:
            if not await self._found(client, account.username, account.grant_id):
                await client.execute_command("ACL", "SETUSER", account.username, "reset", "off",
                                             self._marker(account, now), *check_acl(account.params.get("acl", "")))

    async def issue(self, account: Account, now: datetime) -> Credential:
        password = new_password()
        digest = "#" + hashlib.sha256(password.encode()).hexdigest()
        async with self._admin(f"setting the password of user {account.username}") as client:
            if await self._found(client, account.username, account.grant_id):
                await client.execute_command("ACL", "SETUSER", account.username, "resetpass", digest, "on")
            else:
                await client.execute_command("ACL", "SETUSER", account.username, "reset",
                                             self._marker(account, now), *check_acl(account.params.get("acl", "")),
                                             digest, "on")
        host = self.options.host or self._host
        port = self.options.port or self._port
        scheme = "rediss" if self._tls else "redis"
        return Credential(self.spec.name, KIND, account.expires_at, {
            "username": account.username, "password": password, "host": host, "port": port,
            "url": f"{scheme}://{account.username}:{password}@{host}:{port}",
        })

    @staticmethod
    async def _clients_of(client: aioredis.Redis, username: str) -> int:
        return sum(1 for c in await client.client_list() if c.get("user") == username)

    async def revoke(self, account: Account) -> RevocationReport:
        username = account.username
        async with self._admin(f"revoking user {username}") as client:
            existed = await self._found(client, username)
            killed = 0
            if existed:
                # No new login, then the open connections end; ACL DELUSER would also drop them, but saying how
                # many were ended needs CLIENT KILL's count.
                await client.execute_command("ACL", "SETUSER", username, "off")
                killed = int(await client.execute_command("CLIENT", "KILL", "USER", username))
                await client.execute_command("ACL", "DELUSER", username)
        summary = (f"user {username} deleted, {plural(killed, 'connection')} killed" if existed
                   else f"user {username} was already gone")
        return RevocationReport(summary, {"user": username, "existed": existed, "connections_killed": killed})

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        username = account.username
        async with self._admin(f"checking that user {username} is gone") as client:
            exists = await client.acl_getuser(username) is not None
            connections = await self._clients_of(client, username)
        facts = {"user_exists": exists, "open_connections": connections}
        if exists or connections:
            left = [f"user {username} still exists" if exists else "",
                    f"{plural(connections, 'connection')} of it still open" if connections else ""]
            return RevocationCheck(False, facts, " and ".join(p for p in left if p))
        return RevocationCheck(True, facts, checked="the user is gone and no connection is logged in as it")

    async def accounts(self) -> list[MadeAccount]:
        async with self._admin("listing the users grantbot made") as client:
            lines = [_text(line) for line in await client.execute_command("ACL", "LIST")]
        made = []
        for line in lines:
            name = line.split(" ", 2)[1] if line.startswith("user ") else ""
            found = MARKER.search(line)
            if not name.startswith(self.spec.username_prefix) or found is None:
                continue  # another's user sharing the prefix: never touched
            made.append(MadeAccount(name, found["grant"], parse_stamp(found["created"])))
        return made


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> RedisProvider:
    url = environ.get(spec.url_env or "")
    if not url:
        raise CredentialsUnavailable(
            f"provider {spec.name}: the environment variable {spec.url_env} (its admin URL) is not set", spec.name)
    return RedisProvider(spec, url)
