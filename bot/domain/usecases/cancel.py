"""Use case: a caller withdraws its own pending access request (``POST /v1/access-requests/{id}/cancel``), e.g.
a pipeline that stopped waiting, so that nobody approves it after the job is gone."""

from __future__ import annotations

import logging

from bot.domain.errors import NotFound
from bot.domain.models import Caller, RequestStatus
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.read_request import RequestView, revocation_of

log = logging.getLogger(__name__)


async def cancel_request(deps: Deps, caller: Caller, request_id: str) -> RequestView:
    """Cancel the caller's request if it is still pending; return it as it now stands, never with a token.

    Idempotent: a request already cancelled, decided or expired is returned unchanged, so a caller that lost the
    race with an approver sees ``approved`` (and may collect or release the grant). The card is updated through
    the outbox and the cancellation audited (``request.cancelled``), both in the cancelling transaction. Raises
    :class:`NotFound` for an unknown id and for another identity's request (indistinguishable on purpose).
    """
    request = await deps.store.get_request(request_id)
    if request is None or request.identity != caller.identity:
        raise NotFound(f"There is no access request {request_id!r} for identity {caller.identity!r}.")
    if request.status is RequestStatus.PENDING and await deps.store.cancel_request(
            request_id, caller.identity, deps.clock.now()):
        deps.changes.notify(request_id)  # wakes long polls and the outbox worker
        request = await deps.store.get_request(request_id) or request
        deps.observer.request_decided(request, "identity")
        log.info("access request %s cancelled by %s", request_id, caller.identity,
                 extra={"access_request": request_id, "identity": caller.identity})
    elif request.status is RequestStatus.PENDING:  # decided meanwhile
        request = await deps.store.get_request(request_id) or request
    grant = await deps.store.grant_for_request(request_id) if request.status is RequestStatus.APPROVED else None
    return RequestView(request, grant, revocation=await revocation_of(deps, grant) if grant else None)
