"""Checking grantbot's access tokens in a resource server (README, "Checking grantbot's tokens in your service").

    verifier = TokenVerifier("https://grantbot.acme.example", audience="https://api.acme.example",
                             environment="production")
    token = await verifier.verify(bearer_token, scopes=["db:write"])   # raises InvalidToken
    token.subject, token.scopes, token.grant_id, token.expires_at

Local checks (every call, no network once the keys are cached), as RFC 9068 §4 asks of a resource server:

- the header's ``typ`` is ``at+jwt`` (or ``application/at+jwt``): an ID token or any other JWT is refused;
- ``alg`` is on the allow-list (ES256, grantbot's) and the signature verifies with the key named by ``kid`` in
  grantbot's JWKS (RFC 7517), found through its RFC 8414 metadata;
- ``iss`` is grantbot's issuer exactly; ``aud`` contains the audience this service was given;
- ``exp``, ``nbf`` and ``iat`` against the clock with a small leeway; ``iss, exp, aud, sub, client_id, iat, jti``
  are required (RFC 9068 §2.2);
- optionally, the ``environment`` claim equals this service's environment (a token without it fails), and the
  ``scope`` claim holds every scope a route needs (``insufficient_scope``, RFC 6750 §3.1).

Keys are cached: fetched at the first call, refetched when older than ``jwks_max_age_seconds`` (the JWKS answer's
own ``max-age`` is 300 s), and at once when a token names a ``kid`` the cache does not hold (grantbot rotated its
key), at most once every ``jwks_min_refetch_seconds`` so tokens with made-up ``kid`` values cannot make this
service hammer grantbot. A failed fetch keeps the last good keys.

Revocation: a token passes local checks until its ``exp`` even when its grant was revoked, since nothing in the
token can change. With ``introspection_client=(id, secret)`` (a client of ``GRANTBOT_INTROSPECTION_CLIENTS``) each
token that passes the local checks is also asked about at grantbot's RFC 7662 introspection endpoint, and the
answer is cached for ``introspection_cache_seconds`` (default 5): a revoked token is refused within that long.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1, §4
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")  # RFC 9068 §2.2
DEFAULT_ALGORITHMS = ("ES256",)
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)


class InvalidToken(Exception):
    """The token must be refused. ``reason`` says why and never quotes the token; ``error`` is RFC 6750 §3.1's
    code: ``invalid_token`` (answer 401) or ``insufficient_scope`` (answer 403)."""

    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class CannotVerify(Exception):
    """grantbot's metadata, keys or introspection could not be reached (or refused this service's credentials):
    nothing is known about the token, so refuse the call with 503 and let the client retry. ``status`` is the
    HTTP status grantbot answered, when it answered."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check: who holds it (``subject``, the pipeline's identity), what it may do."""

    claims: dict[str, Any]
    subject: str
    scopes: frozenset[str]
    audience: list[str]
    environment: str | None
    grant_id: str | None
    expires_at: datetime
    introspected: bool = False


@dataclass
class _Metadata:
    issuer: str
    jwks_uri: str
    introspection_endpoint: str | None


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None  # monotonic seconds of the last fetch attempt
    loaded_at: float | None = None  # monotonic seconds of the last good fetch


