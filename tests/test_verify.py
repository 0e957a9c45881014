"""Checking grantbot's tokens as a resource server does: ``grantbot verify`` and the Python helper
(bot/client/verifier.py) with its aiohttp and ASGI middlewares, against a real ``grantbot serve`` (and, for tokens
grantbot would never sign, a small authorization server of the test's own serving RFC 8414 metadata and a JWKS)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from bot.client.middleware import TOKEN, GrantbotAsgiMiddleware, aiohttp_middleware
from bot.client.verifier import InvalidToken, TokenVerifier
from tests.client_support import HttpRelay, client_env, run_grantbot, start_serve, stop_serve
from tests.oidc_issuer import public_jwk
from tests.support import Api, advance_clock_offset
from tests.ports import spare_port

AUDIENCE = "https://api.acme.example"
STAGING = ("request", "--environment", "staging", "--scope", "db:read", "--output", "json")


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests are of the resource server's side, which speaks only HTTP (JWKS, introspection).
    What grantbot stores behind it is tested on both databases by the server's own tests."""
    return f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}"


@pytest.fixture
async def serve(tmp_path, database_url, sandbox):
    proc = await start_serve(tmp_path, database_url, sandbox)
    yield proc
    await stop_serve(proc)


@pytest.fixture
async def api(serve):
    async with aiohttp.ClientSession() as http:
        yield Api(http, serve.base_url, serve.now)


async def staging_grant(serve, tmp_path, ttl: int = 600) -> dict:
    ran = await run_grantbot(*STAGING, "--ttl", str(ttl), env=client_env(serve.base_url), cwd=tmp_path)
    assert ran.code == 0, ran.err
    return ran.json()["grant"]


