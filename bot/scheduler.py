"""APScheduler wiring: the expiry sweep and the daily summary.

The database decides what is due (``expires_at <= now``); the job only triggers sweeps, so a sweep missed while
the process was down is simply the first sweep after start (run at once). ``misfire_grace_time=None`` and
``coalesce`` keep APScheduler from dropping or stacking runs when the loop was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from datetime import timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.domain import usecases
from bot.domain.usecases.reconcile_credentials import reconcile_credentials
from bot.domain.usecases.revoke_credentials import RETRY_SECONDS, revoke_due_credentials
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
        started = time.perf_counter()
        try:
            result = await usecases.expire_due(self._deps)
        except Exception as exc:  # the database may be away; the next sweep catches up
            # The driver's own message, not SQLAlchemy's (which repeats the statement and its parameters).
            log.warning("expiry sweep failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
            return
        finally:
            self._running.discard(task)
        self._metrics.observe_sweep(time.perf_counter() - started)
        self._metrics.grants_expired.inc(result.grants_expired)
        self._metrics.requests_timed_out.inc(result.requests_expired)
        if result.grants_expired or result.requests_expired:
            log.info("sweep: %d grant(s) expired, %d pending request(s) timed out",
                     result.grants_expired, result.requests_expired)

    async def tracked(self, job) -> None:
        """Run another job under the same shutdown rule as the sweep (finish, don't get cut off)."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await job()
        finally:
            self._running.discard(task)

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        if not self._running:
            return
        _, hanging = await asyncio.wait(list(self._running), timeout=timeout)
        for task in hanging:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CredentialJobs:
    """The credential revocation worker's rounds and reconciliation, as scheduler jobs (run under the sweeper's
    shutdown rule). A round that fails (the database away) is logged and the next one catches up; what a provider
    fails is retried per revocation (``bot.domain.usecases.revoke_credentials``)."""

    def __init__(self, deps: usecases.Deps, metrics: Metrics, retry_seconds: tuple[float, ...]) -> None:
        self._deps = deps
        self._metrics = metrics
        self._retry_seconds = retry_seconds

    async def revoke(self) -> None:
        try:
            done = await revoke_due_credentials(self._deps, self._retry_seconds)
        except Exception as exc:
            log.warning("credential revocation round failed: %s: %s", type(exc).__name__,
                        getattr(exc, "orig", None) or exc)
            return
        for result in ("verified", "retried", "failed"):
            if count := getattr(done, result):
                self._metrics.revocations.labels(result=result).inc(count)

    async def reconcile(self) -> None:
        try:
            found = await reconcile_credentials(self._deps)
        except Exception as exc:
            log.warning("credential reconciliation failed: %s: %s", type(exc).__name__,
                        getattr(exc, "orig", None) or exc)
            return
        for problem in found.problems:
            log.warning("credential reconciliation: %s", problem)
        if found.queued:
            log.warning("credential reconciliation queued %d revocation(s) of accounts whose grant is not active",
                        found.queued)


class CronSchedule:
    """A crontab expression read on the wall clock of an IANA time zone (APScheduler's ``CronTrigger``, which
    follows the zone's DST rules), asked with the injected clock's time instead of firing on the real one."""

    def __init__(self, crontab: str, timezone: str) -> None:
        self._trigger = CronTrigger.from_crontab(crontab, timezone=ZoneInfo(timezone))

    def latest(self, now: datetime) -> datetime | None:
        """The last fire time at or before ``now`` within the last 25 h (aware UTC), else None."""
        start = now - timedelta(hours=25)
        latest = None
        moment = self._trigger.get_next_fire_time(None, start)
        for _ in range(100_000):  # a minute-by-minute crontab has 1,500 fire times in 25 h
            if moment is None or moment > now:
                break
            latest = moment
            moment = self._trigger.get_next_fire_time(moment, moment + timedelta(microseconds=1))
        return latest.astimezone(UTC) if latest else None


class SummaryJob:
    """Queues the daily summary when its time has come (once per scheduled time; the outbox's key makes it once
    across replicas too)."""

    def __init__(self, deps: usecases.Deps, schedule: CronSchedule) -> None:
        self._deps = deps
        self._schedule = schedule
        self._handled: datetime | None = None

    async def run(self) -> None:
        due = self._schedule.latest(self._deps.clock.now())
        if due is None or due == self._handled:
            return
        try:
            queued = await usecases.queue_due_summary(self._deps, self._schedule)
        except Exception as exc:  # the database may be away; the next run tries again
            log.warning("daily summary failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
            return
        self._handled = due
        if queued:
            log.info("daily summary for %s queued", queued.isoformat())


async def run_scheduler(
    deps: usecases.Deps, metrics: Metrics, interval_seconds: float, summary: CronSchedule | None = None,
    revocation_retry_seconds: tuple[float, ...] = RETRY_SECONDS, reconcile_seconds: float | None = None,
) -> AsyncIterator[AsyncIOScheduler]:
    """Start the scheduler inside the running loop; yields it; shuts it down (for aiohttp ``cleanup_ctx``).

    Jobs: the sweep and the credential revocation rounds every ``interval_seconds``, reconciliation of providers'
    accounts at start and every ``reconcile_seconds`` (None: never), the daily summary when ``summary`` is set."""
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
    if summary is not None:
        scheduler.add_job(sweeper.tracked, "interval", args=[SummaryJob(deps, summary).run], seconds=interval_seconds,
                          next_run_time=datetime.now(UTC), id="daily-summary", coalesce=True, max_instances=1,
                          misfire_grace_time=None)
    credentials = CredentialJobs(deps, metrics, revocation_retry_seconds)
    scheduler.add_job(sweeper.tracked, "interval", args=[credentials.revoke], seconds=interval_seconds,
                      next_run_time=datetime.now(UTC), id="credential-revocations", coalesce=True, max_instances=1,
                      misfire_grace_time=None)
    if reconcile_seconds is not None:
        scheduler.add_job(sweeper.tracked, "interval", args=[credentials.reconcile], seconds=reconcile_seconds,
                          next_run_time=datetime.now(UTC), id="credential-reconcile", coalesce=True,
                          max_instances=1, misfire_grace_time=None)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.pause()
        await sweeper.wait_stopped()
        scheduler.shutdown(wait=False)
