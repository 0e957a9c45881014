"""The pipeline client as a pipeline runs it: the real ``grantbot request / release / status`` commands against a
real ``grantbot serve`` (tests/client_support.py), with the Slack sandbox for approvals, an HTTP relay in front of
grantbot for the faults of a deploy (503 storms, dropped connections, lost answers), and time moved through
GRANTBOT_CLOCK_OFFSET_FILE instead of waited for."""

from __future__ import annotations

import asyncio
import copy
import signal
import subprocess
import sys

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.ci_runners import read_commands_file
from tests.client_support import (HttpRelay, card_for, client_env, finish, pending_request_id, run_bash,
                                   run_grantbot, start_grantbot_command, start_serve, stop_serve)
from tests.support import SECRETS, Api, cards, eventually, message_text, open_modal
from tests.ports import spare_port
from tests.test_end_to_end import grantbot_command

STAGING = ("request", "--environment", "staging", "--scope", "db:read")
PRODUCTION = ("request", "--environment", "production", "--scope", "db:write")
OUTAGE = {"error": "unavailable", "detail": "The database is unavailable; retry shortly."}


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests are of the pipeline's side, which speaks only HTTP. What grantbot stores behind it
    (reissue, release, the long poll) is tested on both databases by the server's own tests."""
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


@pytest.fixture
async def relay(serve):
    front = HttpRelay(serve.base_url)
    await front.start()
    yield front
    await front.stop()


def assert_no_secret(*texts: str, secrets: tuple[str, ...] = ()) -> None:
    for text in texts:
        for secret in (*SECRETS.values(), *secrets):
            assert secret not in text


async def test_every_exit_code_of_grantbot_request(serve, api, sandbox, tmp_path):
    env = client_env(serve.base_url)

    approved = await run_grantbot(*STAGING, "--ttl", "60", env=env, cwd=tmp_path)
    assert approved.code == 0, approved.err
    token = approved.json()["grant"]["access_token"]
    assert approved.json()["status"] == "approved" and (await api.introspect(token))[1]["active"] is True
    assert_no_secret(approved.err, secrets=(token,))

    denied = await run_grantbot("request", "--environment", "production", "--scope", "db:admin", env=env, cwd=tmp_path)
    assert denied.code == 1 and "rule 'no-admin' denies it" in denied.err
    assert denied.json()["error"] == "denied"
    denied_status = await run_grantbot("status", denied.json()["id"], env=env, cwd=tmp_path)
    assert denied_status.code == 1 and denied_status.json()["status"] == "denied", denied_status.err

    bad_input = await run_grantbot("request", "--environment", "moon", "--scope", "db:read", env=env, cwd=tmp_path)
    assert bad_input.code == 2 and "Environment 'moon' is not known" in bad_input.err
    wrong_secret = await run_grantbot(*STAGING, env={**env, "GRANTBOT_SECRET": "not-the-secret"}, cwd=tmp_path)
    assert wrong_secret.code == 2 and "signature does not match" in wrong_secret.err
    assert "check GRANTBOT_IDENTITY (here 'deploy-bot') and GRANTBOT_SECRET" in wrong_secret.err
    no_scheme = await run_grantbot(*STAGING, "--url", serve.base_url.removeprefix("http://"), env=env, cwd=tmp_path)
    assert no_scheme.code == 2 and "is not an http:// or https:// URL with a host" in no_scheme.err, no_scheme.err
    assert "retrying" not in no_scheme.err
    no_identity = await run_grantbot(*STAGING, env=client_env(serve.base_url, identity=None), cwd=tmp_path)
    assert no_identity.code == 2 and "set GRANTBOT_IDENTITY and GRANTBOT_SECRET" in no_identity.err

    still_pending = await run_grantbot(*PRODUCTION, "--wait", "1", "--leave-pending", env=env, cwd=tmp_path)
    assert still_pending.code == 3 and "is still pending" in still_pending.err
    assert still_pending.json()["status"] == "pending" and "grantbot status" in still_pending.err
    pending_status = await run_grantbot("status", still_pending.json()["id"], env=env, cwd=tmp_path)
    assert pending_status.code == 3 and pending_status.json()["status"] == "pending", pending_status.err

    # Waiting (by default until the pending timeout) for a request nobody decides: it expires, exit 3.
    waiting = await start_grantbot_command(*PRODUCTION, "--reason", "nobody answers", env=env, cwd=tmp_path)
    await pending_request_id(sandbox, 1)
    serve.advance(1801)  # basic.yaml: pending_timeout_seconds 1800
    expired = await finish(waiting)
    assert expired.code == 3 and "is expired: no access was granted" in expired.err, expired.err

    unreachable = await run_grantbot(*STAGING, "--url", f"http://127.0.0.1:{spare_port()}", "--retry-for", "1",
                                     env=env, cwd=tmp_path)
    assert unreachable.code == 4 and "did not answer POST /v1/access-requests within --retry-for 1 s" in \
        unreachable.err and "cannot connect" in unreachable.err


