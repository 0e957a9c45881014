"""CI OIDC caller authentication: ``Authorization: Bearer <CI identity token>`` (DESIGN.md "Caller authentication").

A pipeline (GitHub Actions, GitLab CI, any OIDC issuer listed under ``issuers:`` in the policy file) sends the
identity token its CI platform gave it. The token is verified as RFC 8725 (JWT Best Current Practices) asks:

- §3.1 an explicit allow-list of asymmetric algorithms (:data:`ALLOWED_ALGORITHMS`); ``none`` and every ``HS*``
  are refused before any key is looked at, so the issuer's public key can never be used as an HMAC secret
  (the key-confusion attack); each key verifies with exactly one algorithm (PyJWT's ``PyJWK`` binding);
- §3.8 the issuer is picked by the token's unverified ``iss``, which must equal a configured ``issuer`` exactly;
  only that issuer's keys are tried, chosen by the header's ``kid`` (``jku``/``x5u`` headers are ignored, §3.10);
- §3.9 ``aud`` is required and must be exactly the issuer's configured ``audience`` (a single string: a token
  minted for several audiences is refused, since each of them could replay it);
- §3.11 a token typed as an access token (``typ: at+jwt``, RFC 9068), such as grantbot's own, is refused;
- ``iss``, ``sub``, ``aud``, ``exp`` and ``iat`` are required (RFC 7519 §4.1); ``exp``, ``nbf`` and ``iat`` are
  checked against the injected clock with :data:`LEEWAY_SECONDS` of tolerance for clock skew.

Replay. A CI token creates one access request only: its ``jti`` (or, without one, a SHA-256 of the whole token)
is remembered in the ``used_signatures`` table as ``sha256("oidc:" + issuer name + ":" + jti)`` until the
token's ``exp`` plus the leeway, after which the token is refused anyway. A used token sent to create a request
again raises :class:`~bot.domain.errors.CiTokenAlreadyUsed`, which names the caller: the route still answers a
retry of the request that token created (the same ``Idempotency-Key``), which creates nothing, so a job with one
token for its whole run (GitLab's ``id_tokens:``) can retry a ``POST`` whose answer it lost. Reading one's requests (the long poll
``GET /v1/access-requests/{id}?wait=N``) and revoking one's own grant accept any still-valid token of the same
identity without using it up: a pipeline polls with the token it created the request with, and those routes
can only show or end what that identity already has.

Identity. The caller is ``<issuer name>:<sub>`` (e.g. ``github:repo:acme/api:ref:refs/heads/main``) and every
claim of the token is visible to the policy's ``match.claims``.

Every refusal raises :class:`bot.domain.errors.Unauthenticated` (401) with a sentence saying what to fix, naming
no key; an issuer whose keys could never be fetched raises :class:`bot.domain.errors.Unavailable` (503): the
token may be fine, the pipeline should retry.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import jwt

from bot.domain.errors import CiTokenAlreadyUsed, Unauthenticated, Unavailable
from bot.domain.models import MAX_IDENTITY, Caller
from bot.domain.policy import Policy
from bot.domain.ports import Clock
from bot.identity.hmac_auth import RememberSignature
from bot.identity.jwks_cache import JwksCache, KeysUnavailable, UnknownKey

# RFC 8725 §3.1: asymmetric algorithms only; never "none", never HS* (shared secrets).
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LEEWAY_SECONDS = 30  # tolerated clock skew between the CI platform and grantbot, for exp, nbf and iat
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
MAX_TOKEN_BYTES = 16 * 1024
# Header typ values of access tokens (RFC 9068 §2.1), grantbot's own included: never accepted as caller identity.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # CI identity tokens are 1-2 KiB; anything far larger is not one


def _quote(value: object, limit: int = 100) -> str:
    """A value from the token, shortened and quoted for an error sentence."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _unstorable(value: object) -> bool:
    """True when a claim's value (nested lists and objects included) holds a character no database text column
    takes: NUL (PostgreSQL's text) or an unpaired UTF-16 surrogate, which JSON's ``\\ud800`` escapes can carry
    but UTF-8 cannot encode."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return "\x00" in value
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def _number(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"The token's {name} claim must be a number of seconds since 1970 (RFC 7519 §2).")
    return float(value)


class OidcAuthenticator:
    """Verifies CI identity tokens against the policy's ``issuers``; ``remember`` is the store's replay record."""

    def __init__(self, policy: Policy, keys: JwksCache, clock: Clock, remember: RememberSignature) -> None:
        self._policy = policy
        self._keys = keys
        self._clock = clock
        self._remember = remember

    def replace_policy(self, policy: Policy) -> None:
        """Trust a reloaded policy's issuers (one assignment: a request sees the old or the new list)."""
        self._policy = policy

    async def authenticate(self, token: str, *, single_use: bool) -> Caller:
        """The caller ``<issuer name>:<sub>`` with the token's claims.

        ``single_use``: the token is used up by this request (creating an access request); a second use is
        refused. Raises :class:`Unauthenticated` (401; its ``who`` is the identity the token claims, when its
        issuer is trusted) or :class:`Unavailable` (503, issuer keys unreachable).
        """
        try:
            return await self._authenticate(token, single_use)
        except Unauthenticated as exc:
            exc.who = exc.who or self._claimed_identity(token)
            raise

    def _claimed_identity(self, token: str) -> str | None:
        """``<issuer name>:<sub>`` as the (unverified) token claims it, for the audit trail; None when it names no
        trusted issuer or no sub."""
        if len(token) > MAX_TOKEN_BYTES:
            return None
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        iss, sub = unverified.get("iss"), unverified.get("sub")
        issuer = self._policy.issuer_named_by(iss) if isinstance(iss, str) else None
        return f"{issuer.name}:{sub}" if issuer is not None and isinstance(sub, str) and sub else None

    async def _authenticate(self, token: str, single_use: bool) -> Caller:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"The bearer token is larger than {MAX_TOKEN_BYTES // 1024} KiB; send the CI "
                                  "platform's OIDC identity token itself.")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated(
                "The bearer token is not a well-formed JWT (header.payload.signature, base64url); send the CI "
                "platform's OIDC identity token as it was issued."
            ) from None

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            kind = "unsigned" if str(alg).lower() == "none" else (
                "signed with a shared-secret algorithm" if str(alg).upper().startswith("HS") else "signed with an "
                "algorithm grantbot does not accept")
            raise Unauthenticated(
                f"The token is {kind} (alg {_quote(alg, 20)}); grantbot accepts only tokens signed with the "
                "issuer's private key (RS256, ES256, PS256, EdDSA and their larger sizes)."
            )

        if str(header.get("typ", "")).lower() in ACCESS_TOKEN_TYPES:
            # RFC 8725 §3.11: a token typed for another use is not an identity token, whoever signed it.
            raise Unauthenticated(
                "This is an access token, not a CI identity token; authenticate with the identity token your CI "
                "platform issues to the job."
            )

        iss = unverified.get("iss")
        issuer = self._policy.issuer_named_by(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated(
                f"The token's issuer {_quote(iss)} is not trusted by this grantbot; use a token from an issuer "
                "listed under issuers: in the policy file, or ask its owners to add yours.",
                reason="untrusted_issuer",
            )

        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("The token's kid header must be a string naming one of the issuer's keys.")
        try:
            key = await self._keys.key(issuer, kid)
        except KeysUnavailable:
            raise Unavailable(
                f"The signing keys of issuer {issuer.name!r} cannot be fetched right now, so the token cannot be "
                "checked; retry shortly."
            ) from None
        except UnknownKey as exc:
            named = f"kid {_quote(kid, 64)}" if kid is not None else "no kid"
            hint = "" if exc.refreshed else " (they could not be refreshed just now; retry in a few seconds if the issuer rotated its keys)"
            raise Unauthenticated(
                f"The token's signing key ({named}) is not among the keys issuer {issuer.name!r} publishes{hint}; "
                "use a token freshly issued by that issuer.", reason="unknown_key"
            ) from None

        claims = self._verify(token, key, issuer.issuer, issuer.audience, issuer.name)
        # Claims reach the database (the identity, the actor, the policy's reasons): refuse what it cannot hold.
        if bad := next((name for name, value in claims.items() if _unstorable(name) or _unstorable(value)), None):
            raise Unauthenticated(
                f"The token's {_quote(bad, 40)[1:-1]} claim holds a character no CI platform puts in an identity "
                "token (NUL or an unpaired UTF-16 surrogate); send the token as the CI platform issued it."
            )
        now = self._clock.now()
        expires = self._check_times(claims, now.timestamp())
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("The token's sub claim must be a non-empty string naming the pipeline.")

        identity = f"{issuer.name}:{sub}"
        if len(identity) > MAX_IDENTITY:
            # A sub naming a very long environment or branch (both may have 255 characters on GitHub and GitLab).
            raise Unauthenticated(
                f"The identity this token names ({issuer.name!r}, a colon and its sub claim) is {len(identity)} "
                f"characters long; grantbot keeps identities of at most {MAX_IDENTITY}. Use a shorter environment "
                "or branch name for this pipeline.", reason="identity_too_long")
        caller = Caller(identity=identity, claims=dict(claims))
        if single_use:
            jti = claims.get("jti")
            # Without a jti, what the issuer signed (header and claims) must not come twice. Not the token's text:
            # its signature part can be written several ways that verify alike (base64url padding, ECDSA's s and
            # n - s), each of which would pass for a new token.
            signed = token.rpartition(".")[0]
            ident = jti if isinstance(jti, str) and jti else hashlib.sha256(signed.encode()).hexdigest()
            digest = hashlib.sha256(f"oidc:{issuer.name}:{ident}".encode()).hexdigest()
            until = expires + timedelta(seconds=LEEWAY_SECONDS)
            if not await self._remember(digest, until, now):
                raise CiTokenAlreadyUsed(
                    "This CI token was already used to create an access request; fetch a fresh identity token "
                    "from the CI platform for each request (polling with the same token is fine, and so is "
                    "retrying the same request with its Idempotency-Key).",
                    caller,
                )
        return caller

    @staticmethod
    def _verify(token: str, key: jwt.PyJWK, iss: str, audience: str, name: str) -> dict:
        """Signature, ``iss``, ``aud`` and required claims by PyJWT; times are checked on our clock instead."""
        try:
            return jwt.decode(
                token,
                key,
                algorithms=sorted(ALLOWED_ALGORITHMS),
                audience=audience,
                issuer=iss,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "strict_aud": True,
                    # PyJWT reads the wall clock; these are checked against the injected clock in _check_times.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"The token lacks the {exc.claim} claim; a CI identity token must carry "
                f"{', '.join(REQUIRED_CLAIMS)}."
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"The token is meant for another audience; request the CI identity token with audience "
                f"{audience!r} for issuer {name!r}.", reason="wrong_audience"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(
                f"The token's algorithm is not the one its key is published for by issuer {name!r}; use a token "
                "as the issuer signed it."
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                f"The token's signature does not verify with issuer {name!r}'s published keys; it was altered or "
                "not signed by that issuer.", reason="bad_signature"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated(
                f"The token is not a valid identity token of issuer {name!r}; send the token as the CI platform "
                "issued it."
            ) from None

    @staticmethod
    def _check_times(claims: dict, now: float) -> datetime:
        """``exp``, ``nbf`` and ``iat`` against ``now`` (unix seconds) with the leeway; returns ``exp`` (aware UTC)."""
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        if exp <= now - LEEWAY_SECONDS:
            raise Unauthenticated(
                f"The token expired {int(now - exp)} s ago; fetch a fresh identity token from the CI platform "
                "just before calling grantbot.", reason="expired"
            )
        if nbf is not None and nbf > now + LEEWAY_SECONDS:
            raise Unauthenticated(
                f"The token is not valid yet (nbf is {int(nbf - now)} s ahead of grantbot's clock); check the "
                "clocks, or wait."
            )
        if iat > now + LEEWAY_SECONDS:
            raise Unauthenticated(
                f"The token claims to be issued {int(iat - now)} s in the future; check the issuer's and "
                "grantbot's clocks."
            )
        try:
            return datetime.fromtimestamp(exp, UTC)
        except (OverflowError, OSError, ValueError):
            raise Unauthenticated("The token's exp claim is out of range; send a token that expires within hours.") from None
