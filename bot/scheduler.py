"""APScheduler wiring: the expiry sweep.

The database decides what is due (``expires_at <= now``); the job only triggers sweeps, so a sweep missed while
the process was down is simply the first sweep after start (run at once). ``misfire_grace_time=None`` and
``coalesce`` keep APScheduler from dropping or stacking runs when the loop was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.domain import usecases
from bot.metrics import Metrics

log = logging.getLogger(__name__)


class Sweeper:
    """The sweep job. It remembers its running task so shutdown can let it finish.

    APScheduler's ``shutdown()`` cancels a running coroutine job without awaiting it; a sweep cut off
    mid-transaction would still need the database to roll back after the engine is gone. So shutdown pauses the
    scheduler, lets a running sweep finish (a batch takes milliseconds), and only cancels one that hangs.
    """

    def __init__(self, deps: usecases.Deps, metrics: Metrics) -> None:
        self._deps = deps
        self._metrics = metrics
        self._running: set[asyncio.Task] = set()

    async def sweep(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            result = await usecases.expire_due(self._deps)
        except Exception as exc:  # the database may be away; the next sweep catches up
            # The driver's own message, not SQLAlchemy's (which repeats the statement and its parameters).
            log.warning("expiry sweep failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
            return
        finally:
            self._running.discard(task)
        self._metrics.grants_expired.inc(result.grants_expired)
        self._metrics.requests_timed_out.inc(result.requests_expired)
        if result.grants_expired or result.requests_expired:
            log.info("sweep: %d grant(s) expired, %d pending request(s) timed out",
                     result.grants_expired, result.requests_expired)

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        if not self._running:
            return
        _, hanging = await asyncio.wait(list(self._running), timeout=timeout)
        for task in hanging:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_scheduler(
    deps: usecases.Deps, metrics: Metrics, interval_seconds: float
) -> AsyncIterator[AsyncIOScheduler]:
    """Start the scheduler inside the running loop; yields it; shuts it down (for aiohttp ``cleanup_ctx``)."""
    sweeper = Sweeper(deps, metrics)
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        sweeper.sweep,
        "interval",
        seconds=interval_seconds,
        next_run_time=datetime.now(UTC),
        id="expiry-sweep",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.pause()
        await sweeper.wait_stopped()
        scheduler.shutdown(wait=False)
