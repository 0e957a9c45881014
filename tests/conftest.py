"""Fixtures: a real database (SQLite file and PostgreSQL scratch database), the Slack sandbox as a real HTTP
server, and grantbot itself served on a real port with an injected clock."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import text

from bot.app import create_app
from bot.config import Settings
from bot.domain.clock import FakeClock
from bot.sandbox import SlackSandbox
from bot.store.engine import create_engine
from bot.store.repository import SqlStore
from bot.store.schema import upgrade
from bot.web.serving import Listener, listen
from tests.schema_image import SchemaImage, shared_image
from tests.support import BOT_TOKEN, CHANNEL, SECRETS, SIGNING_SECRET, Api, assert_no_secrets

POLICIES = Path(__file__).parent / "policies"
ADMIN_URL = os.environ.get("GRANTBOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASES = os.environ.get("GRANTBOT_TEST_DATABASES", "sqlite,postgresql").split(",")


@pytest.fixture(scope="session")
def postgres_url():
    """A scratch PostgreSQL database for this test session, dropped afterwards."""
    name = f"grantbot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:  # on a thread: this session fixture may be first used inside a running loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(sql)).result()

    run(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DATABASES)
async def database_url(request, tmp_path):
    """Each test that uses the database runs once on SQLite and once on PostgreSQL, from an empty schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    async with engine.begin() as conn:
        # A connection a previous test left behind (a process still shutting down) could hold a lock that
        # DROP SCHEMA would wait on forever: end them first, and never wait on a lock for long.
        await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        await conn.execute(text("SET LOCAL lock_timeout = '10s'"))
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    yield url


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog):
    """Every test: nothing grantbot (or a library under it) logged holds a token, a signature or a secret —
    messages, their arguments, structured fields and tracebacks alike (processes' logs: ``Process.check_log``)."""
    caplog.set_level(logging.INFO)
    yield
    records = [r for when in ("setup", "call", "teardown") for r in caplog.get_records(when)]
    assert_no_secrets("\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in records))


@pytest.fixture(autouse=True)
def identity_secrets(monkeypatch):
    """The HMAC identities' secrets, where the policy file says they are: in the environment."""
    for name, secret in SECRETS.items():
        monkeypatch.setenv("TEST_SECRET_" + name.upper().replace("-", "_"), secret)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox():
    box = SlackSandbox(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET,
                       users={"U0APPROVER": "dana", "U0SECOND": "lee", "U0OTHER": "sam"})
    await box.start()
    yield box
    await box.stop()


@dataclass
class Running:
    """grantbot served on a real port, with what a test needs to talk to it and to look inside."""

    base_url: str
    api: Api
    app: web.Application
    settings: Settings

    @property
    def engine(self):
        from bot.web.keys import STORE

        return self.app[STORE].engine

    async def count(self, table: str) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()


def make_settings(database_url: str, tmp_path: Path, **overrides) -> Settings:
    values = dict(
        database_url=database_url,
        policy_file=POLICIES / "basic.yaml",
        signing_key_file=tmp_path / "signing-key.pem",
        slack_channel=CHANNEL,
        introspection_clients="rs:rs-secret",
        sweep_interval_seconds=0.05,
        issuer="https://grantbot.test",
        summary_cron="off",  # tests of the daily summary turn it on; elsewhere it would post at 09:00 UTC
        # Slack's pace (1 post/s per channel) is tested in test_outbox_faults; elsewhere it would only slow tests
        slack_posts_per_second=50,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def schema_image() -> SchemaImage:
    """The head schema, migrated once per test process and copied into each test's empty database."""
    return shared_image()


@pytest.fixture
async def start_grantbot(database_url, tmp_path, clock, sandbox, schema_image):
    """Start grantbot (any number of times, e.g. to restart it) against the sandbox; returns a :class:`Running`.
    Its database starts at the head schema (a copy: ``tests/schema_image.py``); the start still migrates, so a
    database a test left behind the head is upgraded as ``grantbot dev`` would."""
    listeners: list[Listener] = []
    sessions: list[aiohttp.ClientSession] = []
    prepared = False

    async def start(**overrides) -> Running:
        nonlocal prepared
        if not prepared and "database_url" not in overrides:
            prepared = True
            await schema_image.apply(database_url)
        overrides.setdefault("slack_bot_token", BOT_TOKEN)
        overrides.setdefault("slack_signing_secret", SIGNING_SECRET)
        overrides.setdefault("slack_api_url", sandbox.api_url)
        settings = make_settings(overrides.pop("database_url", database_url), tmp_path, **overrides)
        app = create_app(settings, clock=clock, migrate=True)
        listener = await listen(app, "127.0.0.1", 0, header_timeout_seconds=settings.header_timeout_seconds)
        listeners.append(listener)
        base_url = "http://127.0.0.1:%d" % listener.port
        sandbox.events_url = base_url + "/slack/events"
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Running(base_url, Api(http, base_url, lambda: clock.now().timestamp()), app, settings)

    yield start
    for http in sessions:
        await http.close()
    for listener in reversed(listeners):
        await listener.close()


@pytest.fixture
async def store(database_url) -> SqlStore:
    """The store on a migrated database, for tests of its contracts (grouped commits, revocation fencing)."""
    engine = create_engine(database_url)
    await upgrade(engine)
    yield SqlStore(engine)
    await engine.dispose()


@pytest.fixture
async def grantbot(start_grantbot) -> Running:
    return await start_grantbot()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort, the rest in file order): with xdist, a long test handed out last would
    leave the other workers idle while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
