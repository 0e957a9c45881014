"""CI pipelines authenticate with their OIDC identity token (``Authorization: Bearer``), against local issuers.

Two real issuers run on this machine (tests/oidc_issuer.py): "github" (RSA keys found through discovery) and
"gitlab" (EC keys at a configured ``jwks_uri``). grantbot runs with tests/policies/oidc.yaml pointing at them and
the injected FakeClock; every call goes through its HTTP API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from string import Template
from types import SimpleNamespace

import jwt
import pytest

from bot.domain.errors import PolicyError
from bot.policy_file import parse_policy
from tests.oidc_issuer import LocalIssuer, hand_signed, new_key, public_pem
from tests.support import eventually
from tests.test_auto_approve_and_deny import jwks_key

POLICIES = Path(__file__).parent / "policies"
DEPLOY = {"environment": "production", "scopes": ["deploy:api"], "ttl_seconds": 300}
READ = {"environment": "production", "scopes": ["db:read"], "ttl_seconds": 300}


@pytest.fixture
async def issuers():
    github = LocalIssuer("RSA")
    gitlab = LocalIssuer("EC", jwks_path="/oauth/discovery/keys", shape="gitlab_ci", audience="grantbot-gitlab")
    await github.start()
    await gitlab.start()
    yield SimpleNamespace(github=github, gitlab=gitlab)
    await github.stop()
    await gitlab.stop()


def write_policy(tmp_path: Path, github_url: str, gitlab_url: str) -> Path:
    text = Template((POLICIES / "oidc.yaml").read_text()).substitute(
        GITHUB_ISSUER=github_url, GITLAB_ISSUER=gitlab_url, GITLAB_JWKS=gitlab_url + "/oauth/discovery/keys"
    )
    path = tmp_path / "oidc.yaml"
    path.write_text(text)
    return path


@pytest.fixture
async def bot(start_grantbot, issuers, tmp_path):
    return await start_grantbot(policy_file=write_policy(tmp_path, issuers.github.url, issuers.gitlab.url))


async def call(bot, method: str, path: str, token: str, body=None, scheme: str = "Bearer"):
    return await bot.api.call(method, path, body, sign=False, headers={"Authorization": f"{scheme} {token}"})


def now(clock) -> float:
    return clock.now().timestamp()


# -- a valid token ------------------------------------------------------------------------------------------------


async def test_a_ci_token_gets_a_grant_for_the_identity_issuer_name_and_sub(bot, issuers, clock):
    token = issuers.github.mint(now(clock))
    status, body = await call(bot, "POST", "/v1/access-requests", token, DEPLOY)
    assert status == 201, body
    identity = "github:repo:acme/api:environment:production"  # the fixture's sub
    assert body["identity"] == identity and body["rule"] == "github-main-deploys"
    access_token = body["grant"]["access_token"]
    claims = jwt.decode(access_token, await jwks_key(bot.base_url, jwt.get_unverified_header(access_token)["kid"]),
                        algorithms=["ES256"], audience="https://api.acme.example",
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims["sub"] == claims["client_id"] == identity
    assert issuers.github.discovery_fetches == 1 and issuers.github.jwks_fetches == 1

    # The long poll and the revocation that follow accept the same token: only creating a request uses it up.
    status, polled = await call(bot, "GET", f"/v1/access-requests/{body['id']}?wait=1", token)
    assert status == 200 and polled["status"] == "approved" and "access_token" not in polled["grant"]
    other = issuers.github.mint(now(clock), sub="repo:acme/web:ref:refs/heads/main")
    status, _ = await call(bot, "GET", f"/v1/access-requests/{body['id']}", other)
    assert status == 404  # another identity's request
    status, revoked = await call(bot, "POST", f"/v1/grants/{body['grant']['id']}/revoke", token)
    assert status == 200 and revoked["status"] == "revoked"
    # Keys are cached: three more verifications, no more fetches.
    assert issuers.github.jwks_fetches == 1


async def test_hmac_callers_still_work_next_to_oidc_ones(bot):
    status, body = await bot.api.request_access({"environment": "production", "scopes": ["deploy:api"]})
    assert status == 403 and body["identity"] == "deploy-bot"  # no rule for it, but it is authenticated


CLAIM_CASES = [
    # (issuer, claim overrides, request body, status, rule)
    ("github", {}, DEPLOY, 201, "github-main-deploys"),
    ("github", {"repository": "evil/api", "sub": "repo:acme/api:ref:refs/heads/main"}, DEPLOY, 403, None),
    ("github", {"ref": "refs/heads/feature"}, DEPLOY, 403, None),
    ("github", {"sub": "repo:acme/api:pull_request"}, {**READ, "environment": "staging"}, 201, "ci-staging-reads"),
    ("gitlab", {}, READ, 201, "gitlab-protected-reads"),  # ref_protected: "true", as GitLab sends it
    ("gitlab", {"ref_protected": True}, READ, 201, "gitlab-protected-reads"),  # a JSON boolean
    ("gitlab", {"ref_protected": False}, READ, 403, None),
    ("gitlab", {"ref_protected": "false"}, READ, 403, None),
    ("gitlab", {"ref_protected": None}, READ, 403, None),  # claim missing
    ("gitlab", {"project_path": "evil/api"}, READ, 403, None),
]


async def test_rules_match_on_the_tokens_claims(bot, issuers, clock):
    for issuer_name, overrides, request, expected_status, rule in CLAIM_CASES:
        issuer = getattr(issuers, issuer_name)
        status, body = await call(bot, "POST", "/v1/access-requests", issuer.mint(now(clock), **overrides), request)
        case = f"{issuer_name} {overrides}"
        assert (status, body.get("rule")) == (expected_status, rule), (case, body)
        assert body["identity"].startswith(issuer_name + ":"), case
    assert issuers.gitlab.discovery_fetches == 0 and issuers.gitlab.jwks_fetches == 1  # configured jwks_uri


# -- keys ---------------------------------------------------------------------------------------------------------


async def test_a_rotated_key_is_accepted_within_seconds_and_waiting_requests_share_one_fetch(bot, issuers, clock):
    github = issuers.github
    old_kid = github.current_kid
    assert (await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))[0] == 201
    github.rotate()  # the old key is withdrawn, a new one signs

    # Keys were fetched this very second: within the floor no refetch yet, and the refusal says so.
    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY)
    assert status == 401 and "not among the keys" in body["detail"] and "refreshed" in body["detail"], body
    assert github.jwks_fetches == 1

    # Seconds later (not a minute) the new kid is fetched; eight jobs arriving together share that one fetch.
    clock.advance(5)
    answers = await asyncio.gather(*(call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY)
                                     for _ in range(8)))
    assert [status for status, _ in answers] == [201] * 8, answers
    assert github.jwks_fetches == 2

    # The withdrawn key is no longer trusted; a kid nobody publishes is refused even after a refetch.
    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock), kid=old_kid, key=new_key()),
                              DEPLOY)
    assert status == 401 and "not among the keys" in body["detail"]
    clock.advance(5)
    status, body = await call(bot, "POST", "/v1/access-requests",
                              github.mint(now(clock), kid="key-nobody", key=new_key()), DEPLOY)
    assert status == 401 and "not among the keys issuer 'github' publishes;" in body["detail"], body
    assert github.jwks_fetches == 3
    assert await bot.count("access_requests") == 9


async def test_a_request_arriving_while_the_keys_are_being_fetched_shares_that_fetch(bot, issuers, clock):
    """The issuer is slow and then fails: a request that came while the fetch was under way waits for it and takes
    its outcome; it does not start a second fetch (twice the time limit) once the first has failed."""
    github = issuers.github
    assert (await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))[0] == 201
    github.rotate()
    clock.advance(5)
    github.jwks_hold, github.jwks_answers = asyncio.Event(), github.jwks_fetches  # slow, then 503
    first = asyncio.create_task(call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))
    await eventually(lambda: github.jwks_fetches == 2)
    clock.advance(6)  # the fetch takes its time: past the floor by the time it ends
    second = asyncio.create_task(call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))
    await asyncio.sleep(0.3)  # the second request is waiting for the fetch under way
    github.jwks_hold.set()
    answers = await asyncio.gather(first, second)
    assert [status for status, _ in answers] == [401, 401], answers
    assert github.jwks_fetches == 2


async def test_a_flood_of_made_up_kids_costs_the_issuer_one_fetch_per_floor(bot, issuers, clock):
    github = issuers.github
    assert (await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))[0] == 201
    fetches = github.jwks_fetches

    async def made_up() -> int:
        token = github.mint(now(clock), kid=f"key-{uuid.uuid4().hex[:8]}", key=new_key("EC"), alg="ES256")
        return (await call(bot, "POST", "/v1/access-requests", token, DEPLOY))[0]

    # 20 s of flood, 25 tokens a second (the first 25 at once), on the injected clock: at most one fetch per 5 s.
    for second in range(20):
        assert set(await asyncio.gather(*(made_up() for _ in range(25)))) == {401}
        clock.advance(1)
    assert 1 <= github.jwks_fetches - fetches <= 20 // 5
    # The floor holds back only fetches: a real rotation during the flood is picked up within it.
    github.rotate(keep_old=True)
    clock.advance(5)
    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY)
    assert status == 201, body


async def test_when_the_jwks_fails_after_the_first_fetch_cached_keys_keep_working(bot, issuers, clock):
    github = issuers.github
    github.jwks_answers = 1
    old_kid = github.current_kid
    assert (await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY))[0] == 201

    clock.advance(61)
    github.rotate(keep_old=True)
    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock)), DEPLOY)
    assert status == 401 and "could not be refreshed" in body["detail"], body
    assert github.jwks_fetches == 2  # one refetch, which failed

    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock), kid=old_kid), DEPLOY)
    assert status == 201, body

    clock.advance(3601)  # the cached set is now old: a refresh is tried, fails, and the last good set is kept
    status, body = await call(bot, "POST", "/v1/access-requests", github.mint(now(clock), kid=old_kid), DEPLOY)
    assert status == 201, body
    assert github.jwks_fetches == 3
    assert await bot.count("access_requests") == 3


async def test_an_issuer_whose_keys_cannot_be_fetched_at_all_is_a_clear_503(bot, issuers, clock):
    issuers.gitlab.jwks_answers = 0
    status, body = await call(bot, "POST", "/v1/access-requests", issuers.gitlab.mint(now(clock)), READ)
    assert status == 503, body
    assert body["error"] == "unavailable" and "signing keys of issuer 'gitlab' cannot be fetched" in body["detail"]
    assert await bot.count("access_requests") == 0

    issuers.gitlab.jwks_answers = None  # the issuer recovers; grantbot retries within seconds
    clock.advance(6)
    status, body = await call(bot, "POST", "/v1/access-requests", issuers.gitlab.mint(now(clock)), READ)
    assert status == 201, body


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(bot, issuers, clock):
    issuers.github.discovery_issuer = "https://token.evil.example"  # OIDC Discovery 1.0 §4.3
    headers = {"Authorization": f"Bearer {issuers.github.mint(now(clock))}"}
    async with bot.api.http.post(bot.base_url + "/v1/access-requests", json=DEPLOY, headers=headers) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert "cannot be fetched" in (await resp.json())["detail"]
    assert issuers.github.jwks_fetches == 0


async def test_concurrent_first_requests_fetch_the_keys_once(bot, issuers, clock):
    tokens = [issuers.github.mint(now(clock)) for _ in range(8)]
    answers = await asyncio.gather(*(call(bot, "POST", "/v1/access-requests", t, DEPLOY) for t in tokens))
    assert [status for status, _ in answers] == [201] * 8
    assert issuers.github.discovery_fetches == 1 and issuers.github.jwks_fetches == 1


# -- refused tokens -----------------------------------------------------------------------------------------------


def _tampered(issuer: LocalIssuer, t: float) -> str:
    header, _, signature = issuer.mint(t).split(".")
    claims = base64.urlsafe_b64encode(json.dumps(issuer.claims(t, sub="repo:acme/api:ref:refs/heads/main",
                                                               repository="acme/api")).encode()).rstrip(b"=")
    return f"{header}.{claims.decode()}.{signature}"


def _rsa_key_of(issuer: LocalIssuer):
    return issuer.keys[issuer.current_kid][0]


BAD_TOKENS = [
    # (case, token maker (issuer, now) -> token, words the refusal must contain)
    ("expired", lambda i, t: i.mint(t, iat=int(t) - 400, nbf=int(t) - 400, exp=int(t) - 60), "expired 60 s ago"),
    ("not yet valid", lambda i, t: i.mint(t, nbf=int(t) + 120, exp=int(t) + 600), "not valid yet"),
    ("issued in the future", lambda i, t: i.mint(t, iat=int(t) + 120, exp=int(t) + 600), "in the future"),
    ("another audience", lambda i, t: i.mint(t, aud="https://other.example"), "another audience"),
    ("several audiences", lambda i, t: i.mint(t, aud=["grantbot", "https://other.example"]), "another audience"),
    ("untrusted issuer", lambda i, t: i.mint(t, iss="https://token.evil.example"), "is not trusted"),
    ("issuer with a trailing slash", lambda i, t: i.mint(t, iss=i.url + "/"), "is not trusted"),
    ("alg none", lambda i, t: hand_signed({"alg": "none", "typ": "JWT", "kid": i.current_kid}, i.claims(t), None),
     "unsigned"),
    ("HS256 with the issuer's public key as secret",
     lambda i, t: hand_signed({"alg": "HS256", "typ": "JWT", "kid": i.current_kid}, i.claims(t),
                              public_pem(_rsa_key_of(i))), "shared-secret algorithm"),
    ("unknown kid", lambda i, t: i.mint(t, kid="key-unknown", key=new_key()), "not among the keys"),
    ("another key under a known kid", lambda i, t: i.mint(t, key=new_key()), "signature does not verify"),
    ("tampered claims", _tampered, "signature does not verify"),
    ("ES256 under an RS256 key's kid", lambda i, t: i.mint(t, alg="ES256", key=new_key("EC")),
     "algorithm is not the one"),
    ("an access token, not an identity token", lambda i, t: i.mint(t, headers={"typ": "at+jwt"}),
     "access token, not a CI identity token"),
    ("no sub", lambda i, t: i.mint(t, sub=None), "lacks the sub claim"),
    ("no exp", lambda i, t: i.mint(t, exp=None), "lacks the exp claim"),
    ("exp not a number", lambda i, t: i.mint(t, exp="tomorrow"), "exp claim must be a number"),
    ("malformed", lambda i, t: "not-a-jwt", "not a well-formed JWT"),
    ("three parts of garbage", lambda i, t: "abc.def.ghi", "not a well-formed JWT"),
]


async def test_bad_tokens_are_refused_with_their_reason_and_nothing_is_stored(bot, issuers, clock):
    github = issuers.github
    for case, make, words in BAD_TOKENS:
        status, body = await call(bot, "POST", "/v1/access-requests", make(github, now(clock)), DEPLOY)
        assert status == 401, (case, body)
        assert body["error"] == "unauthenticated" and words in body["detail"], (case, body)
        assert "Traceback" not in body["detail"] and "BEGIN" not in body["detail"], case
    assert await bot.count("access_requests") == 0

    headers = {"Authorization": "Bearer not-a-jwt"}
    async with bot.api.http.get(bot.base_url + "/v1/access-requests/00000000-0000-4000-8000-000000000000",
                                headers=headers) as resp:
        assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]

    # Another scheme in the Authorization header is refused with what to send instead.
    status, body = await call(bot, "POST", "/v1/access-requests", "ZGVwbG95OnNlY3JldA==", DEPLOY, scheme="Basic")
    assert status == 401 and "Authorization: Bearer" in body["detail"]
    # A token that expired less than the leeway ago is still accepted (clock skew).
    t = now(clock)
    status, body = await call(bot, "POST", "/v1/access-requests",
                              github.mint(t, iat=int(t) - 300, nbf=int(t) - 300, exp=int(t) - 10), DEPLOY)
    assert status == 201, body


UNSTORABLE_CLAIMS = [
    # (claim overrides, request): each would reach a database column (identity, actor, a decision reason)
    ({"sub": "repo:acme/api:ref:refs/heads/main\x00"}, {**READ, "environment": "staging"}),
    ({"actor": "octo\x00cat"}, DEPLOY),
    ({"repository": "acme/\x00api"}, DEPLOY),  # quoted in the policy's reasons, which are stored
    ({"sub": "repo:acme/api:\ud800"}, {**READ, "environment": "staging"}),  # an unpaired surrogate: not UTF-8
    ({"environment": ["prod", {"nested": "\x00"}]}, DEPLOY),
]


@pytest.mark.parametrize("overrides, request_body", UNSTORABLE_CLAIMS, ids=[str(list(o)) for o, _ in UNSTORABLE_CLAIMS])
async def test_a_trusted_token_with_a_claim_no_database_text_can_hold_is_refused_as_a_bad_token(
        bot, issuers, clock, overrides, request_body):
    """PostgreSQL's text holds neither NUL nor unpaired surrogates: such a claim was a 500 with tracebacks."""
    status, body = await call(bot, "POST", "/v1/access-requests", issuers.github.mint(now(clock), **overrides),
                              request_body)
    assert status == 401 and body["error"] == "unauthenticated", body
    claim = next(iter(overrides))
    assert f"The token's {claim} claim holds a character" in body["detail"], body
    assert await bot.count("access_requests") == 0


