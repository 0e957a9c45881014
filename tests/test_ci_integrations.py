"""grantbot from CI: ``--oidc github`` with a simulated runner token endpoint and ``--output github``, ``--oidc
gitlab``, the GitHub Action (action.yml) and the GitLab template (ci/gitlab/grantbot.gitlab-ci.yml) run as a runner
would run them (tests/ci_runners.py), all against a real ``grantbot serve`` trusting two local OIDC issuers
(tests/oidc_issuer.py) that stand in for GitHub's and GitLab's."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from tests.ci_runners import GithubJob, GitlabJob, read_commands_file
from tests.client_support import (HttpRelay, card_for, client_env, finish, pending_request_id, run_grantbot,
                                   start_grantbot_command, start_serve, stop_serve)
from tests.oidc_issuer import LocalIssuer
from tests.support import Api

ROOT = Path(__file__).parent.parent
POLICIES = Path(__file__).parent / "policies"
RUNNER_TOKEN = "runner-request-token-0123456789"  # ACTIONS_ID_TOKEN_REQUEST_TOKEN
GITHUB_JOB = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/api", "GITHUB_RUN_ID": "7777777777",
              "GITHUB_SHA": "4f1c9e2b7d3a5c8e0f1a2b3c4d5e6f7a8b9c0d1e"}
GITLAB_JOB = {"CI_JOB_ID": "5000001", "CI_JOB_URL": "https://gitlab.example.com/acme/api/-/jobs/5000001",
              "CI_COMMIT_SHA": "4f1c9e2b7d3a5c8e0f1a2b3c4d5e6f7a8b9c0d1e", "CI_PROJECT_PATH": "acme/api"}


class RunnerTokenEndpoint:
    """GitHub's ACTIONS_ID_TOKEN_REQUEST_URL: ``GET ?api-version=2.0&audience=…`` with the runner's bearer token,
    answered ``{"value": <identity token>}`` minted by ``issuer`` for that audience."""

    def __init__(self, issuer: LocalIssuer, now) -> None:
        self.issuer = issuer
        self.now = now
        self.audiences: list[str] = []
        self.tokens: list[str] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_apis/actions/idtoken", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d/_apis/actions/idtoken?api-version=2.0" % self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {RUNNER_TOKEN}":
            return web.json_response({"message": "bad runner token"}, status=401)
        audience = request.query["audience"]
        self.audiences.append(audience)
        token = self.issuer.mint(self.now(), aud=audience)
        self.tokens.append(token)
        return web.json_response({"count": 1, "value": token})


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests are of the pipeline's side, which speaks only HTTP. What grantbot stores behind it
    (reissue, release, the long poll) is tested on both databases by the server's own tests."""
    return f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}"


@pytest.fixture
async def ci(tmp_path, database_url, sandbox):
    github = LocalIssuer("RSA")
    gitlab = LocalIssuer("EC", jwks_path="/oauth/discovery/keys", shape="gitlab_ci", audience="grantbot-gitlab")
    await github.start()
    await gitlab.start()
    policy = tmp_path / "ci.yaml"
    policy.write_text(Template((POLICIES / "ci.yaml").read_text()).substitute(
        GITHUB_ISSUER=github.url, GITLAB_ISSUER=gitlab.url, GITLAB_JWKS=gitlab.jwks_url))
    serve = await start_serve(tmp_path, database_url, sandbox, policy)
    runner = RunnerTokenEndpoint(github, serve.now)
    await runner.start()
    relay = HttpRelay(serve.base_url)
    await relay.start()
    async with aiohttp.ClientSession() as http:
        yield SimpleNamespace(github=github, gitlab=gitlab, serve=serve, runner=runner, relay=relay,
                              api=Api(http, serve.base_url, serve.now), sandbox=sandbox)
    await relay.stop()
    await runner.stop()
    await stop_serve(serve)
    await github.stop()
    await gitlab.stop()


def github_env(ci, tmp_path: Path, url: str) -> dict[str, str]:
    (tmp_path / "github_output").touch()
    (tmp_path / "github_env").touch()
    return client_env(url, identity=None, ACTIONS_ID_TOKEN_REQUEST_URL=ci.runner.url,
                      ACTIONS_ID_TOKEN_REQUEST_TOKEN=RUNNER_TOKEN, GITHUB_OUTPUT=str(tmp_path / "github_output"),
                      GITHUB_ENV=str(tmp_path / "github_env"), **GITHUB_JOB)


