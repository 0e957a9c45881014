"""A local OIDC issuer for tests, like a CI platform's: a real aiohttp server that serves
``/.well-known/openid-configuration`` and a JWKS, and mints identity tokens with ``jwt.encode``.

It can rotate its keys (``rotate()``), start failing after the first JWKS fetch (``jwks_answers = 1``) and counts
the fetches (``jwks_fetches``). Claims start from the captured shapes in tests/fixtures/ci/.
"""

from __future__ import annotations

import asyncio

import base64
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FIXTURES = Path(__file__).parent / "fixtures" / "ci"


def new_key(kind: str = "RSA"):
    return rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RSA" else \
        ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key, kid: str, alg: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, claims: dict, secret: bytes | None) -> str:
    """A JWS built by hand: for ``alg: none`` (no signature) and HS256 with an arbitrary secret, which PyJWT's
    ``encode`` refuses to produce with a PEM public key (the attack it guards against on its side too)."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


class LocalIssuer:
    """``LocalIssuer(path_prefix)``; ``await start()``; ``url`` is its ``iss``; ``jwks_url`` its keys."""

    def __init__(self, kind: str = "RSA", jwks_path: str = "/.well-known/jwks", shape: str = "github_actions",
                 audience: str = "grantbot") -> None:
        self.shape = shape
        self.audience = audience
        self.jwks_path = jwks_path
        self.keys: dict[str, tuple[Any, str]] = {}  # kid -> (private key, alg), published
        self.current_kid = ""
        self.jwks_answers: int | None = None  # after this many JWKS answers, fail every fetch with 503
        self.jwks_fetches = 0
        self.jwks_hold: asyncio.Event | None = None  # while set to an unset event, JWKS answers wait for it
        self.discovery_issuer: str | None = None  # set to make the discovery document name another issuer
        self.discovery_fetches = 0
        self.rotate(kind)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def rotate(self, kind: str = "RSA", keep_old: bool = False) -> str:
        """Publish a new key and sign with it from now on; the old key is withdrawn unless ``keep_old``."""
        kid = f"key-{uuid.uuid4().hex[:8]}"
        alg = "RS256" if kind == "RSA" else "ES256"
        if not keep_old:
            self.keys.clear()
        self.keys[kid] = (new_key(kind), alg)
        self.current_kid = kid
        return kid

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get(self.jwks_path, self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = "http://127.0.0.1:%d" % self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def jwks_url(self) -> str:
        return self.url + self.jwks_path

    async def _discovery(self, _: web.Request) -> web.Response:
        self.discovery_fetches += 1
        return web.json_response({"issuer": self.discovery_issuer or self.url, "jwks_uri": self.jwks_url,
                                  "id_token_signing_alg_values_supported": ["RS256", "ES256"]})

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.jwks_hold is not None:
            await self.jwks_hold.wait()
        if self.jwks_answers is not None and self.jwks_fetches > self.jwks_answers:
            return web.json_response({"message": "unavailable"}, status=503)
        return web.json_response({"keys": [public_jwk(key, kid, alg) for kid, (key, alg) in self.keys.items()]})

    def claims(self, now: float, **overrides) -> dict:
        """Claims in the shape of ``self.shape`` (tests/fixtures/ci/), issued by this server at ``now`` (unix
        seconds) for 5 minutes with a fresh ``jti``; ``overrides`` replace claims, None drops one."""
        claims = json.loads((FIXTURES / f"{self.shape}_claims.json").read_text())
        claims.update(iss=self.url, aud=self.audience, jti=str(uuid.uuid4()), iat=int(now), nbf=int(now) - 5,
                      exp=int(now) + 300)
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, now: float, *, kid: str | None = None, alg: str | None = None, key=None,
             headers: dict | None = None, **overrides) -> str:
        """A signed identity token; ``kid``/``alg``/``key`` override the current key, ``overrides`` the claims."""
        kid = kid or self.current_kid
        stored_key, stored_alg = self.keys.get(kid, (None, "RS256"))
        return jwt.encode(self.claims(now, **overrides), key or stored_key, algorithm=alg or stored_alg,
                          headers={"kid": kid, "typ": "JWT", **(headers or {})})
