"""The signing keys of trusted CI OIDC issuers, fetched over HTTP and cached (RFC 7517 JWK Sets).

Where the keys come from: the issuer's configured ``jwks_uri``, else the ``jwks_uri`` of its discovery document
``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4; the document's ``issuer`` must
equal the configured one, §4.3). Keys are parsed by PyJWT (``jwt.PyJWK``), never by hand; each key is bound to
one algorithm (its ``alg``, else the one its ``kty``/``crv`` implies), as RFC 8725 §3.1 asks. Keys whose
algorithm is not in the verifier's allow-list (``kty: oct`` shared secrets, for one) are dropped.

When the set is fetched again:
- a token names a ``kid`` the cached set lacks (the issuer rotated its keys) — at once, as go-oidc (behind
  Vault's JWT auth) does, so a rotation costs pipelines nothing; requests waiting meanwhile share that one fetch,
  and fetches are at least :data:`REFETCH_FLOOR_SECONDS` apart per issuer, so a flood of tokens with made-up
  ``kid``s costs the issuer at most one fetch per floor;
- the cached set is older than :data:`MAX_AGE_SECONDS`, so a key the issuer withdrew stops being trusted;
- nothing was ever fetched — retried at most every :data:`REFETCH_FLOOR_SECONDS` while the issuer is unreachable.

A failed fetch keeps the last good set. Times are measured on the injected clock; HTTP goes through one
``aiohttp.ClientSession`` (set by the application's ``cleanup_ctx``) with a :data:`FETCH_TIMEOUT_SECONDS` budget,
so fetching never blocks the event loop (PyJWT's ``PyJWKClient`` uses blocking urllib).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
import jwt

from bot.domain.policy import Issuer, is_trusted_url
from bot.domain.ports import Clock

log = logging.getLogger(__name__)

REFETCH_FLOOR_SECONDS = 5  # fetches of one issuer's keys are at least this far apart (unknown kid, or retrying)
MAX_AGE_SECONDS = 3600  # a key set older than this is refreshed on next use
FETCH_TIMEOUT_SECONDS = 5.0  # the whole fetch (connect, headers, body) of one document
MAX_DOCUMENT_BYTES = 256 * 1024  # a JWKS or discovery document larger than this is refused


class KeysUnavailable(Exception):
    """No key set of the issuer could ever be fetched (its discovery document or JWKS is unreachable or bad)."""


class UnknownKey(Exception):
    """The issuer's current key set has no key with the token's ``kid`` (``refreshed``: whether a fetch was
    attempted for it and succeeded; False when rate limited or the fetch failed)."""

    def __init__(self, refreshed: bool) -> None:
        super().__init__("unknown kid")
        self.refreshed = refreshed


class FetchError(Exception):
    """One fetch failed; the message says why in words fit for a log line (no key material)."""


@dataclass
class _IssuerKeys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)  # by kid ("" for a key without one)
    fetched_at: datetime | None = None  # the last successful fetch
    attempted_at: datetime | None = None  # the last attempt, successful or not
    attempt_ok: bool = False  # whether that attempt succeeded
    finished: int = 0  # fetches finished, failed or not (tells a waiter whether one ended while it waited)
    jwks_uri: str | None = None  # discovered once, then reused
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksCache:
    """Per-issuer key sets. ``allowed_algorithms`` are the only algorithms a cached key may be bound to."""

    def __init__(self, clock: Clock, allowed_algorithms: frozenset[str]) -> None:
        self._clock = clock
        self._allowed = allowed_algorithms
        self._issuers: dict[str, _IssuerKeys] = {}
        self.session: aiohttp.ClientSession | None = None  # set while the application runs

    async def key(self, issuer: Issuer, kid: str | None) -> jwt.PyJWK:
        """The issuer's key named ``kid`` (a token without ``kid`` gets the only key, if there is exactly one).

        Raises :class:`KeysUnavailable` when no key set was ever fetched, :class:`UnknownKey` when the set,
        refreshed if allowed, has no such key.
        """
        state = self._issuers.setdefault(issuer.name, _IssuerKeys())
        found = self._pick(state, kid)
        if found is not None and not self._stale(state):
            return found
        # Counted by fetches finished, not started: a request arriving while a fetch is under way shares it (its
        # end is counted after this read), instead of starting another once it has the lock.
        seen = state.finished
        async with state.lock:  # one fetch per issuer at a time
            found = self._pick(state, kid)
            if state.finished != seen:
                # A fetch ended while this request waited for the lock: it was this request's fetch too.
                refreshed = state.attempt_ok
            elif (found is None or self._stale(state)) and self._may_fetch(state):
                refreshed = await self._refresh(issuer, state)
                found = self._pick(state, kid)
            else:
                refreshed = False
        if found is not None:
            return found
        if state.fetched_at is None:
            raise KeysUnavailable(issuer.name)
        raise UnknownKey(refreshed)

    @staticmethod
    def _pick(state: _IssuerKeys, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(state.keys.values())) if len(state.keys) == 1 else None
        return state.keys.get(kid)

    def _stale(self, state: _IssuerKeys) -> bool:
        return state.fetched_at is None or self._clock.now() - state.fetched_at >= timedelta(seconds=MAX_AGE_SECONDS)

    def _may_fetch(self, state: _IssuerKeys) -> bool:
        if state.attempted_at is None:
            return True
        return self._clock.now() - state.attempted_at >= timedelta(seconds=REFETCH_FLOOR_SECONDS)

    async def _refresh(self, issuer: Issuer, state: _IssuerKeys) -> bool:
        """Fetch the key set; on success replace the cached one and return True, else keep it and return False.
        The discovery document and the key set together take at most :data:`FETCH_TIMEOUT_SECONDS`, and the
        floor to the next fetch counts from the end of this one (a slow failure must not be retried at once)."""
        state.attempt_ok = False
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
                jwks_uri = issuer.jwks_uri or state.jwks_uri or await self._discover(issuer)
                state.jwks_uri = None if issuer.jwks_uri else jwks_uri
                keys = self._parse(await self._get_json(jwks_uri))
        except (FetchError, TimeoutError) as exc:
            state.jwks_uri = None  # the keys may have moved: ask the discovery document again next time
            why = exc if isinstance(exc, FetchError) else f"no answer within {FETCH_TIMEOUT_SECONDS:g} s"
            log.warning("could not fetch the signing keys of issuer %s: %s; keeping the last good set", issuer.name, why)
            return False
        finally:
            state.attempted_at = self._clock.now()
            state.finished += 1
        state.keys = keys
        state.fetched_at, state.attempt_ok = self._clock.now(), True
        log.info("fetched %d signing key(s) of issuer %s", len(keys), issuer.name)
        return True

    async def _discover(self, issuer: Issuer) -> str:
        """``jwks_uri`` from the discovery document, whose ``issuer`` must be the configured one (§4.3)."""
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if document.get("issuer") != issuer.issuer:
            raise FetchError(f"the discovery document at {url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_trusted_url(jwks_uri):
            raise FetchError(f"the discovery document at {url} has no https jwks_uri")
        return jwks_uri

    def _parse(self, document: dict) -> dict[str, jwt.PyJWK]:
        """The usable signature keys of a JWK Set, by kid; PyJWT parses each key and skips unusable ones."""
        try:
            key_set = jwt.PyJWKSet.from_dict(document)
        except jwt.PyJWTError as exc:
            raise FetchError(f"the JWKS has no usable keys ({type(exc).__name__})") from None
        keys = {
            key.key_id or "": key
            for key in key_set
            if key.algorithm_name in self._allowed and key.public_key_use in (None, "sig")
        }
        if not keys:
            raise FetchError("the JWKS has no signature key for an allowed algorithm")
        return keys

    async def _get_json(self, url: str) -> dict:
        if self.session is None:
            raise FetchError("the HTTP client is not running")
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS), allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise FetchError(f"{url} answered HTTP {resp.status}")
                raw = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise FetchError(f"{url} could not be reached ({type(exc).__name__})") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(raw)
        except ValueError:
            raise FetchError(f"{url} did not send JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} did not send a JSON object")
        return document