async def test_oidc_github_fetches_a_fresh_token_per_attempt_and_writes_masked_github_outputs(ci, tmp_path):
    ci.relay.fault("POST", "/v1/access-requests", status=503, headers={"Retry-After": "0"})
    env = github_env(ci, tmp_path, ci.relay.url)
    ran = await run_grantbot("request", "--oidc", "github", "--environment", "production", "--scope", "deploy:api",
                             "--ttl", "300", "--output", "github", env=env, cwd=tmp_path)
    assert ran.code == 0, ran.err

    outputs = read_commands_file(tmp_path / "github_output")
    token = outputs["token"]
    assert ran.out == f"::add-mask::{token}\n"  # the token is on stdout only to be masked
    assert token not in ran.err
    assert set(outputs) == {"token", "grant-id", "expires-at", "request-id"}
    exported = read_commands_file(tmp_path / "github_env")
    assert exported["GRANTBOT_TOKEN"] == token and exported["GRANTBOT_GRANT_ID"] == outputs["grant-id"]
    assert exported["GRANTBOT_EXPIRES_AT"] == outputs["expires-at"]
    _, introspected = await ci.api.introspect(token)
    assert introspected["active"] is True and introspected["sub"] == "github:repo:acme/api:environment:production"

    # The runner's endpoint was asked for audience "grantbot" once per attempt: the retried POST went with an
    # unused token (grantbot lets a CI token create one request only).
    posts = ci.relay.requests("POST", "/v1/access-requests")
    assert ci.runner.audiences == ["grantbot", "grantbot"] and len(posts) == 2
    assert len({p.headers["Authorization"] for p in posts}) == 2
    assert json.loads(posts[-1].body)["context"] == {
        "run_url": "https://github.com/acme/api/actions/runs/7777777777", "repository": "acme/api",
        "commit": GITHUB_JOB["GITHUB_SHA"]}

    other = await run_grantbot("request", "--oidc", "github", "--oidc-audience", "sts.amazonaws.com", "--environment",
                               "production", "--scope", "deploy:api", env=env, cwd=tmp_path)
    assert other.code == 2 and "another audience" in other.err and ci.runner.audiences[-1] == "sts.amazonaws.com"

    no_permission = await run_grantbot("request", "--oidc", "github", "--environment", "production", "--scope",
                                       "deploy:api", env={k: v for k, v in env.items() if not k.startswith("ACTIONS_")},
                                       cwd=tmp_path)
    assert no_permission.code == 2 and "permissions: id-token: write" in no_permission.err


async def test_output_github_outside_github_actions_is_refused_before_asking(ci, tmp_path):
    env = client_env(ci.relay.url)
    ran = await run_grantbot("request", "--environment", "staging", "--scope", "db:read", "--output", "github",
                             env=env, cwd=tmp_path)
    assert ran.code == 2 and "and GITHUB_OUTPUT and GITHUB_ENV are not set" in ran.err
    assert ci.relay.seen == []


def gitlab_env(ci, url: str, **extra) -> dict[str, str]:
    token = ci.gitlab.mint(ci.serve.now())
    return client_env(url, identity=None, GRANTBOT_ID_TOKEN=token, GITLAB_CI="true", **GITLAB_JOB, **extra)


async def test_oidc_gitlab_retries_a_lost_post_with_its_one_token(ci, tmp_path):
    """GitLab gives the job one token: a POST whose answer was lost is retried with it and the same
    Idempotency-Key, and grantbot answers with the request that token created instead of refusing the token."""
    ci.relay.fault("POST", "/v1/access-requests", drop_answer=True)
    waiting = await start_grantbot_command("request", "--oidc", "gitlab", "--environment", "production", "--scope",
                                           "db:write", "--ttl", "300", env=gitlab_env(ci, ci.relay.url), cwd=tmp_path)
    request_id = await pending_request_id(ci.sandbox)
    assert await ci.api.click(await card_for(ci.sandbox, request_id), "approve", "U0APPROVER") == 200
    ran = await finish(waiting)
    assert ran.code == 0, ran.err
    view = ran.json()
    assert view["id"] == request_id and view["identity"].startswith("gitlab:project_path:acme/api")
    posts = ci.relay.requests("POST", "/v1/access-requests")
    assert len(posts) == 2 and len({(p.headers["Authorization"], p.headers["Idempotency-Key"]) for p in posts}) == 1
    assert json.loads(posts[0].body)["context"] == {"run_url": GITLAB_JOB["CI_JOB_URL"], "repository": "acme/api",
                                                    "commit": GITLAB_JOB["CI_COMMIT_SHA"]}

    # The same token cannot create a second request (a new Idempotency-Key): it was used.
    again = await run_grantbot("request", "--oidc", "gitlab", "--environment", "production", "--scope", "db:write",
                               env={**gitlab_env(ci, ci.serve.base_url), "GRANTBOT_ID_TOKEN":
                                    posts[0].headers["Authorization"].split()[1]}, cwd=tmp_path)
    assert again.code == 2 and "already used to create an access request" in again.err

    missing = await run_grantbot("request", "--oidc", "gitlab", "--environment", "production", "--scope", "db:read",
                                 env=client_env(ci.serve.base_url, identity=None), cwd=tmp_path)
    assert missing.code == 2 and "GRANTBOT_ID_TOKEN is not set" in missing.err


