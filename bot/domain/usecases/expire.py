"""Use case: the sweep ends what is due — grants past ``expires_at``, pending requests past their deadline — and
reminds the approvers of pending requests whose ``remind_at`` has come; it also forgets stale replay records and
audits the counted repeats of refusals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.domain.usecases.deps import Deps

BATCH = 500
# Grants end set-based (one UPDATE … RETURNING per batch, bot.store.expiry), so a batch of 1,000 is still a
# transaction of milliseconds, and 10,000 expiries at once take ten of them.
GRANT_BATCH = 1000


@dataclass(frozen=True)
class SweepResult:
    grants_expired: int
    requests_expired: int
    reminders: int = 0
    next_due: datetime | None = None  # when the sweep next has something to do (None: nothing scheduled)


async def expire_due(deps: Deps, housekeeping: bool = True) -> SweepResult:
    """Expire everything due at the clock's now, in batches, each transition once (conditional UPDATEs), and say
    when the next thing falls due.

    The database decides what is due, so a sweep after downtime catches up on everything missed. ``housekeeping``:
    also delete stale replay records and close refusal windows (neither is due at a precise moment; the scheduler
    does it at most once per interval, not on every sweep).
    """
    now = deps.clock.now()
    grants = await _in_batches(deps, deps.store.expire_due_grants, now, lambda grant: grant.request_id,
                               batch=GRANT_BATCH)
    requests = await _in_batches(deps, deps.store.expire_pending_requests, now, lambda request: request.id,
                                 lambda request: deps.observer.request_decided(request, "timeout"))
    reminders = await _in_batches(deps, deps.store.remind_pending_requests, now, lambda request: request.id)
    if housekeeping:
        # Stale replay records refuse nothing (a new signature takes one over); deleting them keeps the table small.
        while await deps.store.forget_stale_signatures(now, BATCH * 10) == BATCH * 10:
            pass
        # Repeated refusals of minutes now over get their one audit event with the count (bot.domain.refusals).
        if deps.refusals is not None:
            while await deps.refusals.close_windows(now, BATCH) == BATCH:
                pass
    return SweepResult(grants, requests, reminders, await deps.store.next_due())


async def _in_batches(deps: Deps, expire, now, request_id_of, observe=None, batch: int = BATCH) -> int:
    done = 0
    while ended := await expire(now, batch):
        done += len(ended)
        for item in ended:
            deps.changes.notify(request_id_of(item))
            if observe is not None:
                observe(item)
        if len(ended) < batch:
            break
    return done