async def test_a_token_creates_one_request_only(bot, issuers, clock):
    for overrides in ({}, {"jti": None}):  # without a jti what the issuer signed is remembered instead
        token = issuers.github.mint(now(clock), **overrides)
        first, _ = await call(bot, "POST", "/v1/access-requests", token, DEPLOY)
        assert first == 201
        # The same token again, and written another way that verifies alike (base64url padding on the signature).
        for again in (token, token + "=="):
            status, body = await call(bot, "POST", "/v1/access-requests", again, DEPLOY)
            assert status == 401 and "already used" in body["detail"], body
    assert await bot.count("access_requests") == 2


async def test_an_identity_or_actor_too_long_to_keep_is_refused_with_a_sentence(bot, issuers, clock):
    """A sub naming a long environment or branch, or a long actor, was a 500 on PostgreSQL (a 255-character
    column); now a 4xx that says why, and nothing stored."""
    long_sub = "repo:acme/api:environment:" + "e" * 240
    status, body = await call(bot, "POST", "/v1/access-requests", issuers.github.mint(now(clock), sub=long_sub),
                              {**READ, "environment": "staging"})
    assert status == 401 and "at most 255" in body["detail"], body
    status, body = await call(bot, "POST", "/v1/access-requests",
                              issuers.github.mint(now(clock), actor="a" * 300), DEPLOY)
    assert status == 422 and "actor" in body["detail"] and "at most 255" in body["detail"], body
    status, body = await call(bot, "POST", "/v1/access-requests", issuers.github.mint(now(clock)),
                              {**DEPLOY, "context": {"actor": "b" * 300}})
    assert status == 201, body  # the token's actor claim names the actor; context.actor is not used
    assert await bot.count("access_requests") == 1


