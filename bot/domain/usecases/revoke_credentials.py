"""Use case: remove the credentials of ended grants, for sure — the revocation worker's round.

Every way a grant ends (expiry, the holder's revoke, the card's Revoke, ``/access revoke``, ``revoke-all``,
``/oauth/revoke``) queues its accounts' revocations in the same transaction (``Store.revoke_grant`` /
``expire_due_grants``). A round leases the due ones (once across replicas), has the provider remove each account
and then check that nothing is left, and records the outcome once:

- verified: the check found nothing; the card's thread (or, for an auto-approved grant, the channel) hears what
  was done ("role … dropped, 2 sessions ended, 1 table reassigned to orders_owner");
- a failure: retried after the next of ``retry_seconds`` (first retries within a minute, about ten attempts over
  an hour), the error kept for ``/access show``, the App Home and the API's ``grant.revocation``;
- failed after the last retry (or at once for an account grantbot did not make): one alert in the channel naming
  the grant and the error, counted by the ``grantbot_revocations_failed`` gauge; ``grantbot credentials
  reconcile`` retries it by hand. A revocation is never retried silently forever (vault PR #11452).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain.credentials import ProviderSpec, RevocationJob
from bot.domain.errors import CredentialsRefused, CredentialsUnavailable
from bot.domain.models import EventKind, OutboxEvent
from bot.domain.usecases.deps import Deps

log = logging.getLogger(__name__)

# Seconds before each retry: 9 retries, 10 attempts in all, over about 54 minutes.
RETRY_SECONDS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0)
# A claimed revocation is another replica's to take over after this long (clock time) once its worker stops
# renewing it: the worker renews it while the provider works, however long that takes (its connect and statement
# limits, waiting for sessions to end), so this is how long a revocation a process died in the middle of (kill -9)
# waits before another process (or the restarted one, or `grantbot credentials reconcile`) takes it over.
LEASE_SECONDS = 30
# How often (real seconds) the worker looks whether a third of a lease has passed on the clock and renews it.
RENEW_CHECK_SECONDS = 1.0
BATCH = 20
CONCURRENCY = 8


@dataclass(frozen=True)
class RevocationRound:
    """What one round did: revocations verified, given back for a retry, failed for good, and ``lost``: claimed,
    but another worker held them by the time the outcome was to be recorded (it records its own)."""

    verified: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0

    @property
    def claimed(self) -> int:
        return self.verified + self.retried + self.failed + self.lost

    def __add__(self, other: RevocationRound) -> RevocationRound:
        return RevocationRound(self.verified + other.verified, self.retried + other.retried,
                               self.failed + other.failed, self.lost + other.lost)


def _outcome_event(job: RevocationJob, kind: EventKind, **payload) -> list[OutboxEvent]:
    # An orphan (no request) has no card: its alert goes to the default channel under a key of its own.
    request_id = job.request_id or f"orphan:{job.grant_id[:29]}"
    if kind is EventKind.CREDENTIALS_REVOKED and job.request_id is None:
        return []  # an orphan's removal is logged and audited; nobody asked for it in Slack
    return [OutboxEvent(kind, request_id, job.grant_id if job.request_id else None,
                        payload={"provider": job.provider, "username": job.username, "grant_id": job.grant_id,
                                 **payload})]


async def _revoke(deps: Deps, job: RevocationJob, retry_seconds: tuple[float, ...]) -> str:
    error: str
    permanent = False
    try:
        if deps.credentials is None:
            raise CredentialsUnavailable("credentials cannot be removed by this grantbot (no providers wired in)")
        provider = deps.credentials.provider(ProviderSpec.model_validate(job.target))
        report = await provider.revoke(job.account)
        check = await provider.verify_revoked(job.account, report)
    except CredentialsRefused as exc:
        error, permanent = str(exc), True
    except CredentialsUnavailable as exc:
        error = exc.detail
    except Exception as exc:  # a provider's bug must not stop the other revocations; it is retried and shown
        log.exception("revoking %s account %s failed unexpectedly", job.provider, job.username)
        error = f"unexpected {type(exc).__name__}"
    else:
        now = deps.clock.now()
        if check.gone:
            detail = {"summary": report.summary, "report": report.facts,
                      "check": {**check.facts, "checked_at": now.isoformat()}}
            events = _outcome_event(job, EventKind.CREDENTIALS_REVOKED, summary=report.summary, checked=check.checked)
            if not await deps.store.finish_revocation(job, now, detail, events):
                return _lost(job)
            log.info("revocation verified: %s account %s of grant %s: %s", job.provider, job.username,
                     job.grant_id, report.summary)
            if job.request_id:
                deps.changes.notify(job.request_id)
            return "verified"
        error = f"after revoking, the check found {check.problem}"
    now = deps.clock.now()
    if permanent or job.attempts > len(retry_seconds):
        events = _outcome_event(job, EventKind.CREDENTIALS_FAILED, error=error, attempts=job.attempts)
        if not await deps.store.fail_revocation(job, now, error, events):
            return _lost(job)
        log.error("revocation FAILED for good after %d attempt(s): %s account %s of grant %s: %s",
                  job.attempts, job.provider, job.username, job.grant_id, error)
        deps.changes.notify(job.request_id or job.grant_id)
        return "failed"
    delay = retry_seconds[job.attempts - 1]
    if not await deps.store.retry_revocation(job, now + timedelta(seconds=delay), error):
        return _lost(job)
    log.warning("revocation of %s account %s (grant %s) failed, attempt %d; retrying in %.0f s: %s",
                job.provider, job.username, job.grant_id, job.attempts, delay, error)
    return "retried"


def _lost(job: RevocationJob) -> str:
    log.info("revocation of %s account %s (grant %s) is another worker's now (its lease ran out); its outcome "
             "is that worker's to record", job.provider, job.username, job.grant_id)
    return "lost"


async def _keep_leases(deps: Deps, unfinished: dict[int, RevocationJob], lease_seconds: float,
                       renewed_at: datetime) -> None:
    """While the round works, renew the leases of its unfinished revocations whenever a third of a lease has
    passed on the clock since the last renewal, so that no other process takes over a revocation still under way
    (it would only be fenced off, but the provider would be asked twice). A renewal the database refuses is tried
    again at the next look (said once until one succeeds); meanwhile the lease may run out, and the outcome
    stays fenced by the claim count."""
    failing = False
    while True:
        await asyncio.sleep(RENEW_CHECK_SECONDS)
        now = deps.clock.now()
        if not unfinished or (now - renewed_at).total_seconds() < lease_seconds / 3:
            continue
        try:
            await deps.store.renew_revocations(list(unfinished.values()), now + timedelta(seconds=lease_seconds))
        except Exception as exc:  # the database away: the next look tries again
            log.log(logging.DEBUG if failing else logging.WARNING,
                    "could not renew the lease of %d revocation(s) under way: %s: %s", len(unfinished),
                    type(exc).__name__, getattr(exc, "orig", None) or exc)
            failing = True
        else:
            renewed_at, failing = now, False


async def revoke_due_credentials(deps: Deps, retry_seconds: tuple[float, ...] = RETRY_SECONDS,
                                 lease_seconds: float = LEASE_SECONDS) -> RevocationRound:
    """One round: lease up to ``BATCH`` due revocations (``lease_seconds``, renewed while they are worked on) and
    work on them, ``CONCURRENCY`` at a time. Attempt ``n`` failing is retried after ``retry_seconds[n - 1]``; the
    attempt after the last of them failing marks the revocation failed. Raises what the store raises (its
    database away: the next round tries again)."""
    claimed_at = deps.clock.now()
    jobs = await deps.store.claim_revocations(claimed_at, lease_seconds, BATCH)
    if not jobs:
        return RevocationRound()
    slots = asyncio.Semaphore(CONCURRENCY)
    unfinished = {job.id: job for job in jobs}

    async def one(job: RevocationJob) -> str:
        async with slots:
            outcome = await _revoke(deps, job, retry_seconds)
        # (Not when cut off or when the store failed: a cut-off one is given back below, the other's lease runs out.)
        unfinished.pop(job.id, None)
        return outcome

    keeper = asyncio.create_task(_keep_leases(deps, unfinished, lease_seconds, claimed_at))
    try:
        outcomes = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    except asyncio.CancelledError:
        # Cut off (a shutdown past its grace, Ctrl-C): give the unfinished ones back at once rather than leave
        # them held for a lease. Their attempt is given back with the lease (it was cut off, not failed); the
        # claim count, recorded with the outcome, still counts every time a provider was asked.
        with contextlib.suppress(Exception):
            await deps.store.release_revocations(list(unfinished.values()))
        raise
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    for outcome in outcomes:
        if isinstance(outcome, BaseException):  # the store failed (its database away): each lease runs out
            raise outcome
    return RevocationRound(outcomes.count("verified"), outcomes.count("retried"), outcomes.count("failed"),
                           outcomes.count("lost"))
