"""How the client proves who it is on each call, and what it says about the CI job it runs in.

Two schemes (DESIGN.md "Caller authentication"):

- HMAC: ``GRANTBOT_IDENTITY`` and its secret (``GRANTBOT_SECRET`` or ``--secret-file``); every call is signed
  afresh with a new timestamp and nonce, so a retry is never refused as a replay;
- a CI platform's OIDC identity token as ``Authorization: Bearer``: GitHub Actions' is fetched from the runner
  (``ACTIONS_ID_TOKEN_REQUEST_URL`` + ``&audience=…``, bearer ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``) for every call,
  since grantbot lets a CI token create one access request only and a retried ``POST`` needs an unused one (and a
  long wait must not outlive a token); GitLab's is the job's ``id_tokens:`` variable ``GRANTBOT_ID_TOKEN``, one
  token for the whole job: grantbot answers a retried ``POST`` that carries the same ``Idempotency-Key`` with
  the request the token already created (README, "Requesting access from CI with OIDC").
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from bot.client.exits import ExitCode, Stop, Transient
from bot.signing import IDENTITY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

DEFAULT_OIDC_AUDIENCE = "grantbot"
# Written by `grantbot dev` (mode 0600): the sandbox's HMAC identity, used when no other is given.
DEV_IDENTITY_FILE = Path(".grantbot") / "dev-identity.json"
TOKEN_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=30)


class Credentials(Protocol):
    """Authentication headers for one attempt of one call (a retry asks again); ``hint``: what to check when
    grantbot refuses them (401), in the client's own terms (its settings, not the wire format)."""

    hint: str

    async def headers(self, http: aiohttp.ClientSession, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        ...


class HmacCredentials:
    """HMAC-SHA256 with the identity's shared secret, a fresh timestamp and a fresh nonce on every attempt."""

    def __init__(self, identity: str, secret: bytes) -> None:
        self.identity = identity
        self._secret = secret
        self.hint = (f"check GRANTBOT_IDENTITY (here {identity!r}) and GRANTBOT_SECRET or --secret-file: grantbot "
                     "must be given this identity with this very secret (GRANTBOT_SECRET_<IDENTITY> on its side).")

    async def headers(self, http: aiohttp.ClientSession, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]
        return {IDENTITY_HEADER: self.identity, TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
                SIGNATURE_HEADER: signature(self._secret, timestamp, method, path_qs, body, nonce)}


class GithubActionsToken:
    """GitHub Actions' OIDC identity token, fetched from the runner for every attempt.

    The request is the one GitHub's own toolkit (``core.getIDToken``) makes: ``GET
    $ACTIONS_ID_TOKEN_REQUEST_URL&audience=<audience>`` with ``Authorization: Bearer
    $ACTIONS_ID_TOKEN_REQUEST_TOKEN``, answered ``{"value": "<JWT>"}``.
    """

    def __init__(self, request_url: str, request_token: str, audience: str) -> None:
        self._url = URL(f"{request_url}&audience={quote(audience, safe='')}", encoded=True)
        self._request_token = request_token
        self.hint = (f"check that grantbot's policy trusts GitHub's issuer for this repository and expects the "
                     f"audience {audience!r} (--oidc-audience, GRANTBOT_OIDC_AUDIENCE).")

    async def headers(self, http: aiohttp.ClientSession, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._fetch(http)}"}

    async def _fetch(self, http: aiohttp.ClientSession) -> str:
        headers = {"Authorization": f"Bearer {self._request_token}", "Accept": "application/json"}
        async with http.get(self._url, headers=headers, timeout=TOKEN_FETCH_TIMEOUT) as resp:
            if resp.status == 429 or resp.status >= 500:
                raise Transient(f"GitHub's OIDC token endpoint answered HTTP {resp.status}")
            if resp.status != 200:
                raise Stop(ExitCode.USAGE, f"GitHub's OIDC token endpoint refused to issue an identity token (HTTP "
                           f"{resp.status}); give the job `permissions: id-token: write`.")
            try:
                value = json.loads(await resp.read()).get("value")
            except (ValueError, AttributeError):
                value = None
        if not isinstance(value, str) or not value:
            raise Stop(ExitCode.USAGE, "GitHub's OIDC token endpoint answered without a token (no \"value\").")
        return value


class BearerToken:
    """One identity token for the whole job (GitLab's ``id_tokens:`` variable)."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.hint = ("check that grantbot's policy trusts this GitLab's issuer and that the job's id_tokens: entry "
                     "for GRANTBOT_ID_TOKEN has the aud: it expects.")

    async def headers(self, http: aiohttp.ClientSession, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}


def oidc_credentials(platform: str, environ: Mapping[str, str], audience: str | None) -> Credentials:
    """``--oidc github|gitlab``: the job's identity token. Raises :class:`Stop` (usage) naming the missing setting."""
    if platform == "github":
        url, token = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"), environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not url or not token:
            raise Stop(ExitCode.USAGE, "--oidc github: ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN "
                       "are not set; run on GitHub Actions with `permissions: id-token: write` in the workflow or job.")
        return GithubActionsToken(url, token, audience or environ.get("GRANTBOT_OIDC_AUDIENCE") or DEFAULT_OIDC_AUDIENCE)
    token = environ.get("GRANTBOT_ID_TOKEN", "").strip()
    if not token:
        raise Stop(ExitCode.USAGE, "--oidc gitlab: GRANTBOT_ID_TOKEN is not set; declare it under the job's id_tokens: "
                   "with aud: set to the audience grantbot's policy names for the GitLab issuer.")
    return BearerToken(token)


def hmac_credentials(identity: str | None, secret_file: Path | None, environ: Mapping[str, str]) -> HmacCredentials:
    """The HMAC identity from ``--identity``/``GRANTBOT_IDENTITY`` and its secret from ``--secret-file`` or
    ``GRANTBOT_SECRET``; failing both, the one ``grantbot dev`` made in this folder. Raises :class:`Stop` (usage)."""
    identity = identity or environ.get("GRANTBOT_IDENTITY")
    secret = None
    if secret_file is not None:
        try:
            secret = secret_file.read_text().strip()
        except OSError as exc:
            raise Stop(ExitCode.USAGE, f"--secret-file {secret_file}: cannot read it ({exc.strerror}).") from None
        if not secret:
            raise Stop(ExitCode.USAGE, f"--secret-file {secret_file} is empty.")
    secret = secret or environ.get("GRANTBOT_SECRET")
    if (not identity or not secret) and DEV_IDENTITY_FILE.exists():
        dev = json.loads(DEV_IDENTITY_FILE.read_text())
        identity, secret = identity or dev["identity"], secret or dev["secret"]
    if not identity or not secret:
        raise Stop(ExitCode.USAGE, "No identity to sign with: set GRANTBOT_IDENTITY and GRANTBOT_SECRET (or "
                   "--secret-file), use --oidc github|gitlab in CI, or run `grantbot dev` in this folder first.")
    return HmacCredentials(identity, secret.encode())


def ci_context(environ: Mapping[str, str]) -> dict[str, str]:
    """The job's run URL, commit and repository, from GitHub Actions' or GitLab CI's predefined variables; empty
    elsewhere. They go into the request's ``context`` (shown to approvers on the card)."""
    if environ.get("GITHUB_RUN_ID") and environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        repository = environ["GITHUB_REPOSITORY"]
        context = {"run_url": f"{server}/{repository}/actions/runs/{environ['GITHUB_RUN_ID']}",
                   "repository": repository, "commit": environ.get("GITHUB_SHA", "")}
    elif environ.get("CI_JOB_URL") or environ.get("CI_PROJECT_PATH"):
        context = {"run_url": environ.get("CI_JOB_URL", ""), "repository": environ.get("CI_PROJECT_PATH", ""),
                   "commit": environ.get("CI_COMMIT_SHA", "")}
    else:
        return {}
    return {key: value for key, value in context.items() if value}