class TokenVerifier:
    """Verifies grantbot access tokens for one resource server (see the module).

    ``grantbot_url``: where grantbot serves its metadata (``/.well-known/oauth-authorization-server``);
    ``audience``: this service's audience (the token's ``aud`` must contain it); ``environment``: if given, the
    token's ``environment`` claim must equal it; ``introspection_client``: ``(client_id, secret)`` to also ask
    grantbot whether the token is still active. ``clock`` returns unix seconds (tests move it).
    """

    def __init__(self, grantbot_url: str, audience: str, *, environment: str | None = None,
                 introspection_client: tuple[str, str] | None = None, introspection_cache_seconds: float = 5.0,
                 leeway_seconds: float = 10.0, algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
                 jwks_max_age_seconds: float = 300.0, jwks_min_refetch_seconds: float = 5.0,
                 http: aiohttp.ClientSession | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.grantbot_url = grantbot_url.rstrip("/")
        self.audience = audience
        self.environment = environment
        self.leeway = leeway_seconds
        self.algorithms = tuple(algorithms)
        self._client = introspection_client
        self._cache_seconds = introspection_cache_seconds
        self._cache: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._cache_limit = 10_000
        self._max_age = jwks_max_age_seconds
        self._min_refetch = jwks_min_refetch_seconds
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self._monotonic = monotonic
        self._metadata: _Metadata | None = None
        self._keys = _KeySet()
        self._lock = asyncio.Lock()
        self.jwks_fetches = 0  # how often the keys were fetched (for metrics and tests)

    async def __aenter__(self) -> TokenVerifier:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def introspects(self) -> bool:
        return self._client is not None

    async def verify(self, token: str, scopes: Iterable[str] = ()) -> VerifiedToken:
        """The checked token, or :class:`InvalidToken` (refuse: 401, or 403 for a missing scope), or
        :class:`CannotVerify` (grantbot unreachable: 503)."""
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("not a well-formed JWT (header.payload.signature, base64url)") from None
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken(f"its typ is {header.get('typ')!r}, not 'at+jwt': it is not an access token "
                               "(RFC 9068 §4)")
        if header.get("alg") not in self.algorithms:
            raise InvalidToken(f"its algorithm {header.get('alg')!r} is not one of {', '.join(self.algorithms)}")
        metadata = await self._meta()
        key = await self._key(header.get("kid"))
        claims = self._decode(token, key, metadata.issuer)
        expires_at = self._check_times(claims)
        environment = claims.get("environment")
        if self.environment is not None and environment != self.environment:
            raise InvalidToken(f"it is for environment {environment!r}, not {self.environment!r}" if environment
                               else f"it carries no environment claim, so it cannot be taken for {self.environment!r}")
        granted = frozenset(str(claims.get("scope", "")).split())
        missing = [scope for scope in scopes if scope not in granted]
        if missing:
            raise InvalidToken(f"it does not grant scope {' '.join(missing)} (it grants: {' '.join(sorted(granted))})",
                               "insufficient_scope")
        if self._client is not None:
            await self._introspect(token, metadata)
        audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        return VerifiedToken(claims, str(claims["sub"]), granted, audience, environment, claims.get("grant_id"),
                             expires_at, self._client is not None)

    def _decode(self, token: str, key: jwt.PyJWK, issuer: str) -> dict:
        try:
            return jwt.decode(token, key, algorithms=[key.algorithm_name], audience=self.audience, issuer=issuer,
                              options={"require": list(REQUIRED_CLAIMS), "verify_exp": False, "verify_nbf": False,
                                       "verify_iat": False})
        except jwt.InvalidSignatureError:
            raise InvalidToken("its signature does not verify: it was altered, or not signed by grantbot") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"it is for another audience, not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"it was not issued by grantbot ({issuer!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"it lacks the {exc.claim} claim (RFC 9068 §2.2)") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"it is not a valid access token ({type(exc).__name__})") from None

    def _check_times(self, claims: dict) -> datetime:
        now = self._clock()
        try:
            exp, iat, nbf = float(claims["exp"]), float(claims["iat"]), float(claims.get("nbf", claims["iat"]))
        except (TypeError, ValueError):
            raise InvalidToken("its exp, iat and nbf claims must be numbers of seconds (RFC 7519 §2)") from None
        if exp <= now - self.leeway:
            raise InvalidToken(f"it expired {int(now - exp)} s ago")
        if nbf > now + self.leeway or iat > now + self.leeway:
            raise InvalidToken("it is not valid yet (nbf or iat is ahead of this clock)")
        return datetime.fromtimestamp(exp, UTC)

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _get_json(self, url: str, what: str) -> dict:
        http = await self._session()
        try:
            async with http.get(url, timeout=FETCH_TIMEOUT) as resp:
                if resp.status != 200:
                    raise CannotVerify(f"grantbot's {what} answered HTTP {resp.status}", resp.status)
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise CannotVerify(f"cannot fetch grantbot's {what} ({type(exc).__name__})") from None
        if not isinstance(document, dict):
            raise CannotVerify(f"grantbot's {what} is not a JSON object")
        return document

    async def _meta(self) -> _Metadata:
        """RFC 8414 metadata, fetched once (until it is fetched successfully)."""
        if self._metadata is None:
            document = await self._get_json(f"{self.grantbot_url}/.well-known/oauth-authorization-server", "metadata")
            if not isinstance(document.get("issuer"), str) or not isinstance(document.get("jwks_uri"), str):
                raise CannotVerify("grantbot's metadata names no issuer or jwks_uri")
            self._metadata = _Metadata(document["issuer"], document["jwks_uri"],
                                       document.get("introspection_endpoint"))
        return self._metadata

    async def _key(self, kid: object) -> jwt.PyJWK:
        if not isinstance(kid, str):
            raise InvalidToken("its header names no key (kid)")
        if self._needs_fetch(kid):
            async with self._lock:  # callers arriving meanwhile share this fetch
                if self._needs_fetch(kid):
                    await self._fetch_keys()
        keys = self._keys
        if kid not in keys.keys:
            if keys.loaded_at is None:
                raise CannotVerify("grantbot's signing keys could not be fetched")
            raise InvalidToken("it is signed with a key grantbot does not publish")
        return keys.keys[kid]

    def _needs_fetch(self, kid: str) -> bool:
        keys, now = self._keys, self._monotonic()
        if keys.fetched_at is not None and now - keys.fetched_at < self._min_refetch:
            return False  # asked moments ago, whatever came of it: not again yet
        return keys.loaded_at is None or now - keys.loaded_at > self._max_age or kid not in keys.keys

    async def _fetch_keys(self) -> None:
        """Fetch the JWKS; a failure keeps the last good keys (and raises only when there are none)."""
        keys = self._keys
        keys.fetched_at = self._monotonic()
        self.jwks_fetches += 1
        try:
            document = await self._get_json((await self._meta()).jwks_uri, "JWKS")
        except CannotVerify:
            if keys.loaded_at is None:
                raise
            return
        found = {}
        for jwk in document.get("keys") or []:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                try:
                    key = jwt.PyJWK.from_dict(jwk)
                except jwt.PyJWTError:
                    continue
                if key.algorithm_name in self.algorithms:  # one algorithm per key (RFC 8725 §3.1)
                    found[jwk["kid"]] = key
        keys.keys, keys.loaded_at = found, self._monotonic()

    async def _introspect(self, token: str, metadata: _Metadata) -> dict:
        """RFC 7662 §2: ``active`` must be true. Answers are cached for a short while by the token's hash."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            answer = await self._ask(token, metadata)
            self._cache[digest] = (now + self._cache_seconds, answer)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        if answer.get("active") is not True:
            raise InvalidToken("grantbot says it is not active: the grant was revoked or has ended (introspection)")
        return answer

    async def _ask(self, token: str, metadata: _Metadata) -> dict:
        if not metadata.introspection_endpoint:
            raise CannotVerify("grantbot's metadata names no introspection_endpoint")
        client_id, secret = self._client
        http = await self._session()
        try:
            async with http.post(metadata.introspection_endpoint, data={"token": token}, timeout=FETCH_TIMEOUT,
                                 headers={"Authorization": aiohttp.encode_basic_auth(client_id, secret)}) as resp:
                if resp.status == 401:
                    raise CannotVerify(f"grantbot refused this service's introspection credentials (client "
                                       f"{client_id!r}); check them against GRANTBOT_INTROSPECTION_CLIENTS", 401)
                if resp.status != 200:
                    raise CannotVerify(f"grantbot's introspection answered HTTP {resp.status}", resp.status)
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise CannotVerify(f"cannot reach grantbot's introspection ({type(exc).__name__})") from None
        return answer if isinstance(answer, dict) else {"active": False}