def _card_text(sandbox, request_id: str) -> str:
    return next((message_text(c) for c in cards(sandbox) if request_id in message_text(c)), "")


async def test_a_request_nobody_decided_is_cancelled_when_the_client_stops_waiting(serve, api, sandbox, tmp_path):
    env = client_env(serve.base_url)
    waiting = await start_grantbot_command(*PRODUCTION, "--wait", "2", env=env, cwd=tmp_path)
    request_id = await pending_request_id(sandbox, 0)
    card_as_first_shown = copy.deepcopy(await card_for(sandbox, request_id))
    gave_up = await finish(waiting)
    assert gave_up.code == 3 and "so it was cancelled: nobody can approve it after this job" in gave_up.err
    assert gave_up.json()["status"] == "cancelled" and gave_up.json()["decided_by"] == "deploy-bot"
    # The card says so (its buttons gone), and an approver clicking the card as first shown is refused.
    await eventually(lambda: "*Cancelled* by deploy-bot" in _card_text(sandbox, request_id))
    assert await api.click(card_as_first_shown, "approve", "U0APPROVER") == 200
    await eventually(lambda: any("This request was already cancelled by deploy-bot." in e["text"]
                                 for e in sandbox.ephemerals if e["user"] == "U0APPROVER"))
    status, view = await api.get_request(request_id)
    assert status == 200 and view["status"] == "cancelled" and "grant" not in view
    # Cancelling again changes nothing and answers the same (idempotent); another identity sees no such request.
    assert (await api.call("POST", f"/v1/access-requests/{request_id}/cancel"))[1]["status"] == "cancelled"
    assert (await api.call("POST", f"/v1/access-requests/{request_id}/cancel", identity="other-bot"))[0] == 404

    # A CI runner stopping the job (SIGTERM), or Ctrl-C, while it waits: the request is cancelled on the way out.
    for index, (sig, code) in enumerate(((signal.SIGTERM, 143), (signal.SIGINT, 130)), start=1):
        waiting = await start_grantbot_command(*PRODUCTION, env=env, cwd=tmp_path)
        said = b""
        while b"waiting" not in said:
            said += await asyncio.wait_for(waiting.stderr.readline(), 30)
        pending_id = await pending_request_id(sandbox, index)
        waiting.send_signal(sig)
        ended = await finish(waiting)
        assert ended.code == code and f"request {pending_id} cancelled: this command was stopped" in ended.err, \
            ended.err
        assert "Traceback" not in ended.err
        assert (await api.get_request(pending_id))[1]["status"] == "cancelled"

    # --leave-pending keeps the old way: the request waits for a decision, to be collected with `grantbot status`.
    left = await run_grantbot(*PRODUCTION, "--wait", "1", "--leave-pending", env=env, cwd=tmp_path)
    assert left.code == 3 and "is still pending" in left.err and left.json()["status"] == "pending"
    assert await api.click(await card_for(sandbox, left.json()["id"]), "approve", "U0APPROVER") == 200
    too_late = await run_grantbot("cancel", left.json()["id"], env=env, cwd=tmp_path)
    assert too_late.code == 3 and "was already approved, so it was not cancelled; release its grant" in too_late.err
    assert "access_token" not in too_late.out
    collected = await run_grantbot("status", left.json()["id"], env=env, cwd=tmp_path)
    assert collected.code == 0 and collected.json()["grant"]["access_token"]
    # `grantbot cancel` withdraws a request left pending, and says so again when run twice.
    left = await run_grantbot(*PRODUCTION, "--wait", "1", "--leave-pending", env=env, cwd=tmp_path)
    for _ in range(2):
        cancelled = await run_grantbot("cancel", left.json()["id"], env=env, cwd=tmp_path)
        assert cancelled.code == 0 and cancelled.json()["status"] == "cancelled", cancelled.err
        assert "is cancelled: nobody can approve it" in cancelled.err