async def test_the_github_action_gets_access_and_its_post_step_releases_it(ci, tmp_path):
    env = client_env(identity=None, ACTIONS_ID_TOKEN_REQUEST_URL=ci.runner.url,
                     ACTIONS_ID_TOKEN_REQUEST_TOKEN=RUNNER_TOKEN, **GITHUB_JOB)
    job = GithubJob(tmp_path, env)
    ok, outputs = await job.use(ROOT, {"url": ci.serve.base_url, "environment": "production",
                                       "scopes": "deploy:api\ndeploy:*", "ttl": "300",
                                       "reason": "-hotfix: deploy 42"})  # a leading "-" is not an option
    assert ok, job.log
    token = outputs["token"]
    assert set(outputs) == {"token", "grant-id", "expires-at", "request-id"} and outputs["grant-id"]
    (install, _), (request, asked), (release, _) = job.log
    assert install == "Install grantbot" and asked.out == f"::add-mask::{token}\n", asked
    assert all(token not in ran.err for _, ran in job.log)
    _, introspected = await ci.api.introspect(token)
    assert introspected["active"] is True and introspected["scope"] == "deploy:api deploy:*"

    # A later step of the job has the token in its environment.
    deploy = await job.run("Deploy", 'test -n "$GRANTBOT_TOKEN" && echo "deploying with grant $GRANTBOT_GRANT_ID"')
    assert deploy.code == 0 and outputs["grant-id"] in deploy.out

    [post] = await job.end()
    assert post.code == 0 and f"grant {outputs['grant-id']} is revoked" in post.err, post.err
    assert await ci.api.introspect(token) == (200, {"active": False})


async def test_the_gitlab_template_gets_access_and_its_after_script_releases_it(ci, tmp_path):
    job = GitlabJob(tmp_path, client_env(identity=None, TMPDIR=str(tmp_path), **GITLAB_JOB),
                    ROOT / "ci/gitlab/grantbot.gitlab-ci.yml", ".grantbot",
                    {"id_tokens": {"GRANTBOT_ID_TOKEN": {"aud": "grantbot-gitlab"}},
                     "variables": {"GRANTBOT_URL": ci.serve.base_url, "GRANTBOT_ENVIRONMENT": "production",
                                   "GRANTBOT_SCOPES": "db:read", "GRANTBOT_TTL": "300", "GRANTBOT_REASON": "-hotfix"},
                     "script": ['printf %s "$GRANTBOT_TOKEN" > token.txt', "echo deployed with $GRANTBOT_GRANT_ID"]},
                    mint=lambda aud: ci.gitlab.mint(ci.serve.now(), aud=aud))
    main, after = await job.run()
    assert main.code == 0, main.err
    token = (tmp_path / "token.txt").read_text()
    assert token and token not in main.out + main.err + after.out + after.err
    assert list(tmp_path.glob("grantbot-*.env")) == []  # the token is not left on disk
    _, introspected = await ci.api.introspect(token)
    assert introspected["active"] is False  # after_script released it
    assert after.code == 0 and "is revoked" in after.err, after.err

    # A job that is denied fails in before_script, never runs its script, and has nothing to release.
    (tmp_path / "token.txt").unlink()
    denied = GitlabJob(tmp_path, client_env(identity=None, TMPDIR=str(tmp_path), **{**GITLAB_JOB, "CI_JOB_ID": "6"}),
                       ROOT / "ci/gitlab/grantbot.gitlab-ci.yml", ".grantbot",
                       {"id_tokens": {"GRANTBOT_ID_TOKEN": {"aud": "grantbot-gitlab"}},
                        "variables": {"GRANTBOT_URL": ci.serve.base_url, "GRANTBOT_ENVIRONMENT": "production",
                                      "GRANTBOT_SCOPES": "db:admin"},
                        "script": ['printf %s "$GRANTBOT_TOKEN" > token.txt']},
                       mint=lambda aud: ci.gitlab.mint(ci.serve.now(), aud=aud))
    main, after = await denied.run()
    assert main.code == 1 and "denied" in main.err and not (tmp_path / "token.txt").exists()
    assert after.code == 0 and after.err == ""
    assert list(tmp_path.glob("grantbot-*.env")) == []  # not even an empty one
