"""Shutdown: a task cancelled at the moment it is woken still ends; nothing outlives the server's shutdown.

Python 3.11's ``asyncio.wait_for`` returns normally when the cancellation arrives in the same loop step as the
event it waits for (gh-86296): a loop built on it runs on after its cancel, and whatever awaits it (aiohttp's
cleanup, the test runner closing its loop) waits for ever. Seen once in CI as a test's teardown hanging for 300 s.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

from bot.app import create_app
from bot.changes import LocalChanges
from bot.policy_reload import PolicyReloader, digest
from bot.web.keys import DEPS
from bot.web.serving import listen
from tests.conftest import POLICIES, make_settings


async def test_the_policy_reloader_cancelled_as_it_is_woken_ends(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text((POLICIES / "basic.yaml").read_text())
    async def refuse(reason: str, sha256: str) -> None:
        raise AssertionError(reason)

    reloader = PolicyReloader(policy, digest(policy.read_text()), lambda *_: None, refuse, interval=60)
    task = asyncio.create_task(reloader.run())
    await asyncio.sleep(0.05)  # waiting for its next round
    reloader.request()  # a SIGHUP and the shutdown in the same step
    task.cancel()
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()


async def test_a_long_poll_cancelled_as_its_change_arrives_ends_cancelled():
    changes = LocalChanges()
    poll = asyncio.create_task(changes.wait("request-1", timeout=60))
    await asyncio.sleep(0.05)
    changes.notify("request-1")
    poll.cancel()
    await asyncio.wait([poll], timeout=2)
    assert poll.cancelled()
    assert changes.waiting("request-1") == 0


@asynccontextmanager
async def writes_held(database_url: str):
    """Another connection holds the database's write lock (SQLite) or the replay-record table (PostgreSQL), so that
    a grouped write waits; released when the block ends."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.split("///", 1)[1], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE used_signatures IN EXCLUSIVE MODE")
            yield
    finally:
        await holder.close()


async def test_finishing_writes_waits_for_the_group_writer_to_give_its_connection_back(database_url, tmp_path, clock,
                                                                                       sandbox):
    """What the shutdown does before it closes the database pool (``bot.app``): the request path's group writer
    finishes and gives its connection back. Its callers are answered before it returns the connection, so aiohttp
    (which waits for the requests in flight) can be done while it still runs; in a real process under load, what
    was left was cancelled by the event loop's end while returning its connection, logged as an error with a
    traceback. Here another connection's lock holds the write."""
    settings = make_settings(database_url, tmp_path)
    app = create_app(settings, clock=clock, migrate=True)
    listener = await listen(app, "127.0.0.1", 0, header_timeout_seconds=settings.header_timeout_seconds)
    store = app[DEPS].store
    now = clock.now()
    try:
        async with writes_held(database_url):
            writing = asyncio.create_task(store.remember_signature("a" * 64, now + timedelta(minutes=5), now))
            await asyncio.sleep(0.3)  # the group writer waits for the lock
            finishing = asyncio.create_task(store.finish_writes(10))
            await asyncio.sleep(0.5)
            assert not finishing.done()  # waiting for the write
        await asyncio.wait_for(finishing, 10)
        # Nothing of the writer is left: its caller was answered, and its task (which ends once its connection is
        # back in the pool) is done.
        assert writing.done() and writing.result() is True
        assert [task for task in asyncio.all_tasks() if "GroupCommit" in repr(task.get_coro())] == []
    finally:
        await listener.close()


async def test_a_job_submitted_as_the_scheduler_pauses_is_waited_for_not_cut_off():
    """APScheduler's asyncio executor submits a job as a task; at shutdown one may not have started yet."""
    from bot.metrics import Metrics
    from bot.scheduler import Sweeper

    sweeper = Sweeper(deps=None, metrics=Metrics(), interval_seconds=1.0)
    steps: list[str] = []

    async def round_of_work() -> None:
        steps.append("started")
        await asyncio.sleep(0.05)  # a transaction's statements
        steps.append("finished")

    job = asyncio.create_task(sweeper.tracked(round_of_work))  # as AsyncIOExecutor does; not started yet
    await sweeper.wait_stopped(timeout=5)
    assert steps == ["started", "finished"] and job.done() and not job.cancelled()


async def test_a_job_that_hangs_at_shutdown_is_cancelled_within_its_bounds():
    from bot.metrics import Metrics
    from bot.scheduler import Sweeper

    sweeper = Sweeper(deps=None, metrics=Metrics(), interval_seconds=1.0)
    job = asyncio.create_task(sweeper.tracked(lambda: asyncio.sleep(60)))
    await sweeper.wait_stopped(timeout=0.1)
    assert job.cancelled()


async def test_no_sweep_starts_while_the_requests_in_flight_drain(database_url, tmp_path, clock):
    """From SIGTERM on (aiohttp's on_shutdown, which runs before it waits for the requests in flight) the scheduler
    starts nothing: a sweep or a revocation round begun during the drain would compete with those requests for the
    database (on SQLite its one connection) and hold the shutdown after them. The next process's first sweep
    catches up."""
    from sqlalchemy import text

    from tests.support import Api

    settings = make_settings(database_url, tmp_path)
    app = create_app(settings, clock=clock, migrate=True)
    listener = await listen(app, "127.0.0.1", 0, header_timeout_seconds=settings.header_timeout_seconds)
    try:
        async with aiohttp.ClientSession() as http:
            status, created = await Api(http, f"http://127.0.0.1:{listener.port}",
                                        lambda: clock.now().timestamp()).request_access(
                {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60, "reason": "drain test"})
        assert status == 201
        await app.shutdown()  # the first step of aiohttp's graceful shutdown, before it drains the requests
        # A sweep the scheduler started just before may still take its first step (reading the clock): let it,
        # so that only sweeps started after the shutdown could see the grant due.
        await asyncio.sleep(0.2)
        clock.advance(120)  # the grant is due
        await asyncio.sleep(1.0)  # twenty sweep intervals
        async with app[DEPS].store.engine.connect() as conn:
            grant_status = (await conn.execute(text("SELECT status FROM grants WHERE id = :id"),
                                               {"id": created["grant"]["id"]})).scalar_one()
        assert grant_status == "active"
    finally:
        await listener.close()


async def test_a_job_cut_off_at_shutdown_is_one_warning_not_a_traceback(caplog):
    """APScheduler logs a job that ends cancelled as an error with a traceback; one cut off by the shutdown after
    its grace is expected, and said in one line."""
    from bot.metrics import Metrics
    from bot.scheduler import Sweeper

    sweeper = Sweeper(deps=None, metrics=Metrics(), interval_seconds=1.0)

    async def hanging_round() -> None:
        await asyncio.sleep(60)

    job = asyncio.create_task(sweeper.tracked(hanging_round))
    sweeper.stop_starting()
    await sweeper.wait_stopped(timeout=0.1)
    assert job.done() and not job.cancelled() and job.exception() is None
    assert [r.getMessage() for r in caplog.records if r.name == "bot.scheduler"] == [
        "test_a_job_cut_off_at_shutdown_is_one_warning_not_a_traceback.<locals>.hanging_round was cancelled at "
        "shutdown"]