async def test_a_client_stopped_before_its_request_was_answered_still_cancels_it(relay, serve, api, sandbox,
                                                                                tmp_path):
    # The POST reaches grantbot, which makes the request and posts its card; its answer is held back, and the CI
    # runner stops the job meanwhile. The client waits briefly for the answer, then cancels what it created.
    relay.fault("POST", "/v1/access-requests", delay_answer=2)
    waiting = await start_grantbot_command(*PRODUCTION, env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox, 0)
    waiting.send_signal(signal.SIGTERM)
    ended = await finish(waiting)
    assert ended.code == 143 and f"request {request_id} cancelled" in ended.err, ended.err
    assert (await api.get_request(request_id))[1]["status"] == "cancelled"


async def test_a_wait_cut_short_by_an_outage_says_the_request_may_still_be_pending(relay, serve, sandbox, tmp_path):
    relay.fault("GET", "/v1/access-requests/", times=1000, status=503)
    ran = await run_grantbot(*PRODUCTION, "--wait", "30", "--retry-for", "1", env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox, 0)
    assert ran.code == 4 and f"Request {request_id} may still be pending: it could not be cancelled" in ran.err, \
        ran.err


async def test_a_client_stopped_as_its_request_is_approved_leaves_no_grant_behind(relay, serve, api, sandbox,
                                                                                  tmp_path):
    # Approved, and the answer that hands the token over is held back as the job is stopped: the command exits 143
    # without printing a token, and the grant it will never use is released.
    waiting = await start_grantbot_command(*PRODUCTION, env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox, 0)
    relay.fault("GET", f"/v1/access-requests/{request_id}", delay_answer=3, answer_contains="access_token")
    assert await api.click(await card_for(sandbox, request_id), "approve", "U0APPROVER") == 200
    await eventually(lambda: relay.faults[0].times == 0, timeout=30)  # the token's answer is being held back
    waiting.send_signal(signal.SIGTERM)
    ended = await finish(waiting)
    assert ended.code == 143 and "was approved as this command was stopped" in ended.err and "released" in ended.err, \
        ended.err
    assert "access_token" not in ended.out
    view = (await api.get_request(request_id))[1]
    assert view["status"] == "approved" and view["grant"]["status"] == "revoked"


async def test_a_secret_on_the_command_line_is_refused_and_a_secret_file_works(serve, tmp_path):
    env = client_env(serve.base_url, identity=None, GRANTBOT_IDENTITY="deploy-bot")
    refused = await run_grantbot(*STAGING, "--secret", SECRETS["deploy-bot"], env=env, cwd=tmp_path)
    assert refused.code == 2 and "--secret is refused: a secret on the command line can be read by every user" in \
        refused.err and "GRANTBOT_SECRET" in refused.err and "--secret-file" in refused.err
    assert_no_secret(refused.out, refused.err)
    refused = await run_grantbot(*STAGING, f"--secret={SECRETS['deploy-bot']}", env=env, cwd=tmp_path)
    assert refused.code == 2 and "--secret is refused" in refused.err

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRETS["deploy-bot"] + "\n")
    from_file = await run_grantbot(*STAGING, "--secret-file", str(secret_file), env=env, cwd=tmp_path)
    assert from_file.code == 0, from_file.err


async def test_a_401_ends_the_command_at_once_without_retrying(relay, tmp_path):
    env = client_env(relay.url, GRANTBOT_SECRET="not-the-secret")
    refused = await run_grantbot(*STAGING, "--retry-for", "30", env=env, cwd=tmp_path)
    assert refused.code == 2 and "did not accept this client's credentials" in refused.err
    assert len(relay.requests("POST", "/v1/access-requests")) == 1


async def test_six_identical_parallel_requests_all_get_a_token(serve, api, tmp_path):
    env = client_env(serve.base_url)
    runs = await asyncio.gather(*(run_grantbot(*STAGING, "--output", "json", env=env, cwd=tmp_path)
                                  for _ in range(6)))
    assert [run.code for run in runs] == [0] * 6, [run.err for run in runs]
    grants = {run.json()["grant"]["id"]: run.json()["grant"]["access_token"] for run in runs}
    assert len(grants) == 6
    for token in grants.values():
        assert (await api.introspect(token))[1]["active"] is True


