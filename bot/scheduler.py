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

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.domain import usecases
from bot.domain.usecases.reconcile_credentials import reconcile_credentials
from bot.domain.usecases.revoke_credentials import RETRY_SECONDS, revoke_due_credentials
from bot.metrics import Metrics

log = logging.getLogger(__name__)


# Sweeps follow one another at least this far apart (seconds) while grants keep falling due: at 1,000 expiries a
# second a sweep then ends about a hundred of them, instead of one transaction per grant.
MIN_GAP_SECONDS = 0.1


class Sweeper:
    """The sweep job, scheduled by what falls due next. It remembers its running task so shutdown can let it
    finish.

    After each sweep the next one is set for the moment the database says something next falls due
    (``SweepResult.next_due``), but never later than ``interval_seconds`` (the ceiling: grants issued by other
    replicas, a clock that jumps, housekeeping) and never sooner than ``MIN_GAP_SECONDS`` after this one. A grant
    issued here that expires before the next sweep brings it forward (:meth:`grant_issued`). The delay is read on
    the injected clock and waited on the real one; an injected clock that jumps is caught up with by the ceiling.

    APScheduler's ``shutdown()`` cancels a running coroutine job without awaiting it; a sweep cut off
    mid-transaction would still need the database to roll back after the engine is gone. So shutdown pauses the
    scheduler, lets a running sweep finish (a batch takes milliseconds), and only cancels one that hangs.
    """

    JOB_ID = "expiry-sweep"

    def __init__(self, deps: usecases.Deps, metrics: Metrics, interval_seconds: float = 1.0) -> None:
        self._deps = deps
        self._metrics = metrics
        self._interval = interval_seconds
        self._min_gap = min(MIN_GAP_SECONDS, interval_seconds)
        self._running: set[asyncio.Task] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._next_sweep: datetime | None = None  # on the injected clock
        self._housekept = float("-inf")  # time.monotonic() of the last housekeeping
        self._stopping = False

    def attach(self, scheduler: AsyncIOScheduler) -> None:
        """Run on ``scheduler``: the first sweep at once, the later ones as each sweep sets them."""
        self._scheduler = scheduler
        self._schedule(0.0)

    def delay_after(self, next_due: datetime | None, now: datetime) -> float:
        """Seconds from ``now`` to the next sweep, given the next moment something falls due (None: nothing)."""
        if next_due is None:
            return self._interval
        return min(self._interval, max(self._min_gap, (next_due - now).total_seconds()))

    def _schedule(self, delay: float) -> None:
        if self._scheduler is None:
            return
        self._next_sweep = self._deps.clock.now() + timedelta(seconds=delay)
        self._scheduler.add_job(
            self.sweep, "date", run_date=datetime.now(UTC) + timedelta(seconds=delay), id=self.JOB_ID,
            replace_existing=True, max_instances=1, misfire_grace_time=None,
        )

    def grant_issued(self, expires_at: datetime) -> None:
        """A grant issued in this process expires at ``expires_at``: sweep by then if the next sweep is later."""
        if self._scheduler is None or self._next_sweep is None or expires_at >= self._next_sweep:
            return
        delay = max((expires_at - self._deps.clock.now()).total_seconds(), 0.0)
        self._next_sweep = expires_at
        with contextlib.suppress(JobLookupError):  # a sweep is running: it schedules the next one itself
            self._scheduler.modify_job(self.JOB_ID, next_run_time=datetime.now(UTC) + timedelta(seconds=delay))

    async def sweep(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        started = time.perf_counter()
        housekeeping = time.monotonic() - self._housekept >= self._interval
        try:
            result = await usecases.expire_due(self._deps, housekeeping=housekeeping)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            log.warning("expiry sweep was cancelled at shutdown; the next process's first sweep catches up")
            return
        except Exception as exc:  # the database may be away; the next sweep catches up
            # The driver's own message, not SQLAlchemy's (which repeats the statement and its parameters).
            log.warning("expiry sweep failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
            self._schedule(self._interval)
            return
        finally:
            self._running.discard(task)
        if housekeeping:
            self._housekept = time.monotonic()
        self._schedule(self.delay_after(result.next_due, self._deps.clock.now()))
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
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cut off by the shutdown after its grace (wait_stopped): one line, not APScheduler's traceback.
            log.warning("%s was cancelled at shutdown", getattr(job, "__qualname__", job))
        finally:
            self._running.discard(task)

    def stop_starting(self) -> None:
        """Shutdown has begun (SIGTERM): start no more jobs, while in-flight HTTP requests drain. A round started
        now would compete with them for the database (on SQLite its one connection) and make the shutdown wait for
        it afterwards; the next process's first sweep catches up."""
        self._stopping = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout`` seconds) for the jobs under way to finish, then cancel the ones still running and
        wait for them as long again. Call with the scheduler paused."""
        # APScheduler submits a coroutine job as a task (``AsyncIOExecutor``); one submitted just before the pause
        # has not run its first step, so it is not in ``_running`` yet, and ``shutdown()`` would then cancel it
        # in the middle of its first statement, unawaited, with the database closing under it (a test's teardown
        # hung at loop close for 300 s on SQLite). One pass of the loop lets it start and be counted.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running and (remaining := deadline - loop.time()) > 0:
            # Again until none is left: a job may have started while the others were awaited.
            await asyncio.wait(list(self._running), timeout=remaining)
        hanging = [task for task in self._running if not task.done()]
        for task in hanging:
            task.cancel()
        if hanging:  # bounded after the cancel too: a job that outlives it must not hold the shutdown for ever
            await asyncio.wait(hanging, timeout=timeout)


class SweepWaking:
    """The domain's Observer (``bot.domain.ports.Observer``) for the composition root: tells ``observer`` (the
    metrics) everything, and the sweeper of every grant issued, so that one expiring before the next sweep brings
    it forward."""

    def __init__(self, observer, sweeper: Sweeper) -> None:
        self._observer = observer
        self._sweeper = sweeper

    def request_decided(self, request, by: str) -> None:
        self._observer.request_decided(request, by)

    def grant_issued(self, grant) -> None:
        self._observer.grant_issued(grant)
        self._sweeper.grant_issued(grant.expires_at)

    def grant_revoked(self, grant) -> None:
        self._observer.grant_revoked(grant)


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
        self._started_at = deps.clock.now()

    async def run(self) -> None:
        due = self._schedule.latest(self._deps.clock.now())
        if due is None or due == self._handled:
            return
        try:
            queued = await usecases.queue_due_summary(self._deps, self._schedule, self._started_at)
        except Exception as exc:  # the database may be away; the next run tries again
            log.warning("daily summary failed: %s: %s", type(exc).__name__, getattr(exc, "orig", None) or exc)
            return
        self._handled = due
        if queued:
            log.info("daily summary for %s queued", queued.isoformat())


async def run_scheduler(
    deps: usecases.Deps, metrics: Metrics, interval_seconds: float, summary: CronSchedule | None = None,
    revocation_retry_seconds: tuple[float, ...] = RETRY_SECONDS, reconcile_seconds: float | None = None,
    sweeper: Sweeper | None = None,
) -> AsyncIterator[AsyncIOScheduler]:
    """Start the scheduler inside the running loop; yields it; shuts it down (for aiohttp ``cleanup_ctx``).

    Jobs: the sweep (scheduled by what falls due next, at least every ``interval_seconds``: ``Sweeper``), the
    credential revocation rounds every ``interval_seconds``, reconciliation of providers'
    accounts at start and every ``reconcile_seconds`` (None: never), the daily summary when ``summary`` is set."""
    sweeper = sweeper or Sweeper(deps, metrics, interval_seconds)
    scheduler = AsyncIOScheduler(timezone=UTC)
    sweeper.attach(scheduler)
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
        sweeper.stop_starting()  # done already when the shutdown began with the app's on_shutdown
        await sweeper.wait_stopped()
        scheduler.shutdown(wait=False)
