"""Use case: a caller withdraws its own pending access request (``POST /v1/access-requests/{id}/cancel``), e.g.
a pipeline that stopped waiting, so that nobody approves it after the job is gone."""

from __future__ import annotations

import logging

from bot.domain.models import Caller, RequestStatus
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.read_request import RequestView, own_request, revocation_of

log = logging.getLogger(__name__)


async def cancel_request(deps: Deps, caller: Caller, request_id: str) -> RequestView:
    """Cancel the caller's request if it is still pending; return it as it now stands, never with a token.

    Idempotent: a request already cancelled, decided or expired is returned unchanged, so a caller that lost the
    race with an approver sees ``approved`` (and may collect or release the grant). The card is updated through
    the outbox and the cancellation audited (``request.cancelled``), both in the cancelling transaction. Raises
    :class:`NotFound` for an unknown id and for another identity's request (indistinguishable on purpose).
    """
    request = await own_request(deps, caller, request_id)
    if request.status is RequestStatus.PENDING:
        cancelled = await deps.store.cancel_request(request_id, caller.identity, deps.clock.now())
        request = await deps.store.get_request(request_id) or request  # cancelled now, or decided meanwhile
        if cancelled:
            deps.changes.notify(request_id)  # wakes long polls and the outbox worker
            deps.observer.request_decided(request, "identity")
            log.info("access request %s cancelled by %s", request_id, caller.identity,
                     extra={"access_request": request_id, "identity": caller.identity})
    grant = await deps.store.grant_for_request(request_id) if request.status is RequestStatus.APPROVED else None
    return RequestView(request, grant, revocation=await revocation_of(deps, grant) if grant else None)