@pytest.mark.slow
async def test_a_503_storm_is_ridden_out_honouring_retry_after_under_one_idempotency_key(relay, serve, tmp_path):
    relay.fault("POST", "/v1/access-requests", times=3, status=503, headers={"Retry-After": "1"}, body=OUTAGE)
    ran = await run_grantbot(*STAGING, "--retry-for", "30", env=client_env(relay.url), cwd=tmp_path)
    assert ran.code == 0 and ran.json()["grant"]["access_token"], ran.err
    assert ran.err.count("The database is unavailable; retry shortly.; retrying in 1.0 s") == 3

    attempts = relay.requests("POST", "/v1/access-requests")
    assert len(attempts) == 4
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1  # one request, however many attempts
    assert len({a.headers["X-Grantbot-Nonce"] for a in attempts}) == 4  # each attempt signed afresh
    assert len({a.headers["X-Grantbot-Signature"] for a in attempts}) == 4
    assert all(later.at - earlier.at >= 0.9 for earlier, later in zip(attempts, attempts[1:]))  # Retry-After: 1

    relay.fault("POST", "/v1/access-requests", times=1000, status=503, headers={"Retry-After": "1"}, body=OUTAGE)
    gave_up = await run_grantbot(*STAGING, "--retry-for", "2", env=client_env(relay.url), cwd=tmp_path)
    assert gave_up.code == 4 and "within --retry-for 2 s (last: HTTP 503: The database is unavailable" in gave_up.err


async def test_a_retry_of_a_post_whose_answer_was_lost_gets_the_same_request(relay, serve, api, sandbox, tmp_path):
    relay.fault("POST", "/v1/access-requests", drop_answer=True)  # grantbot created it; the client never heard
    waiting = await start_grantbot_command(*PRODUCTION, "--ttl", "60", env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox)
    assert relay.dropped[0]["id"] == request_id
    assert await api.click(await card_for(sandbox, request_id), "approve", "U0APPROVER") == 200
    ran = await finish(waiting)
    assert ran.code == 0 and ran.json()["id"] == request_id, ran.err
    assert len(relay.requests("POST", "/v1/access-requests")) == 2 and len(cards(sandbox)) == 1


