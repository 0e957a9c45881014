"""RabbitMQ provider: a grant becomes a user with permissions in one vhost, deleted (and its connections closed)
when the grant ends (kind ``rabbitmq``; RabbitMQ 3.10+ with the management plugin).

Everything goes through the management HTTP API (aiohttp), from the provider's ``url_env``
(``http://user:password@host:15672``): for each grant the user ``<prefix><grant id without dashes>``, tagged with
grantbot's marker (``grantbot:grant=<id>:provider=<name>:created=<time>``; a tag grants nothing, and a user without
it is never altered or deleted), with the rule's ``configure`` / ``write`` / ``read`` regular expressions on its
``vhost``. Made without a password (no login) at approval; at the hand-over it gets one, 32 random bytes sent only
as RabbitMQ's salted SHA-256 hash (``rabbit_password_hashing_sha256``), so the plaintext is in no request or log.

Revoke: the password is taken away (no new login), its connections are closed (``DELETE
/api/connections/username/{user}``, from RabbitMQ's connection tracking, not the statistics that lag by seconds),
the user is deleted (which also closes any connection that slipped in). The check: no such user, no connection of
it. RabbitMQ has no expiry of its own for a user: it outlives its grant while grantbot is down (reconciliation
removes it when grantbot is back).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

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

KIND = "rabbitmq"
MARKER = re.compile(r"grantbot:grant=(?P<grant>[0-9a-f-]{36}):provider=(?P<provider>[A-Za-z0-9_.-]+):"
                    r"created=(?P<created>[0-9TZ:-]+)")
_PREFIX = re.compile(r"[a-z_][a-z0-9_.-]*")
NOTHING = "^$"  # a permission regex that matches no resource


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64 of a 4-byte salt and SHA-256(salt + password)
    (rabbitmq.com/docs/passwords "Computing Password Hash")."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _tags(user: dict) -> list[str]:
    """A user's tags: a list since RabbitMQ 3.9, a comma-separated string before."""
    tags = user.get("tags") or []
    return [t for t in tags.split(",") if t] if isinstance(tags, str) else [str(t) for t in tags]


def _marked(user: dict) -> re.Match | None:
    return next((found for tag in _tags(user) if (found := MARKER.fullmatch(tag))), None)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regular expression {value!r}: {exc}") from None
    return value


class Options(BaseModel):
    """The provider's ``options:``. ``amqp_host``/``amqp_port``/``amqp_scheme``: where the pipeline connects
    (default: the management URL's host, 5672, ``amqp``). Time limits in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    request_timeout: float = Field(default=10.0, gt=0, le=3600)
    amqp_host: str | None = None
    amqp_port: int = Field(default=5672, ge=1, le=65535)
    amqp_scheme: str = Field(default="amqp", pattern=r"^amqps?$")


class Params(BaseModel):
    """A rule's ``credentials:`` entry: the ``vhost`` and the permission regexes on it (default: nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    vhost: str = Field(min_length=1, max_length=255)
    configure: str = NOTHING
    write: str = NOTHING
    read: str = NOTHING

    @field_validator("configure", "write", "read")
    @classmethod
    def _permission(cls, value: str) -> str:
        return _regex(value)


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    problems = spec_problems(spec, KIND, options=Options)
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > 64:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits, "
                         "'_', '.' and '-' (starting with a letter or '_'), at most 64 characters"))
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """``a RabbitMQ user gb_<grant id> in vhost shop (configure ^$, write ^orders$, read ^orders$); …``"""
    perms = ", ".join(f"{p} {params.get(p) or NOTHING}" for p in ("configure", "write", "read"))
    return (f"a RabbitMQ user {spec.username_prefix}<grant id> in vhost {params.get('vhost')} ({perms}); at the end "
            "its connections are closed and it is deleted")


