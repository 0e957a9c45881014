"""Webhook provider: for anything else (Kubernetes RoleBindings, cloud roles, an internal system), grantbot asks a
hook of yours to issue, revoke and verify (kind ``webhook``; DESIGN.md "Other kinds").

Each call is a ``POST`` of JSON ``{"action": "issue" | "revoke" | "verify", "grant": {"id", "identity",
"environment", "scopes", "expires_at"}, "params": {…the rule's params…}, "account": "<prefix><grant id>"}`` to the
provider's ``url``, signed like grantbot's own requests: ``X-Grantbot-Timestamp: <unix seconds>`` and
``X-Grantbot-Signature: v1=<hex HMAC-SHA256(secret, "v1:{timestamp}:{raw body}")>``, the secret read from the
variable ``secret_env`` names. The hook should refuse a timestamp more than 300 s away and compare signatures with
a constant-time comparison.

- ``issue`` (at the hand-over, and again at a reissue: make a fresh secret and drop the old one): a 2xx answer is a
  JSON object whose fields become the credential handed to the pipeline, once (``provider``, ``kind`` and
  ``expires_at`` are grantbot's).
- ``revoke``: a 2xx answer means done (an optional ``summary`` string says what was done); ``verify``: a 2xx
  answer ``{"revoked": true | false}``. Both are retried like every provider's, then ``failed`` with an alert.

Nothing is made at approval (the hook is first called at the hand-over). An account a crash left behind (the hook
made it, grantbot died before recording it) is found by reconciliation only when the provider's ``options`` say
``list: true``: the hook is then also asked ``{"action": "list", "prefix": "<username prefix>"}`` and answers
``{"accounts": [{"account": "<name>", "created_at": "<RFC 3339>"}, …]}``, every account it holds whose name starts
with the prefix; an account whose grant is not active is revoked like any other orphan. Without it a hook should
end what it made at the grant's ``expires_at`` by itself (it is told it). The hook's answers are never logged: only
their status and an ``error`` field of a failed one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from bot.domain.credentials import (
    Account,
    Credential,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationReport,
)
from bot.domain.errors import CredentialsUnavailable
from bot.providers.common import model_problems, spec_problems

KIND = "webhook"
RESERVED = ("provider", "kind", "expires_at")
_PREFIX = re.compile(r"[a-z_][a-z0-9_-]*")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, "v1:{timestamp}:{raw body}")>``."""
    return "v1=" + hmac.new(secret.encode(), f"v1:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


class Options(BaseModel):
    """The provider's ``options:``: ``timeout``, seconds one call may take; ``list``, the hook answers the ``list``
    action (reconciliation then finds accounts a crash left behind)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=10.0, gt=0, le=300)
    list: bool = False


class Params(BaseModel):
    """A rule's ``credentials:`` entry: ``params``, passed through to the hook as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    params: dict[str, Any] = Field(default_factory=dict)


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    problems = spec_problems(spec, KIND, ("url", "secret_env"), url_env=False, options=Options)
    extras = spec.extras()
    url = extras.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        problems.append((("url",), "a webhook provider needs url: the hook's http(s):// address"))
    if not isinstance(extras.get("secret_env"), str) or not _ENV.fullmatch(extras.get("secret_env") or ""):
        problems.append((("secret_env",), "a webhook provider needs secret_env: the variable holding the secret its "
                         "calls are signed with"))
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > 64:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits, '_' "
                         "and '-' (starting with a letter or '_'), at most 64 characters"))
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """``what the hook https://hooks.internal/grant issues for {"role": "view"}; …``"""
    passed = json.dumps(params.get("params") or {}, sort_keys=True)
    return (f"what the hook {spec.extras().get('url')} issues for {passed}; at the end the hook is asked to revoke it "
            "and to confirm")


def secret_variables(spec: ProviderSpec) -> list[tuple[str, str]]:
    """(key, variable) of the environment variables this provider needs at start."""
    return [("secret_env", spec.extras()["secret_env"])] if spec.extras().get("secret_env") else []


