"""Use case: the sweep ends what is due — grants past ``expires_at``, pending requests past their deadline."""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.usecases.deps import Deps

BATCH = 500


@dataclass(frozen=True)
class SweepResult:
    grants_expired: int
    requests_expired: int


async def expire_due(deps: Deps) -> SweepResult:
    """Expire everything due at the clock's now, in batches of 500, each transition once (conditional UPDATEs).

    The database decides what is due, so a sweep after downtime catches up on everything missed.
    """
    now = deps.clock.now()
    grants = requests = 0
    while batch := await deps.store.expire_due_grants(now, BATCH):
        grants += len(batch)
        for grant in batch:
            deps.changes.notify(grant.request_id)
        if len(batch) < BATCH:
            break
    while batch := await deps.store.expire_pending_requests(now, BATCH):
        requests += len(batch)
        for request in batch:
            deps.changes.notify(request.id)
        if len(batch) < BATCH:
            break
    return SweepResult(grants, requests)
