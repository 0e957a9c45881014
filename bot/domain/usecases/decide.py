"""Use cases: an approver approves or denies a pending access request (from a Slack card click).

Who may decide and how many must agree: ``bot.domain.approvals``. Each person's verdict is recorded once; the
request is resolved by the verdict that reaches the quorum (or, for denials, per ``deny_on_first_denial``).
"""

from __future__ import annotations

from functools import partial

from bot.domain.approvals import eligible_count, is_approver, resolution, waiting_for
from bot.domain.errors import AlreadyDecided, AlreadyVoted, CannotApproveOwnRequest, NotAnApprover, NotFound
from bot.domain.models import AccessRequest, EventKind, OutboxEvent, RequestStatus, Verdict, Vote, VoteOutcome
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.request_access import new_grant


async def _decide(deps: Deps, request_id: str, approver: str, verdict: Verdict) -> AccessRequest:
    request = await deps.store.get_request(request_id)
    if request is None:
        raise NotFound(f"There is no access request {request_id!r}.")
    if approver in request.excluded_approvers:
        who = f" (as {request.actor})" if request.actor else ""
        raise CannotApproveOwnRequest(
            f"You triggered this pipeline{who}, so you can't approve or deny its access request; "
            "another approver has to."
        )
    # Membership is checked only while pending: a click on a decided card needs no Slack lookup.
    if request.status is not RequestStatus.PENDING:
        raise _already(request)
    if not await is_approver(deps.directory, request, approver):
        raise NotAnApprover(
            f"Only the approvers of rule {request.rule!r} can decide this request; you are not one of them."
        )
    now = deps.clock.now()
    grant = new_grant(request, now) if verdict is Verdict.APPROVE else None  # inserted only if this vote approves
    eligible = (
        await eligible_count(deps.directory, request)
        if verdict is Verdict.DENY and not request.deny_on_first_denial
        else None
    )
    vote = await deps.store.decide(
        request_id, approver, verdict, now, partial(resolution, request, eligible), grant,
        [OutboxEvent(EventKind.CARD_UPDATE, request_id)],
    )
    current = await deps.store.get_request(request_id) or request
    if vote.outcome is VoteOutcome.NOT_PENDING:
        raise _already(current)
    if vote.outcome is VoteOutcome.REPEATED:
        raise _repeated(current, vote)
    deps.changes.notify(request_id)
    return current


def _repeated(request: AccessRequest, vote: Vote) -> AlreadyVoted:
    said = "approved" if vote.earlier is Verdict.APPROVE else "denied"
    return AlreadyVoted(f"You already {said} this request; it is waiting for {waiting_for(request, vote.tally)}.")


def _already(request: AccessRequest) -> AlreadyDecided:
    if request.status is RequestStatus.PENDING:  # pending but past its deadline; the sweep will mark it
        return AlreadyDecided("This request timed out before it was decided.", "expired", "timeout")
    who = f" by {request.decided_by}" if request.decided_by not in (None, "policy", "timeout") else ""
    return AlreadyDecided(f"This request was already {request.status.value}{who}.", request.status.value,
                          request.decided_by)


async def approve(deps: Deps, request_id: str, approver: str) -> AccessRequest:
    """Record an approval; the one that brings distinct approvals to ``min_approvals`` issues the grant (TTL
    counted from now) — exactly once, however many approvers click at the same time. Queues a card update.

    Raises :class:`NotFound`, :class:`CannotApproveOwnRequest` (the approver triggered the pipeline),
    :class:`NotAnApprover` (neither listed nor in an approver group), :class:`AlreadyVoted` (this person already
    gave a verdict; nothing changes), :class:`AlreadyDecided` (no longer pending: a replayed payload, a lost race
    or a timeout) and :class:`~bot.domain.errors.ApproverDirectoryUnavailable` (group membership unknowable now).
    """
    return await _decide(deps, request_id, approver, Verdict.APPROVE)


async def deny(deps: Deps, request_id: str, approver: str) -> AccessRequest:
    """Record a denial; it denies the request per ``deny_on_first_denial`` (``bot.domain.approvals``). Same
    errors as :func:`approve`."""
    return await _decide(deps, request_id, approver, Verdict.DENY)
