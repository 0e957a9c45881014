"""The real ``grantbot serve`` process, with the Slack sandbox as its Slack: a pipeline asks, a person approves in
Slack, the pipeline gets a token, the token verifies against the JWKS, and it expires with a message in the channel.
Time is moved through GRANTBOT_CLOCK_OFFSET_FILE instead of sleeping through the TTL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from alembic.script import ScriptDirectory
from sqlalchemy import text

from bot.store.engine import create_engine
from bot.store.schema import alembic_config, head_revision, upgrade
from tests.conftest import POLICIES
from tests.ports import spare_port
from tests.schema_image import at_head as schema_at_head
from tests.support import (BOT_TOKEN, CHANNEL, SECRETS, SIGNING_SECRET, Api, advance_clock_offset, buttons, cards,
                           assert_no_secrets, eventually, hmac_headers, message_text, read_clock_offset,
                           write_clock_offset)


def grantbot_command(command: str = "serve") -> list[str]:
    script = Path(sys.executable).with_name("grantbot")
    return [str(script), command] if script.exists() else [sys.executable, "-m", "bot", command]


class Process:
    """A ``grantbot serve`` child process and a clock offset file that moves its time."""

    def __init__(self, tmp_path: Path, database_url: str, sandbox, name: str = "grantbot") -> None:
        self.port = spare_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.offset_file = tmp_path / "clock-offset"  # shared by the processes of one test: one clock
        if not self.offset_file.exists():
            write_clock_offset(self.offset_file, 0)
        self.log_path = tmp_path / f"{name}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "GRANTBOT_HOST": "127.0.0.1",
            "GRANTBOT_DATABASE_URL": database_url,
            "GRANTBOT_POLICY_FILE": str(POLICIES / "basic.yaml"),
            "GRANTBOT_SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": sandbox.api_url,
            "GRANTBOT_SLACK_CHANNEL": CHANNEL,
            "GRANTBOT_INTROSPECTION_CLIENTS": "rs:rs-secret",
            "GRANTBOT_CLOCK_OFFSET_FILE": str(self.offset_file),
            "GRANTBOT_SWEEP_INTERVAL_SECONDS": "0.2",
            "GRANTBOT_SUMMARY_CRON": "off",
            "GRANTBOT_SLACK_POSTS_PER_SECOND": "50",  # Slack's pace is tested in test_outbox_faults
            **{"TEST_SECRET_" + k.upper().replace("-", "_"): v for k, v in SECRETS.items()},
        }
        self.proc: subprocess.Popen | None = None

    def now(self) -> float:
        return time.time() + read_clock_offset(self.offset_file)

    def advance(self, seconds: float) -> None:
        advance_clock_offset(self.offset_file, seconds)

    async def start(self) -> None:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(grantbot_command(), env=self.env, stdout=log, stderr=subprocess.STDOUT)

        async def healthy() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                async with aiohttp.ClientSession() as http, http.get(self.base_url + "/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, timeout=20, interval=0.1)

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal the process and wait (without blocking the loop: the sandbox in this process must keep answering
        the posts grantbot finishes while it drains) for its exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + 15
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"grantbot did not exit within 15 s of signal {sig}"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def check_log(self) -> None:
        """No tracebacks, no warning from Bolt about its set-up, and no secret or token, in what the process logged."""
        log = self.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        assert "As you gave `client`" not in log, log[-3000:]
        assert_no_secrets(log)


def migrate(proc: Process) -> None:
    """``grantbot migrate`` as an operator runs it (tests about the migration; others use :func:`at_head`)."""
    migrated = subprocess.run(grantbot_command("migrate"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr


async def at_head(proc: Process) -> None:
    """The process's empty database at the head schema, as ``grantbot migrate`` leaves it, in a fraction of the
    time (a copy: ``tests/schema_image.py``)."""
    await schema_at_head(proc.env["GRANTBOT_DATABASE_URL"])


@pytest.fixture
async def process(tmp_path, database_url, sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    sandbox.events_url = proc.base_url + "/slack/events"
    await at_head(proc)
    await proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        assert await proc.kill(signal.SIGTERM) == 0, proc.log_path.read_text()[-3000:]
    proc.check_log()


@pytest.fixture
async def api(process):
    async with aiohttp.ClientSession() as http:
        yield Api(http, process.base_url, process.now)


async def test_a_request_is_approved_in_slack_and_its_token_expires(process, api, sandbox):
    status, created = await api.request_access({
        "environment": "production", "scopes": ["db:write"], "ttl_seconds": 120, "reason": "run migration 42",
        "context": {"run_url": "https://ci.acme.example/runs/42", "commit": "4f1c9e2", "repository": "acme/api"},
    })
    assert status == 202 and created["status"] == "pending", created

    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert buttons(card) == ["approve", "approve_with_changes", "deny"] and "run migration 42" in message_text(card)
    assert await api.click(card, "approve", "U0APPROVER") == 200

    status, decided = await api.get_request(created["id"], wait=20)
    assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "U0APPROVER"
    token = decided["grant"]["access_token"]

    async with api.http.get(process.base_url + "/.well-known/jwks.json") as resp:
        jwks = jwt.PyJWKSet.from_dict(await resp.json())
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    claims = jwt.decode(token, jwks[header["kid"]].key, algorithms=["ES256"], audience="https://api.acme.example",
                        issuer=f"http://127.0.0.1:{process.port}", options={"require": ["exp", "iat", "jti"]})
    assert claims["scope"] == "db:write" and claims["sub"] == "deploy-bot"
    assert claims["exp"] - claims["iat"] == 120
    assert (await api.introspect(token))[1]["active"] is True
    await eventually(lambda: buttons(card) == ["revoke_grant"] and "Approved" in message_text(card))

    process.advance(121)
    reply = await eventually(lambda: next((m for m in sandbox.messages
                                           if m["thread_ts"] == card["ts"] and "expired" in m["text"]), None))
    assert reply["channel"] == CHANNEL
    # The card says so too, its fallback text (notifications, screen readers) included.
    await eventually(lambda: card["text"].endswith("(approved, grant expired)") and buttons(card) == [])
    _, after = await api.get_request(created["id"])
    assert after["grant"]["status"] == "expired" and "access_token" not in after["grant"]
    assert await api.introspect(token) == (200, {"active": False})


async def test_a_restart_between_request_and_approval_loses_nothing(process, api, sandbox):
    _, created = await api.request_access({"environment": "production", "scopes": ["deploy:api"], "ttl_seconds": 60})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))

    assert await process.kill(signal.SIGKILL) == -signal.SIGKILL
    await process.start()
    # If the kill came between Slack taking the card and the database recording it, the outbox item is still
    # leased by the dead process; move past the 30 s lease instead of waiting for it.
    process.advance(31)

    assert await api.click(card, "approve", "U0SECOND") == 200
    status, decided = await api.get_request(created["id"], wait=20)
    assert status == 200 and decided["status"] == "approved" and decided["grant"]["access_token"]
    await eventually(lambda: buttons(card) == ["revoke_grant"])
    await asyncio.sleep(0.5)
    assert len(cards(sandbox)) == 1  # the card was posted once, not again after the restart


async def test_a_card_queued_while_down_is_posted_after_the_restart(process, api, sandbox):
    await process.kill(signal.SIGTERM)
    env_without_slack = {k: v for k, v in process.env.items() if not k.startswith("SLACK_")}
    original, process.env = process.env, env_without_slack
    await process.start()  # Slack not configured: the card can only wait in the outbox
    _, created = await api.request_access({"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60})
    await asyncio.sleep(0.5)
    assert cards(sandbox) == []
    assert await process.kill(signal.SIGKILL) == -signal.SIGKILL
    process.env = original
    await process.start()
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert buttons(card) == ["approve", "approve_with_changes", "deny"]


@pytest.mark.slow
async def test_serve_refuses_a_database_behind_the_code_and_says_to_migrate(tmp_path, database_url, sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    refused = subprocess.run(grantbot_command("serve"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "run `grantbot migrate` first" in refused.stderr and "Traceback" not in refused.stderr
    # A database one release behind: upgraded to the revision before the code's head.
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision()).down_revision
    engine = create_engine(database_url)
    await upgrade(engine, previous)
    await engine.dispose()
    refused = subprocess.run(grantbot_command("serve"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert f"is at schema revision {previous}, but this grantbot needs revision {head_revision()}: " \
           "run `grantbot migrate` first" in refused.stderr
    migrated = subprocess.run(grantbot_command("migrate"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0
    again = subprocess.run(grantbot_command("migrate"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert "up to date" in again.stdout


async def test_a_hosting_platforms_postgres_url_with_libpq_parameters_works(tmp_path, postgres_url, sandbox):
    """``postgres://`` with libpq's sslmode, application_name and connect_timeout, as platforms hand it out."""
    name = f"grantbot-{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("postgresql://", "postgres://", 1) + \
        f"?sslmode=prefer&application_name={name}&connect_timeout=5"
    proc = Process(tmp_path, url, sandbox)
    migrate(proc)
    await proc.start()
    try:
        async with aiohttp.ClientSession() as http:
            status, created = await Api(http, proc.base_url).request_access(
                {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60})
        assert status == 201, created
        engine = create_engine(postgres_url)
        async with engine.connect() as conn:
            names = (await conn.execute(text("SELECT application_name FROM pg_stat_activity"))).scalars().all()
        await engine.dispose()
        assert name in names  # the parameters reached the connection
    finally:
        assert await proc.kill(signal.SIGTERM) == 0
    proc.check_log()