def tampered(token: str, **claims) -> str:
    """The token with claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_grantbot_verify_valid_wrong_audience_tampered_and_revoked_with_introspect(serve, tmp_path):
    env = client_env(serve.base_url, identity=None)
    token = (await staging_grant(serve, tmp_path))["access_token"]

    valid = await run_grantbot("verify", token, "--audience", AUDIENCE, "--scope", "db:read", env=env, cwd=tmp_path)
    assert valid.code == 0, valid.err
    assert valid.json()["sub"] == "deploy-bot" and "valid (signature, typ, iss, aud, exp, scopes)" in valid.err
    from_stdin = await run_grantbot("verify", "-", "--audience", AUDIENCE, env=env, cwd=tmp_path, stdin=token + "\n")
    assert from_stdin.code == 0, from_stdin.err

    other_audience = await run_grantbot("verify", token, "--audience", "https://billing.acme.example", env=env,
                                        cwd=tmp_path)
    assert other_audience.code == 1 and "it is for another audience, not 'https://billing.acme.example'" in \
        other_audience.err
    forged = await run_grantbot("verify", tampered(token, scope="db:read db:admin"), "--audience", AUDIENCE,
                                env=env, cwd=tmp_path)
    assert forged.code == 1 and "its signature does not verify" in forged.err
    no_scope = await run_grantbot("verify", token, "--audience", AUDIENCE, "--scope", "db:write", env=env, cwd=tmp_path)
    assert no_scope.code == 1 and "it does not grant scope db:write" in no_scope.err
    for ran in (valid, other_audience, forged, no_scope):
        assert token not in ran.err

    # Revoked: the token still passes the local checks (nothing in it changed) until exp; introspection knows.
    released = await run_grantbot("release", jwt.decode(token, options={"verify_signature": False})["grant_id"],
                                  env=client_env(serve.base_url), cwd=tmp_path)
    assert released.code == 0, released.err
    locally = await run_grantbot("verify", token, "--audience", AUDIENCE, env=env, cwd=tmp_path)
    assert locally.code == 0
    introspected = await run_grantbot("verify", token, "--audience", AUDIENCE, "--introspect", cwd=tmp_path,
                                      env={**env, "GRANTBOT_INTROSPECTION_CLIENT": "rs:rs-secret"})
    assert introspected.code == 1 and "grantbot says it is not active" in introspected.err

    no_client = await run_grantbot("verify", token, "--audience", AUDIENCE, "--introspect", env=env, cwd=tmp_path)
    assert no_client.code == 2 and "GRANTBOT_INTROSPECTION_CLIENT=id:secret" in no_client.err
    wrong_client = await run_grantbot("verify", token, "--audience", AUDIENCE, "--introspect", cwd=tmp_path,
                                      env={**env, "GRANTBOT_INTROSPECTION_CLIENT": "rs:wrong"})
    assert wrong_client.code == 2 and "refused this service's introspection credentials" in wrong_client.err
    unreachable = await run_grantbot("verify", token, "--audience", AUDIENCE, "--url",
                                     f"http://127.0.0.1:{spare_port()}", env=env, cwd=tmp_path)
    assert unreachable.code == 4 and "cannot fetch grantbot's metadata" in unreachable.err


async def test_grantbot_verify_checks_the_environment_claim(serve, tmp_path):
    """Needs tokens with an environment claim (DESIGN.md "Access tokens")."""
    env = client_env(serve.base_url, identity=None)
    token = (await staging_grant(serve, tmp_path))["access_token"]
    staging = await run_grantbot("verify", token, "--audience", AUDIENCE, "--environment", "staging", env=env,
                                 cwd=tmp_path)
    assert staging.code == 0, staging.err
    production = await run_grantbot("verify", token, "--audience", AUDIENCE, "--environment", "production", env=env,
                                    cwd=tmp_path)
    assert production.code == 1 and "it is for environment 'staging', not 'production'" in production.err


async def test_an_expired_token_is_refused(serve, tmp_path):
    advance_clock_offset(serve.offset_file, -250)  # grantbot approves "250 s ago" (within HMAC's 300 s window)
    token = (await staging_grant(serve, tmp_path, ttl=30))["access_token"]
    ran = await run_grantbot("verify", token, "--audience", AUDIENCE, env=client_env(serve.base_url, identity=None),
                             cwd=tmp_path)
    assert ran.code == 1 and "not valid: it expired 2" in ran.err, ran.err  # about 220 s ago


class Seconds:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_helper_caches_keys_follows_a_rotation_and_is_not_made_to_refetch_by_made_up_kids(
        serve, tmp_path):
    relay = HttpRelay(serve.base_url)
    await relay.start()
    monotonic = Seconds()
    try:
        async with TokenVerifier(serve.base_url, AUDIENCE, monotonic=monotonic) as verifier:
            first = (await staging_grant(serve, tmp_path))["access_token"]
            second = (await staging_grant(serve, tmp_path))["access_token"]
            assert (await verifier.verify(first)).subject == (await verifier.verify(second)).subject == "deploy-bot"
            assert verifier.jwks_fetches == 1  # cached

            header, payload, signature = first.split(".")
            monotonic.now += 5  # the keys were fetched 5 s ago
            for _ in range(20):
                unknown = base64.urlsafe_b64encode(json.dumps(
                    {"alg": "ES256", "typ": "at+jwt", "kid": uuid.uuid4().hex}).encode()).rstrip(b"=").decode()
                with pytest.raises(InvalidToken, match="signed with a key grantbot does not publish"):
                    await verifier.verify(f"{unknown}.{payload}.{signature}")
            assert verifier.jwks_fetches == 2  # one refetch for twenty unknown kids within 5 s

            # grantbot rotates: a new signing key, the old one retired (still published).
            await serve.kill()
            old_key = serve.env["GRANTBOT_SIGNING_KEY_FILE"]
            serve.env.update(GRANTBOT_SIGNING_KEY_FILE=str(tmp_path / "signing-key-2.pem"),
                             GRANTBOT_PREVIOUS_SIGNING_KEY_FILES=old_key)
            await serve.start()
            rotated = (await staging_grant(serve, tmp_path))["access_token"]
            assert jwt.get_unverified_header(rotated)["kid"] != jwt.get_unverified_header(first)["kid"]
            monotonic.now += 5  # the last refetch is 5 s old
            assert (await verifier.verify(rotated)).subject == "deploy-bot"
            assert (await verifier.verify(first)).subject == "deploy-bot"  # the retired key still verifies
            assert verifier.jwks_fetches == 3
    finally:
        await relay.stop()


async def test_the_helper_introspects_with_a_short_cache(serve, api, tmp_path):
    monotonic = Seconds()
    grant = await staging_grant(serve, tmp_path)
    async with TokenVerifier(serve.base_url, AUDIENCE, introspection_client=("rs", "rs-secret"),
                             introspection_cache_seconds=5, monotonic=monotonic) as verifier:
        assert (await verifier.verify(grant["access_token"])).introspected is True
        assert (await api.call("POST", f"/v1/grants/{grant['id']}/revoke"))[0] == 200
        await verifier.verify(grant["access_token"])  # the answer of a moment ago still stands
        monotonic.now += 5.1
        with pytest.raises(InvalidToken, match="not active"):
            await verifier.verify(grant["access_token"])


async def test_the_aiohttp_and_asgi_middlewares_let_through_only_valid_tokens(serve, tmp_path):
    token = (await staging_grant(serve, tmp_path))["access_token"]
    async with TokenVerifier(serve.base_url, AUDIENCE) as verifier:
        async def orders(request: web.Request) -> web.Response:
            return web.json_response({"for": request[TOKEN].subject})

        app = web.Application(middlewares=[aiohttp_middleware(verifier, scopes=["db:read"])])
        app.router.add_get("/orders", orders)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = "http://127.0.0.1:%d/orders" % runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:
                async def get(authorization: str | None) -> tuple[int, str, dict]:
                    headers = {"Authorization": authorization} if authorization else {}
                    async with http.get(url, headers=headers) as resp:
                        return resp.status, resp.headers.get("WWW-Authenticate", ""), await resp.json()

                assert await get(f"Bearer {token}") == (200, "", {"for": "deploy-bot"})
                status, challenge, body = await get(None)
                assert status == 401 and challenge == 'Bearer realm="grantbot"' and body["error"] == "missing_token"
                status, challenge, body = await get(f"Bearer {tampered(token, sub='admin')}")
                assert status == 401 and 'error="invalid_token"' in challenge
                assert "signature does not verify" in body["detail"] and token not in json.dumps(body)
        finally:
            await runner.cleanup()

        # ASGI, called as a server calls it.
        seen = {}

        async def asgi_app(scope, receive, send):
            seen["token"] = scope["state"]["grantbot_token"]
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def call(middleware, authorization: str) -> list[dict]:
            sent = []

            async def receive():
                return {"type": "http.request", "body": b""}

            async def send(message):
                sent.append(message)

            await middleware({"type": "http", "method": "GET", "path": "/orders", "headers": [
                (b"authorization", authorization.encode())]}, receive, send)
            return sent

        assert (await call(GrantbotAsgiMiddleware(asgi_app, verifier), f"Bearer {token}"))[0]["status"] == 204
        assert seen["token"].scopes == {"db:read"}
        start, body = await call(GrantbotAsgiMiddleware(asgi_app, verifier, scopes=["logs:read"]), f"Bearer {token}")
        assert start["status"] == 403 and json.loads(body["body"])["error"] == "insufficient_scope"
        assert (b"www-authenticate", b'Bearer realm="grantbot", error="insufficient_scope", error_description="it '
                b'does not grant scope logs:read (it grants: db:read)"') in start["headers"]


class TinyAuthorizationServer:
    """RFC 8414 metadata and a JWKS for an ES256 key the test signs with: tokens grantbot would never issue."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    async def start(self) -> None:
        app = web.Application()
        async def metadata(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks"})

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response({"keys": [public_jwk(self.key, "k1", "ES256")]})

        app.router.add_get("/.well-known/oauth-authorization-server", metadata)
        app.router.add_get("/jwks", jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d" % self._runner.addresses[0][1]

    def sign(self, header: dict | None = None, **claims) -> str:
        now = int(time.time())
        base = {"iss": self.url, "sub": "deploy-bot", "client_id": "deploy-bot", "aud": AUDIENCE, "scope": "db:read",
                "iat": now, "nbf": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        base.update(claims)
        return jwt.encode({k: v for k, v in base.items() if v is not None}, self.key, algorithm="ES256",
                          headers={"typ": "at+jwt", "kid": "k1", **(header or {})})


async def test_the_helper_applies_rfc_9068s_checks():
    server = TinyAuthorizationServer()
    await server.start()
    try:
        async with TokenVerifier(server.url, AUDIENCE, environment="production") as verifier:
            assert (await verifier.verify(server.sign(environment="production"))).environment == "production"
            refused = {
                "its typ is 'JWT', not 'at+jwt'": server.sign({"typ": "JWT"}, environment="production"),
                "it carries no environment claim, so it cannot be taken for 'production'": server.sign(),
                "it is for environment 'staging', not 'production'": server.sign(environment="staging"),
                "it lacks the client_id claim": server.sign(client_id=None, environment="production"),
                "it lacks the jti claim": server.sign(jti=None, environment="production"),
                "it was not issued by grantbot": server.sign(iss="https://evil.example", environment="production"),
                "it is not valid yet": server.sign(nbf=int(time.time()) + 600, environment="production"),
                "its algorithm 'none' is not one of ES256": ".".join([
                    base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt","kid":"k1"}').rstrip(b"=").decode(),
                    server.sign(environment="production").split(".")[1], ""]),
            }
            for reason, token in refused.items():
                with pytest.raises(InvalidToken) as refusal:
                    await verifier.verify(token)
                assert reason in refusal.value.reason, (reason, refusal.value.reason)
    finally:
        await server._runner.cleanup()