async def test_a_replayed_token_is_refused_until_it_expires(bot, issuers, clock):
    token = issuers.github.mint(now(clock))
    assert (await call(bot, "POST", "/v1/access-requests", token, DEPLOY))[0] == 201
    clock.advance(250)  # still valid (exp is 300 s after issue): still a replay
    status, body = await call(bot, "POST", "/v1/access-requests", token, DEPLOY)
    assert status == 401 and "already used" in body["detail"]
    clock.advance(100)  # past exp + leeway: refused as expired, whatever the replay record says
    status, body = await call(bot, "POST", "/v1/access-requests", token, DEPLOY)
    assert status == 401 and "expired" in body["detail"]


# -- policy and CLI -----------------------------------------------------------------------------------------------

ISSUER = "{name: github, issuer: 'https://token.actions.githubusercontent.com', audience: grantbot}"
POLICY_PROBLEMS = [
    (f"issuers: [{ISSUER}, {ISSUER}]", "issuer name 'github' is listed more than once"),
    ("issuers: [{name: a, issuer: 'https://x.example', audience: g}, {name: b, issuer: 'https://x.example', "
     "audience: h}]", "listed more than once (one entry per issuer URL)"),
    ("issuers: [{name: github, issuer: 'http://token.example', audience: g}]", "must be an https URL"),
    ("issuers: [{name: github, issuer: 'token.actions.githubusercontent.com', audience: g}]", "must be an https URL"),
    ("issuers: [{name: g, issuer: 'https://x.example', audience: g, jwks_uri: 'http://x.example/k'}]",
     "jwks_uri 'http://x.example/k' must be an https URL"),
    ("issuers: [{name: 'git:hub', issuer: 'https://x.example', audience: g}]", "cannot contain ':'"),
    ("issuers: [{name: github, issuer: 'https://x.example', audience: ''}]", "audience"),
    (f"identities: [{{name: github, secret_env: S}}]\nissuers: [{ISSUER}]", "collides with issuer 'github'"),
    (f"identities: [{{name: 'github:repo:acme/api', secret_env: S}}]\nissuers: [{ISSUER}]",
     "collides with issuer 'github'"),
]