async def test_a_server_restarted_mid_wait_still_hands_the_client_its_token(serve, api, sandbox, tmp_path):
    waiting = await start_grantbot_command(*PRODUCTION, "--ttl", "60", "--retry-for", "60",
                                           env=client_env(serve.base_url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox)
    await asyncio.sleep(0.5)  # the client is in its long poll
    assert await serve.kill(signal.SIGKILL) == -signal.SIGKILL
    await asyncio.sleep(1)  # it finds nobody listening and retries
    await serve.start()
    assert await api.click(await card_for(sandbox, request_id), "approve", "U0APPROVER") == 200
    ran = await finish(waiting)
    assert ran.code == 0, ran.err
    assert ran.json()["grant"]["access_token"] and "retrying in" in ran.err


async def test_a_long_poll_resumes_after_its_connection_is_dropped(relay, serve, api, sandbox, tmp_path):
    relay.fault("GET", "/v1/access-requests/", times=2, cut_after=0.3)
    waiting = await start_grantbot_command(*PRODUCTION, "--ttl", "60", "--retry-for", "30",
                                           env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox)
    await eventually(lambda: len(relay.requests("GET", f"/v1/access-requests/{request_id}")) >= 3)
    assert await api.click(await card_for(sandbox, request_id), "approve", "U0APPROVER") == 200
    ran = await finish(waiting)
    assert ran.code == 0 and ran.json()["grant"]["access_token"], ran.err
    assert "the connection was closed before an answer; retrying in" in ran.err


async def test_a_token_lost_with_the_201_is_reissued_and_the_lost_one_stops_working(relay, api, tmp_path):
    """Needs POST /v1/grants/{id}/reissue (DESIGN.md)."""
    relay.fault("POST", "/v1/access-requests", drop_answer=True)
    ran = await run_grantbot(*STAGING, "--ttl", "60", env=client_env(relay.url), cwd=tmp_path)
    assert ran.code == 0, ran.err
    lost, got = relay.dropped[0]["grant"], ran.json()["grant"]
    assert got["id"] == lost["id"] and got["expires_at"] == lost["expires_at"]
    assert got["access_token"] != lost["access_token"] and "asking for a new one" in ran.err
    assert await api.introspect(lost["access_token"]) == (200, {"active": False})
    assert (await api.introspect(got["access_token"]))[1]["active"] is True
    assert len(relay.requests("POST", f"/v1/grants/{got['id']}/reissue")) == 1


async def test_a_token_lost_with_the_long_polls_answer_is_reissued(relay, api, sandbox, tmp_path):
    """Needs POST /v1/grants/{id}/reissue (DESIGN.md)."""
    relay.fault("GET", "/v1/access-requests/", drop_answer=True, answer_contains='"access_token"')
    waiting = await start_grantbot_command(*PRODUCTION, "--ttl", "60", env=client_env(relay.url), cwd=tmp_path)
    request_id = await pending_request_id(sandbox)
    assert await api.click(await card_for(sandbox, request_id), "approve", "U0APPROVER") == 200
    ran = await finish(waiting)
    assert ran.code == 0, ran.err
    lost = relay.dropped[0]["grant"]["access_token"]
    assert ran.json()["grant"]["access_token"] != lost
    assert await api.introspect(lost) == (200, {"active": False})


async def test_a_narrowed_approval_is_named_and_require_exact_refuses_it(serve, api, sandbox, tmp_path):
    env = client_env(serve.base_url)
    asked = (*PRODUCTION, "--scope", "deploy:api", "--ttl", "900")
    for index, extra in enumerate(((), ("--require-exact",))):
        waiting = await start_grantbot_command(*asked, *extra, env=env, cwd=tmp_path)
        request_id = await pending_request_id(sandbox, index)
        form = await open_modal(sandbox, await card_for(sandbox, request_id), "approve_with_changes", "U0APPROVER")
        assert await sandbox.submit_view(form["id"], {"ttl": "5", "scopes": ["1"]}) == (200, None)
        ran = await finish(waiting)
        assert "warning: the approver narrowed this grant: scope db:write not granted; TTL 300 s instead of " \
               "900 s" in ran.err, ran.err
        if not extra:
            assert ran.code == 0 and ran.json()["grant"]["scope"] == "deploy:api"
            continue
        assert ran.code == 1 and "--require-exact: the grant was narrowed" in ran.err and "released" in ran.err
        assert "access_token" not in ran.out
        _, after = await api.get_request(request_id)
        assert after["grant"]["status"] == "revoked"


async def test_release_ends_the_grant_and_status_shows_the_request(serve, api, tmp_path):
    env = client_env(serve.base_url)
    exported = await run_bash('set -e; eval "$("$@")"; printf "%s\\n%s\\n%s" "$GRANTBOT_TOKEN" "$GRANTBOT_GRANT_ID" '
                              '"$GRANTBOT_REQUEST_ID"', *_command(*STAGING, "--output", "env"), env=env, cwd=tmp_path)
    assert exported.code == 0, exported.err
    token, grant_id, request_id = exported.out.split("\n")
    assert jwt.decode(token, options={"verify_signature": False})["grant_id"] == grant_id

    released = await run_grantbot("release", env={**env, "GRANTBOT_GRANT_ID": grant_id}, cwd=tmp_path)
    assert released.code == 0 and f"grant {grant_id} is revoked" in released.err
    assert await api.introspect(token) == (200, {"active": False})
    again = await run_grantbot("release", grant_id, env=env, cwd=tmp_path)
    assert again.code == 0 and f"grant {grant_id} is revoked" in again.err  # idempotent: the last step may rerun

    nothing = await run_grantbot("release", env=env, cwd=tmp_path)
    assert nothing.code == 2 and "GRANTBOT_GRANT_ID" in nothing.err
    not_yours = await run_grantbot("release", grant_id, env=client_env(serve.base_url, identity="other-bot"),
                                   cwd=tmp_path)
    assert not_yours.code == 2 and "There is no grant" in not_yours.err

    status = await run_grantbot("status", request_id, env=env, cwd=tmp_path)
    assert status.code == 0 and f"request {request_id} is approved" in status.err
    assert status.json()["grant"]["status"] == "revoked" and "access_token" not in status.json()["grant"]
    assert status.json()["grant"]["expires_in"] == 0  # the TTL left is none, whatever expires_at had planned


async def test_output_token_prints_the_token_alone(serve, api, tmp_path):
    ran = await run_grantbot(*STAGING, "--output", "token", env=client_env(serve.base_url), cwd=tmp_path)
    assert ran.code == 0 and ran.out.count("\n") == 1
    assert (await api.introspect(ran.out.strip()))[1]["active"] is True
    assert_no_secret(ran.err, secrets=(ran.out.strip(),))


def _command(*args: str) -> list[str]:
    return [*grantbot_command(args[0]), *args[1:]]


PASSWORD = "pw-s3cr3t-1a2b3c"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\nAAAAMwAAAAtzc2gtZW\n" \
              "-----END OPENSSH PRIVATE KEY-----"
CREDENTIALS = [
    {"provider": "orders-db", "kind": "postgresql", "username": "gb_deploy_bot_1a2b", "password": PASSWORD,
     "host": "db.internal", "port": 5432, "database": "orders",
     "dsn": f"postgresql://gb_deploy_bot_1a2b:{PASSWORD}@db.internal:5432/orders",
     "expires_at": "2026-12-02T10:10:00Z"},
    {"provider": "deploy-ssh", "kind": "ssh", "certificate": "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5",
     "private_key": PRIVATE_KEY, "principals": ["deploy"], "expires_at": "2026-12-02T10:10:00Z"},
]


@pytest.fixture
async def grantbot_with_credentials():
    """A stand-in for grantbot answering an approval that carries credentials (DESIGN.md "Credentials")."""
    async def create(request: web.Request) -> web.Response:
        grant = {"id": "5b0e8c1e-0000-4000-8000-00000000c0de", "status": "active", "access_token": "eyJhbGciOi.fake.tok",
                 "token_type": "Bearer", "scope": "orders-db:read", "issued_at": "2026-12-02T10:00:00Z",
                 "expires_at": "2026-12-02T10:10:00Z", "expires_in": 600, "credentials": CREDENTIALS}
        return web.json_response({"id": "1d1d1d1d-0000-4000-8000-000000000001", "status": "approved",
                                  "scopes": ["orders-db:read"], "ttl_seconds": 600, "decided_by": "policy",
                                  "grant": grant}, status=201)

    app = web.Application()
    app.router.add_post("/v1/access-requests", create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield "http://127.0.0.1:%d" % runner.addresses[0][1]
    await runner.cleanup()


async def test_credentials_reach_env_and_github_outputs_and_every_secret_is_masked(grantbot_with_credentials,
                                                                                   tmp_path):
    asked = ("request", "--environment", "production", "--scope", "orders-db:read")
    env = client_env(grantbot_with_credentials)
    shown = await run_bash('set -e; eval "$("$@")"; env | grep -E "^(PG|GRANTBOT_(ORDERS_DB|DEPLOY_SSH)_)" | sort',
                           *_command(*asked, "--output", "env"), env=env, cwd=tmp_path)
    assert shown.code == 0, shown.err
    variables = dict(line.split("=", 1) for line in shown.out.splitlines() if "=" in line)
    assert {k: variables[k] for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")} == {
        "PGHOST": "db.internal", "PGPORT": "5432", "PGDATABASE": "orders", "PGUSER": "gb_deploy_bot_1a2b",
        "PGPASSWORD": PASSWORD}
    assert variables["GRANTBOT_ORDERS_DB_DSN"] == CREDENTIALS[0]["dsn"]
    assert variables["GRANTBOT_DEPLOY_SSH_PRINCIPALS"] == '["deploy"]'
    assert PASSWORD not in shown.err

    (tmp_path / "out").touch()
    (tmp_path / "env").touch()
    github = await run_grantbot(*asked, "--output", "github", cwd=tmp_path,
                                env={**env, "GITHUB_OUTPUT": str(tmp_path / "out"), "GITHUB_ENV": str(tmp_path / "env")})
    assert github.code == 0, github.err
    masks = github.out.splitlines()
    assert all(line.startswith("::add-mask::") for line in masks)
    masked = {line.removeprefix("::add-mask::") for line in masks}
    secrets = {"eyJhbGciOi.fake.tok", PASSWORD, CREDENTIALS[0]["dsn"], CREDENTIALS[1]["certificate"],
               *PRIVATE_KEY.splitlines()}
    assert masked == secrets  # every secret, line by line; nothing that is not one
    exported = read_commands_file(tmp_path / "env")
    assert exported["PGPASSWORD"] == PASSWORD and exported["GRANTBOT_DEPLOY_SSH_PRIVATE_KEY"] == PRIVATE_KEY
    assert read_commands_file(tmp_path / "out")["token"] == "eyJhbGciOi.fake.tok"
    assert not any(secret in github.err for secret in secrets)


def test_the_client_loads_nothing_of_the_server():
    """bot/client speaks only the HTTP contract: loading it loads none of the store, domain, web app or
    composition root (only bot.signing, the HMAC signature both sides compute)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, bot.client.commands, bot.client.verifier, bot.client.middleware; "
                               "print(' '.join(m for m in sys.modules if m == 'bot' or m.startswith('bot.')))"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert {m for m in loaded if not m.startswith("bot.client")} == {"bot", "bot.signing"}, loaded