class WebhookProvider:
    """A ``webhook`` provider (``bot.domain.ports.CredentialProvider``) calling one hook with aiohttp."""

    def __init__(self, spec: ProviderSpec, secret: str) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        self._url = spec.extras()["url"]
        self._secret = secret
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_id.replace("-", "").lower()

    async def _call(self, action: str, account: Account) -> Any:
        """POST the signed call about ``account``; returns the answer's JSON object (see :meth:`_post`)."""
        return await self._post({
            "action": action,
            "grant": {"id": account.grant_id, "identity": account.identity, "environment": account.environment,
                      "scopes": list(account.scopes),
                      "expires_at": account.expires_at.isoformat().replace("+00:00", "Z")},
            "params": account.params.get("params") or {},
            "account": account.username,
        }, f"provider {self.spec.name}: the hook's {action} of {account.username}")

    async def _post(self, call: dict, what: str) -> dict:
        """POST ``call`` signed; returns the answer's JSON object. Raises ``CredentialsUnavailable`` (starting with
        ``what``) for a network failure, a non-2xx answer (with its ``error`` field, never its body) or an answer
        that is not a JSON object."""
        body = json.dumps(call, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Grantbot-Timestamp": timestamp,
                   "X-Grantbot-Signature": signature(self._secret, timestamp, body)}
        try:
            async with self._session().post(self._url, data=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise CredentialsUnavailable(f"{what} failed: {reason}", self.spec.name) from None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            data = None
        if not 200 <= status < 300:
            error = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else None
            raise CredentialsUnavailable(f"{what} failed: HTTP {status}" + (f": {error[:200]}" if error else ""),
                                         self.spec.name)
        if not isinstance(data, dict):
            raise CredentialsUnavailable(f"{what} failed: the answer is not a JSON object", self.spec.name)
        return data

    async def create(self, account: Account, now) -> None:
        """Nothing before the hand-over: the hook issues then."""

    async def issue(self, account: Account, now) -> Credential:
        data = await self._call("issue", account)
        fields = {k: v for k, v in data.items() if k not in RESERVED}
        return Credential(self.spec.name, KIND, account.expires_at, fields)

    async def revoke(self, account: Account) -> RevocationReport:
        data = await self._call("revoke", account)
        said = data.get("summary") if isinstance(data.get("summary"), str) else None
        summary = f"{account.username} revoked by the hook" + (f": {said[:300]}" if said else "")
        return RevocationReport(summary, {"account": account.username, "hook_summary": said[:300] if said else None})

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        data = await self._call("verify", account)
        revoked = data.get("revoked")
        if revoked is True:
            return RevocationCheck(True, {"revoked": True}, checked="the hook confirms it is revoked")
        return RevocationCheck(False, {"revoked": revoked}, f"the hook says {account.username} is not revoked "
                                                            f"(revoked: {json.dumps(revoked)})")

    async def accounts(self) -> list[MadeAccount]:
        """The accounts the hook holds with the provider's prefix (the ``list`` action), when ``options.list`` says
        it answers it; else none (the hook ends what it made at the grant's expiry by itself). Names that are not
        the prefix and a grant id are not grantbot's and are left out. Raises ``CredentialsUnavailable`` when the
        hook fails or its answer is not ``{"accounts": [{"account", "created_at"}, …]}``."""
        if not self.options.list:
            return []
        prefix = self.spec.username_prefix
        what = f"provider {self.spec.name}: the hook's list"
        data = await self._post({"action": "list", "prefix": prefix}, what)
        listed = data.get("accounts")
        if not isinstance(listed, list):
            raise CredentialsUnavailable(f"{what} failed: the answer has no \"accounts\" list", self.spec.name)
        made = []
        for entry in listed:
            name = entry.get("account") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name.startswith(prefix):
                continue
            grant_id = _grant_id(name[len(prefix):])
            if grant_id is None:
                continue
            created_at = _moment(entry.get("created_at"))
            if created_at is None:  # without it a hand-over in progress could look like an orphan
                raise CredentialsUnavailable(f"{what} failed: account {name[:100]!r} has no created_at "
                                             "(an RFC 3339 time with its zone)", self.spec.name)
            made.append(MadeAccount(name, grant_id, created_at))
        return made


def _grant_id(text: str) -> str | None:
    """The grant id an account name ends with (:meth:`WebhookProvider.username`: 32 lower-case hex digits)."""
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        return None
    return str(uuid.UUID(hex=text))


def _moment(value: Any) -> datetime | None:
    """An aware UTC datetime from RFC 3339 text (``Z`` or an offset), else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> WebhookProvider:
    variable = spec.extras().get("secret_env") or ""
    secret = environ.get(variable)
    if not secret:
        raise CredentialsUnavailable(
            f"provider {spec.name}: the environment variable {variable} (its hook's secret) is not set", spec.name)
    return WebhookProvider(spec, secret)
