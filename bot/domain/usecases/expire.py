"""Use case: the sweep ends what is due — grants past ``expires_at``, pending requests past their deadline — and
reminds the approvers of pending requests whose ``remind_at`` has come; it also forgets stale replay records and
audits the counted repeats of refusals."""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.usecases.deps import Deps

BATCH = 500


@dataclass(frozen=True)
class SweepResult:
    grants_expired: int
    requests_expired: int
    reminders: int = 0


async def expire_due(deps: Deps) -> SweepResult:
    """Expire everything due at the clock's now, in batches of 500, each transition once (conditional UPDATEs).

    The database decides what is due, so a sweep after downtime catches up on everything missed.
    """
    now = deps.clock.now()
    grants = await _in_batches(deps, deps.store.expire_due_grants, now, lambda grant: grant.request_id)
    requests = await _in_batches(deps, deps.store.expire_pending_requests, now, lambda request: request.id,
                                 lambda request: deps.observer.request_decided(request, "timeout"))
    reminders = await _in_batches(deps, deps.store.remind_pending_requests, now, lambda request: request.id)
    # Stale replay records refuse nothing (a new signature takes one over); deleting them keeps the table small.
    while await deps.store.forget_stale_signatures(now, BATCH * 10) == BATCH * 10:
        pass
    # Repeated refusals of minutes now over get their one audit event with the count (bot.domain.refusals).
    if deps.refusals is not None:
        while await deps.refusals.close_windows(now, BATCH) == BATCH:
            pass
    return SweepResult(grants, requests, reminders)


async def _in_batches(deps: Deps, expire, now, request_id_of, observe=None) -> int:
    done = 0
    while batch := await expire(now, BATCH):
        done += len(batch)
        for item in batch:
            deps.changes.notify(request_id_of(item))
            if observe is not None:
                observe(item)
        if len(batch) < BATCH:
            break
    return done