@pytest.mark.parametrize("document, problem", POLICY_PROBLEMS, ids=[p for _, p in POLICY_PROBLEMS])
def test_policy_validation_of_issuers(document, problem):
    with pytest.raises(PolicyError) as raised:
        parse_policy(document, "policy.yaml")
    assert problem in str(raised.value)


def test_local_http_issuers_are_accepted_for_tests_and_development():
    for url in ("http://127.0.0.1:9000", "http://localhost:9000/gitlab", "https://gitlab.com"):
        assert parse_policy(f"issuers: [{{name: ci, issuer: '{url}', audience: g}}]").issuers[0].issuer == url


def test_policy_explain_takes_an_oidc_identity_and_its_claims(tmp_path):
    policy = write_policy(tmp_path, "https://token.actions.githubusercontent.com", "https://gitlab.com")
    script = Path(sys.executable).with_name("grantbot")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bot"]
    explain = [*command, "policy", "explain", str(policy), "--identity", "github:repo:acme/api:ref:refs/heads/main",
               "--environment", "production", "--scope", "deploy:api"]
    matched = subprocess.run([*explain, "--claim", "repository=acme/api", "--claim", "ref=refs/heads/main"],
                             capture_output=True, text=True, timeout=60)
    assert matched.returncode == 0, matched.stderr
    assert "decision: auto_approve (first matching rule 'github-main-deploys')" in matched.stdout
    unmatched = subprocess.run([*explain, "--claim", "repository=acme/api", "--claim", "ref=refs/heads/dev"],
                               capture_output=True, text=True, timeout=60)
    assert "decision: deny" in unmatched.stdout
    assert "claim ref is 'refs/heads/dev', not 'refs/heads/main'" in unmatched.stdout
