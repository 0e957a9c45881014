"""JWT access tokens per RFC 9068: minting, verification of our own signature, and the JWKS document."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import jwt

from bot.domain.models import Grant
from bot.tokens.keys import SigningKey, VerificationKey

TOKEN_TYPE = "at+jwt"  # RFC 9068 §2.1
VERIFIED_TOKENS = 4096  # tokens whose verification is remembered (introspection sees the same ones again and again)


class AccessTokenIssuer:
    """Signs access tokens with the current ES256 key and checks them against it and the retired ones
    (implements the domain's ``TokenMinter`` port).

    Claims (RFC 9068 §2.2): ``iss``, ``sub`` and ``client_id`` (the caller's identity), ``aud``, ``scope``
    (space-separated), ``iat`` = ``nbf`` (the approval), ``exp``, ``jti``, plus ``grant_id`` and ``environment``
    (the request's: a resource server refuses another environment's tokens, DESIGN.md "Access tokens").
    """

    def __init__(self, key: SigningKey, issuer: str, previous: Sequence[VerificationKey] = ()) -> None:
        self.key = key
        self.issuer = issuer
        # The current key first; a retired key with the current key's kid (listed by mistake) is dropped.
        self._verifiers = {k.kid: k for k in reversed([key.public, *previous])}
        # An ES256 verification costs about as much as the rest of an introspection; its outcome depends only on
        # the token and the keys, which are fixed for this object's life.
        self._verified = lru_cache(maxsize=VERIFIED_TOKENS)(self._verify)

    def mint(self, grant: Grant) -> str:
        issued = int(grant.issued_at.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": grant.identity,
            "client_id": grant.identity,
            "aud": grant.audience,
            "scope": " ".join(grant.scopes),
            "iat": issued,
            "nbf": issued,
            "exp": issued + grant.ttl_seconds,
            "jti": grant.jti,
            "grant_id": grant.id,
            "environment": grant.environment,
        }
        return jwt.encode(
            claims, self.key.private_key, algorithm="ES256", headers={"typ": TOKEN_TYPE, "kid": self.key.kid}
        )

    def verify(self, token: str) -> dict[str, object] | None:
        """Claims when the token carries the signature of our current or a retired key (chosen by ``kid``), our
        ``typ`` and ``iss``; None otherwise.

        Expiry is left to the caller, which compares ``exp`` with its injected clock and the grant's state.
        Outcomes of the last ``VERIFIED_TOKENS`` tokens are remembered; each caller gets its own copy.
        """
        claims = self._verified(token)
        return dict(claims) if claims is not None else None

    def _verify(self, token: str) -> dict[str, object] | None:
        try:
            verifier = self._verifiers.get(jwt.get_unverified_header(token).get("kid"))
            if verifier is None:
                return None
            decoded = jwt.decode_complete(
                token,
                verifier.public_key,
                algorithms=["ES256"],
                issuer=self.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                         "require": ["jti", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        if decoded["header"].get("typ") != TOKEN_TYPE:
            return None
        return decoded["payload"]

    @staticmethod
    def token_hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (RFC 7517 §5) served at ``/.well-known/jwks.json``."""
        return {"keys": [self.key.public_jwk] + [k.public_jwk for kid, k in self._verifiers.items()
                                                 if kid != self.key.kid]}