class RabbitMQProvider:
    """A ``rabbitmq`` provider (``bot.domain.ports.CredentialProvider``) over the management HTTP API."""

    def __init__(self, spec: ProviderSpec, url: str) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CredentialsUnavailable(
                f"provider {spec.name}: {spec.url_env} must be the management API's http://user:password@host:15672 "
                "URL", spec.name)
        self._secret = unquote(parts.password or "")
        login = f"{unquote(parts.username or 'guest')}:{self._secret}"
        self._authorization = "Basic " + base64.b64encode(login.encode()).decode()
        self._host = parts.hostname
        port = f":{parts.port}" if parts.port else ""
        self._base = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}/api"
        self._http: aiohttp.ClientSession | None = None

    # -- the management API ---------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                headers={"Authorization": self._authorization},
                timeout=aiohttp.ClientTimeout(total=self.options.request_timeout,
                                              connect=self.options.connect_timeout))
        return self._http

    async def _call(self, what: str, method: str, path: str, body: Any = None,
                    expect: tuple[int, ...] = (200, 201, 204)) -> tuple[int, Any]:
        """One API call; a status outside ``expect`` (and 404, which callers may expect) or a network failure is
        ``CredentialsUnavailable`` naming the provider, ``what`` was being done and RabbitMQ's reason."""
        try:
            async with self._session().request(method, self._base + path, json=body) as resp:
                try:
                    data = await resp.json(content_type=None)  # None for an empty body
                except ValueError:
                    data = None
                if resp.status in expect:
                    return resp.status, data
                reason = data.get("reason") if isinstance(data, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            text = f"no answer from {self._host} in time" if isinstance(exc, TimeoutError) else \
                f"{type(exc).__name__}: {exc}"
            raise CredentialsUnavailable(f"provider {self.spec.name}: {what} failed: "
                                         f"{text.replace(self._secret, '…') if self._secret else text}",
                                         self.spec.name) from None
        raise CredentialsUnavailable(f"provider {self.spec.name}: {what} failed: HTTP {resp.status}"
                                     + (f": {reason}" if reason else ""), self.spec.name)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- names and markers ----------------------------------------------------------------------------------

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_id.replace("-", "").lower()

    @staticmethod
    def _user_path(username: str) -> str:
        return "/users/" + quote(username, safe="")

    def _marker(self, account: Account, now: datetime) -> str:
        return f"grantbot:grant={account.grant_id}:provider={self.spec.name}:created={utc_stamp(now)}"

    async def _user(self, what: str, username: str, grant_id: str | None = None) -> dict | None:
        """The user, or None; raises ``CredentialsRefused`` when it exists without grantbot's marker (for
        ``grant_id``, when given)."""
        status, user = await self._call(what, "GET", self._user_path(username), expect=(200, 404))
        if status == 404:
            return None
        found = _marked(user)
        if found is None or (grant_id is not None and found["grant"] != grant_id):
            raise CredentialsRefused(
                f"provider {self.spec.name}: user {username} exists but grantbot did not make it for this grant "
                "(no grantbot tag); it is left alone")
        return user

    # -- the port -------------------------------------------------------------------------------------------

    async def _put_user(self, what: str, account: Account, tags: str, password: str | None) -> None:
        body = {"password_hash": password_hash(password) if password else "", "tags": tags,
                "hashing_algorithm": "rabbit_password_hashing_sha256"}
        await self._call(what, "PUT", self._user_path(account.username), body)

    async def _permit(self, what: str, account: Account) -> None:
        params = account.params
        await self._call(what, "PUT", f"/permissions/{quote(params['vhost'], safe='')}/"
                                      f"{quote(account.username, safe='')}",
                         {p: params.get(p) or NOTHING for p in ("configure", "write", "read")})

    async def create(self, account: Account, now: datetime) -> None:
        what = f"making user {account.username}"
        if await self._user(what, account.username, account.grant_id) is None:
            await self._put_user(what, account, self._marker(account, now), None)  # no password: no login yet
            await self._permit(what, account)

    async def issue(self, account: Account, now: datetime) -> Credential:
        what = f"setting the password of user {account.username}"
        password = new_password()
        user = await self._user(what, account.username, account.grant_id)
        tags = ",".join(_tags(user)) if user else self._marker(account, now)
        await self._put_user(what, account, tags, password)
        if user is None:
            await self._permit(what, account)
        host = self.options.amqp_host or self._host
        port = self.options.amqp_port
        vhost = account.params["vhost"]
        uri = (f"{self.options.amqp_scheme}://{quote(account.username)}:{quote(password, safe='')}@{host}:{port}/"
               f"{quote(vhost, safe='')}")
        return Credential(self.spec.name, KIND, account.expires_at, {
            "username": account.username, "password": password, "host": host, "port": port, "vhost": vhost,
            "uri": uri,
        })

    async def _connections(self, what: str, username: str) -> int:
        _, connections = await self._call(what, "GET", "/connections/username/" + quote(username, safe=""))
        return len(connections or [])

    async def revoke(self, account: Account) -> RevocationReport:
        username = account.username
        what = f"revoking user {username}"
        user = await self._user(what, username)
        closed = 0
        if user is not None:
            # No new login first (the password goes), then its connections end, then the user.
            await self._call(what, "PUT", self._user_path(username),
                             {"password_hash": "", "tags": ",".join(_tags(user))})
            closed = await self._connections(what, username)
            if closed:
                await self._call(what, "DELETE", "/connections/username/" + quote(username, safe=""),
                                 expect=(200, 204, 404))
            await self._call(what, "DELETE", self._user_path(username), expect=(200, 204, 404))
        summary = (f"user {username} deleted, {plural(closed, 'connection')} closed" if user is not None
                   else f"user {username} was already gone")
        return RevocationReport(summary, {"user": username, "existed": user is not None,
                                          "connections_closed": closed})

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        username = account.username
        what = f"checking that user {username} is gone"
        status, _ = await self._call(what, "GET", self._user_path(username), expect=(200, 404))
        connections = await self._connections(what, username)
        exists = status == 200
        facts = {"user_exists": exists, "open_connections": connections}
        if exists or connections:
            left = [f"user {username} still exists" if exists else "",
                    f"{plural(connections, 'connection')} of it still open" if connections else ""]
            return RevocationCheck(False, facts, " and ".join(p for p in left if p))
        return RevocationCheck(True, facts, checked="the user is gone and none of its connections is open")

    async def accounts(self) -> list[MadeAccount]:
        _, users = await self._call("listing the users grantbot made", "GET", "/users")
        made = []
        for user in users or []:
            name = str(user.get("name", ""))
            found = _marked(user)
            if name.startswith(self.spec.username_prefix) and found is not None:
                made.append(MadeAccount(name, found["grant"], parse_stamp(found["created"])))
        return made


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> RabbitMQProvider:
    url = environ.get(spec.url_env or "")
    if not url:
        raise CredentialsUnavailable(
            f"provider {spec.name}: the environment variable {spec.url_env} (its admin URL) is not set", spec.name)
    return RabbitMQProvider(spec, url)
