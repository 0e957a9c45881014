"""Use cases: an approver approves or denies a pending access request (from a Slack card click)."""

from __future__ import annotations

from bot.domain.errors import AlreadyDecided, NotAnApprover, NotFound
from bot.domain.models import AccessRequest, EventKind, OutboxEvent, RequestStatus, Verdict
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.request_access import new_grant


async def _decide(deps: Deps, request_id: str, approver: str, verdict: Verdict) -> AccessRequest:
    request = await deps.store.get_request(request_id)
    if request is None:
        raise NotFound(f"There is no access request {request_id!r}.")
    if approver not in request.approvers:
        raise NotAnApprover(
            f"Only the approvers of rule {request.rule!r} can decide this request; you are not one of them."
        )
    if request.status is not RequestStatus.PENDING:
        raise _already(request)
    now = deps.clock.now()
    grant = new_grant(request, now) if verdict is Verdict.APPROVE else None
    decided = await deps.store.decide(
        request_id, approver, verdict, now, grant, [OutboxEvent(EventKind.CARD_UPDATE, request_id)]
    )
    current = await deps.store.get_request(request_id) or request
    if not decided:
        raise _already(current)
    deps.changes.notify(request_id)
    return current


def _already(request: AccessRequest) -> AlreadyDecided:
    if request.status is RequestStatus.PENDING:  # pending but past its deadline; the sweep will mark it
        return AlreadyDecided("This request timed out before it was decided.", "expired", "timeout")
    who = f" by {request.decided_by}" if request.decided_by not in (None, "policy", "timeout") else ""
    return AlreadyDecided(f"This request was already {request.status.value}{who}.", request.status.value,
                          request.decided_by)


async def approve(deps: Deps, request_id: str, approver: str) -> AccessRequest:
    """Approve: issue the grant (TTL counted from now) and queue the card update, once.

    Raises :class:`NotFound`, :class:`NotAnApprover` (``approver`` is not listed for the rule) and
    :class:`AlreadyDecided` (no longer pending: a second click, a replayed payload or a lost race).
    """
    return await _decide(deps, request_id, approver, Verdict.APPROVE)


async def deny(deps: Deps, request_id: str, approver: str) -> AccessRequest:
    """Deny a pending request; same errors as :func:`approve`."""
    return await _decide(deps, request_id, approver, Verdict.DENY)