def test_serve_says_which_policy_key_is_wrong(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - name: r\n    decison: deny\n")
    env = {**os.environ, "GRANTBOT_POLICY_FILE": str(policy), "GRANTBOT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "GRANTBOT_SIGNING_KEY_FILE": str(tmp_path / "k.pem")}
    refused = subprocess.run(grantbot_command("serve"), env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{policy}:3: rules[0].decison: unknown key" in refused.stderr  # file, line, key
    assert f"{policy}:2: rules[0].decision: Field required" in refused.stderr  # the rule that lacks it


async def test_sigterm_drains_answers_long_polls_and_exits_0(process, api, sandbox):
    _, created = await api.request_access({"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60})
    poll = asyncio.create_task(api.get_request(created["id"], wait=50))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    status, answer = await poll
    assert status == 200 and answer["status"] == "pending"  # answered with what it had; the client polls again
    assert process.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 15
    log = process.log_path.read_text()
    assert "draining" in log and "stopped" in log


BAD_DATABASES = [
    ("postgresql://postgres:hunter2@127.0.0.1:1/grantbot", "cannot reach the database postgresql+asyncpg://postgres:***@"),
    ("postgres://postgres@127.0.0.1:5432/no_such_database_here", 'database "no_such_database_here" does not exist'),
    ("sqlite:////no/such/folder/grantbot.db", "unable to open database file"),
    ("mysql://root@127.0.0.1/grantbot", "must be a SQLite or PostgreSQL URL"),
    ("postgres://postgres@127.0.0.1:5432/postgres?sslmode=sometimes", "sslmode='sometimes' is not one of disable"),
    ("postgres://postgres@127.0.0.1:5432/postgres?ssl_mode=require", "unknown parameter 'ssl_mode'"),
    ("postgres://postgres@127.0.0.1:5432/postgres?connect_timeout=soon", "connect_timeout='soon' is not a number"),
    # This machine's PostgreSQL has no TLS: libpq's require refuses a server that will not speak it.
    ("postgres://postgres:hunter2@127.0.0.1:5432/postgres?sslmode=require", "cannot reach the database"),
]


@pytest.mark.parametrize("url,words", BAD_DATABASES, ids=[u.split(":")[0] + str(i) for i, (u, _) in enumerate(BAD_DATABASES)])
def test_serve_says_clearly_when_it_cannot_reach_its_database(tmp_path, url, words):
    env = {**os.environ, "GRANTBOT_DATABASE_URL": url, "GRANTBOT_SIGNING_KEY_FILE": str(tmp_path / "k.pem"),
           "GRANTBOT_POLICY_FILE": str(POLICIES / "basic.yaml"), "PORT": str(spare_port()),
           **{"TEST_SECRET_" + k.upper().replace("-", "_"): v for k, v in SECRETS.items()}}
    refused = subprocess.run(grantbot_command("serve"), env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and "hunter2" not in refused.stderr


async def test_grantbot_request_signs_with_a_fresh_nonce_so_parallel_jobs_all_get_access(grantbot, tmp_path):
    """A matrix build: the same `grantbot request` run by several jobs in the same second. Each run sends its own
    X-Grantbot-Nonce (checked at a recording server against DESIGN.md's signed string), and all get access."""
    seen: list[tuple[dict, bytes, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read(), request.raw_path))
        grant = {"id": str(uuid.uuid4()), "status": "active", "access_token": "recorded.token.value",
                 "token_type": "Bearer", "scope": "db:read", "expires_in": 600}
        return web.json_response({"id": str(uuid.uuid4()), "status": "approved", "scopes": ["db:read"],
                                  "grant": grant}, status=201)

    recorder = web.Application()
    recorder.router.add_post("/v1/access-requests", record)
    runner = web.AppRunner(recorder, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recorder_url = "http://127.0.0.1:%d" % runner.addresses[0][1]
    env = {**os.environ, "GRANTBOT_IDENTITY": "deploy-bot", "GRANTBOT_SECRET": SECRETS["deploy-bot"]}

    async def run(url: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *grantbot_command("request"), "--url", url, "--environment", "staging", "--scope", "db:read",
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    try:
        assert [code for code, _, _ in await asyncio.gather(run(recorder_url), run(recorder_url))] == [0, 0]
    finally:
        await runner.cleanup()
    nonces = []
    for headers, body, path in seen:
        nonce = headers.get("X-Grantbot-Nonce")
        assert nonce is not None and re.fullmatch(r"[A-Za-z0-9_-]{16,64}", nonce), headers
        expected = hmac_headers("deploy-bot", "POST", path, body, timestamp=int(headers["X-Grantbot-Timestamp"]),
                                nonce=nonce)
        assert headers["X-Grantbot-Signature"] == expected["X-Grantbot-Signature"]
        nonces.append(nonce)
    assert len(set(nonces)) == 2

    # Against grantbot itself, four identical runs at once all get a grant (none is refused as a replay).
    answers = await asyncio.gather(*(run(grantbot.base_url) for _ in range(4)))
    assert [code for code, _, _ in answers] == [0] * 4, [err for _, _, err in answers]
    assert await grantbot.count("grants") == 4


async def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_non_zero(tmp_path, sandbox):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = Process(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}", sandbox)
        port = proc.env["PORT"] = str(taken.getsockname()[1])
        migrate(proc)
        refused = subprocess.run(grantbot_command("serve"), env=proc.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"grantbot: cannot listen on 127.0.0.1:{port}: the address is already in use (another grantbot, or another "
        "program, listens there); stop that program or choose another port (PORT and GRANTBOT_HOST; grantbot dev --port)")
    assert "Traceback" not in refused.stderr and " ERROR " not in refused.stderr and " WARNING " not in refused.stderr, \
        refused.stderr
    assert "As you gave `client`" not in refused.stderr


async def test_a_client_that_never_finishes_its_headers_is_disconnected_within_the_header_timeout(tmp_path, sandbox):
    proc = Process(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}", sandbox)
    proc.env["GRANTBOT_HEADER_TIMEOUT_SECONDS"] = "1"
    migrate(proc)
    await proc.start()
    try:
        async def half_a_request() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: grantbot\r\nX-Slow: ")
            await writer.drain()
            try:  # the server closes it (EOF, or a reset); before, it waited for ever
                return await asyncio.wait_for(reader.read(), 20)
            except ConnectionResetError:
                return b""
            finally:
                writer.close()

        started = asyncio.get_running_loop().time()
        assert await asyncio.gather(*(half_a_request() for _ in range(50))) == [b""] * 50
        # Closed at the 1 s limit, give or take a loaded machine's delays; the default limit (10 s) would not do.
        assert asyncio.get_running_loop().time() - started < 6

        # Headers that arrive in pieces within the limit, and a long poll lasting longer than it, are served.
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: grantbot\r\n")
        await asyncio.sleep(0.3)
        writer.write(b"Connection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 20)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        async with aiohttp.ClientSession() as http:
            api = Api(http, proc.base_url, proc.now)
            _, created = await api.request_access({"environment": "production", "scopes": ["db:write"]})
            status, polled = await api.get_request(created["id"], wait=2)
            assert status == 200 and polled["status"] == "pending"
    finally:
        assert await proc.kill(signal.SIGTERM) == 0
    proc.check_log()


async def test_serve_on_postgresql_without_an_issuer_warns_that_replicas_need_the_same_one(tmp_path, database_url,
                                                                                          sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    await at_head(proc)
    await proc.start()
    try:
        await eventually(lambda: "grantbot listening" in proc.log_path.read_text())
        warned = "GRANTBOT_ISSUER is not set, so tokens name http://127.0.0.1:" in proc.log_path.read_text()
        assert warned == database_url.startswith("postgresql"), proc.log_path.read_text()[-2000:]
    finally:
        assert await proc.kill(signal.SIGTERM) == 0
    named = Process(tmp_path, database_url, sandbox, name="named")
    named.env["GRANTBOT_ISSUER"] = "https://grantbot.example.com"
    await named.start()
    try:
        await eventually(lambda: "grantbot listening" in named.log_path.read_text())
        assert "GRANTBOT_ISSUER is not set" not in named.log_path.read_text()
    finally:
        assert await named.kill(signal.SIGTERM) == 0
