"""Rotating the signing key: the new key signs, the retired one stays in the JWKS and keeps its tokens verifiable
(PyJWT against the JWKS, introspection, RFC 7009 revocation) until it is dropped from the settings."""

from __future__ import annotations

import os
import uuid

import jwt
import pytest

from bot.app import create_app
from tests.conftest import make_settings

STAGING = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 600}


async def jwks(grantbot) -> jwt.PyJWKSet:
    async with grantbot.api.http.get(grantbot.base_url + "/.well-known/jwks.json") as resp:
        return jwt.PyJWKSet.from_dict(await resp.json())


async def token_from(grantbot) -> str:
    # A reason of its own: the fake clock stands still, and the same body signed twice would be a replay.
    status, created = await grantbot.api.request_access({**STAGING, "reason": uuid.uuid4().hex})
    assert status == 201, created
    return created["grant"]["access_token"]


def verify(token: str, keys: jwt.PyJWKSet) -> dict:
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keys[kid].key, algorithms=["ES256"], audience="https://api.acme.example",
                      issuer="https://grantbot.test")


async def test_a_retired_key_keeps_its_tokens_valid_until_it_is_dropped(start_grantbot, tmp_path):
    old_key, new_key = tmp_path / "signing-key.pem", tmp_path / "signing-key-2.pem"
    before = await start_grantbot()  # signs with old_key (created now)
    old_token = await token_from(before)
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    rotated = await start_grantbot(signing_key_file=new_key, previous_signing_key_files=str(old_key))
    keys = await jwks(rotated)
    assert [k.key_id for k in keys.keys][1:] == [old_kid]  # the current key first, then the retired one
    new_token = await token_from(rotated)
    assert jwt.get_unverified_header(new_token)["kid"] == keys.keys[0].key_id != old_kid
    assert verify(old_token, keys)["scope"] == verify(new_token, keys)["scope"] == "db:read"
    assert (await rotated.api.introspect(old_token))[1]["active"] is True
    assert (await rotated.api.introspect(new_token))[1]["active"] is True

    retired = await start_grantbot(signing_key_file=new_key)  # the old key's tokens have all expired, say
    assert [k.key_id for k in (await jwks(retired)).keys] == [keys.keys[0].key_id]
    assert await retired.api.introspect(old_token) == (200, {"active": False})
    assert (await retired.api.introspect(new_token))[1]["active"] is True


async def test_a_retired_key_may_be_given_as_its_public_half(start_grantbot, tmp_path):
    from cryptography.hazmat.primitives import serialization

    before = await start_grantbot()
    old_token = await token_from(before)
    private = serialization.load_pem_private_key((tmp_path / "signing-key.pem").read_bytes(), password=None)
    public = tmp_path / "retired.pub.pem"
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    rotated = await start_grantbot(signing_key_file=tmp_path / "signing-key-2.pem",
                                   previous_signing_key_files=f" {public} ,")
    assert (await rotated.api.introspect(old_token))[1]["active"] is True


@pytest.mark.parametrize("content,words", [
    (None, "cannot read the previous signing key"),
    (b"not a key", "not a PEM private or public key"),
])
async def test_a_bad_previous_key_stops_start_up_with_its_path(database_url, tmp_path, content, words):
    bad = tmp_path / "old.pem"
    if content is not None:
        bad.write_bytes(content)
    settings = make_settings(database_url, tmp_path, previous_signing_key_files=str(bad))
    with pytest.raises(ValueError, match=words) as refused:
        create_app(settings, migrate=True)
    assert str(bad) in str(refused.value)


def _start_with_a_new_key(path: str, barrier, results) -> None:
    from bot.tokens.keys import load_or_create_signing_key

    barrier.wait()
    try:
        results.put(load_or_create_signing_key(path).kid)
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"failed: {exc}")


@pytest.mark.slow
def test_replicas_starting_together_on_a_missing_key_all_sign_with_the_one_key_written(tmp_path):
    """Several processes find the key file missing at once: exactly one key is created and every one of them
    loads it whole (none reads a file still being written)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    processes = 4
    for trial in range(100):
        (tmp_path / f"trial-{trial}").mkdir()  # the folder must exist: grantbot makes the key, not its folder
        path = str(tmp_path / f"trial-{trial}" / "signing-key.pem")
        barrier, results = context.Barrier(processes), context.Queue()
        started = [context.Process(target=_start_with_a_new_key, args=(path, barrier, results))
                   for _ in range(processes)]
        for process in started:
            process.start()
        kids = [results.get(timeout=30) for _ in started]
        for process in started:
            process.join(30)
        assert len(set(kids)) == 1 and not kids[0].startswith("failed"), kids
        assert not [name for name in os.listdir(os.path.dirname(path)) if name != "signing-key.pem"]
