"""Use cases: an approver approves or denies a pending access request (from a Slack card click).

Who may decide and how many must agree: ``bot.domain.approvals``. Each person's verdict is recorded once; the
request is resolved by the verdict that reaches the quorum (or, for denials, per ``deny_on_first_denial``).
"""

from __future__ import annotations

import logging
from functools import partial

from bot.domain.approvals import eligible_count, is_approver, resolution, waiting_for
from bot.domain.errors import (
    AlreadyDecided,
    AlreadyVoted,
    CannotApproveOwnRequest,
    CredentialsUnavailable,
    InvalidChanges,
    InvalidRequest,
    NotAnApprover,
    NotFound,
)
from bot.domain.credentials import Account
from bot.domain.models import (
    AccessRequest, EventKind, Grant, OutboxEvent, RequestStatus, Verdict, Vote, VoteOutcome,
)
from bot.domain.refusals import APPROVAL_REFUSED
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.issue_credentials import accounts_for, create_credentials, discard_credentials, may_resolve
from bot.domain.usecases.refusals import record_refusal
from bot.domain.usecases.request_access import new_grant

log = logging.getLogger(__name__)


async def may_decide(deps: Deps, request_id: str, approver: str) -> AccessRequest:
    """The pending request ``approver`` may decide now, or the error a verdict would raise (no verdict is
    recorded; a refusal is audited as ``approval.refused``).

    For opening a modal (deny reason, approve with changes) only for someone whose submission could count;
    the submission checks again. Raises :class:`NotFound`, :class:`CannotApproveOwnRequest`,
    :class:`AlreadyDecided`, :class:`NotAnApprover`, ``ApproverDirectoryUnavailable``.
    """
    try:
        return await _may_decide(deps, request_id, approver)
    except (NotAnApprover, AlreadyDecided) as exc:  # CannotApproveOwnRequest is a NotAnApprover
        await record_refusal(deps, APPROVAL_REFUSED, approver, exc, request_id)
        raise


async def _may_decide(deps: Deps, request_id: str, approver: str) -> AccessRequest:
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
    if request.status is not RequestStatus.PENDING or (
        request.expires_at is not None and request.expires_at <= deps.clock.now()
    ):
        raise _already(request)
    if not await is_approver(deps.directory, request, approver):
        raise NotAnApprover(
            f"Only the approvers of rule {request.rule!r} can decide this request; you are not one of them."
        )
    return request


def check_changes(request: AccessRequest, scopes: tuple[str, ...], ttl_seconds: int) -> None:
    """Refuse an approval with changes that is not a narrowing of ``request``: raises :class:`InvalidChanges`
    (``field`` ``"ttl"``: not 1 s to the asked TTL; ``"scopes"``: empty, or a scope that was not asked for) and
    :class:`InvalidRequest` when the request needs several approvals (changes are for one-approver requests:
    with N-of-M, whose narrowing would win is a question nobody asked to answer yet)."""
    if request.min_approvals > 1:
        raise InvalidRequest(
            f"This request needs {request.min_approvals} approvals; it can only be approved as asked or denied."
        )
    if not 0 < ttl_seconds <= request.ttl_seconds:
        raise InvalidChanges("ttl", f"The TTL must be more than 0 and at most the {request.ttl_seconds} s asked for.")
    if not scopes:
        raise InvalidChanges("scopes", "Keep at least one scope (or deny the request).")
    if not_asked := [s for s in scopes if s not in request.scopes]:
        raise InvalidChanges("scopes", f"Only scopes the pipeline asked for can be granted, not {not_asked[0]!r}.")


async def _decide(deps: Deps, request_id: str, approver: str, verdict: Verdict, *, reason: str | None = None,
                  scopes: tuple[str, ...] | None = None, ttl_seconds: int | None = None) -> AccessRequest:
    request = await may_decide(deps, request_id, approver)
    details = None
    if scopes is not None or ttl_seconds is not None:
        scopes = tuple(dict.fromkeys(scopes if scopes is not None else request.scopes))
        ttl_seconds = ttl_seconds if ttl_seconds is not None else request.ttl_seconds
        check_changes(request, scopes, ttl_seconds)
        if scopes != request.scopes or ttl_seconds != request.ttl_seconds:
            details = {"changes": {"scopes": list(scopes), "ttl_seconds": ttl_seconds}}
    now = deps.clock.now()
    grant = (  # inserted only if this vote approves
        new_grant(request, now, scopes, ttl_seconds) if verdict is Verdict.APPROVE else None
    )
    eligible = (
        await eligible_count(deps.directory, request)
        if verdict is Verdict.DENY and not request.deny_on_first_denial
        else None
    )
    accounts, made = await _make_credentials(deps, request, approver, grant) if grant is not None else ((), ())
    try:
        vote = await deps.store.decide(
            request_id, approver, verdict, now, partial(resolution, request, eligible), grant,
            [OutboxEvent(EventKind.CARD_UPDATE, request_id)], reason=reason, details=details,
            resolved_events=[OutboxEvent(EventKind.REQUEST_DECIDED, request_id)], accounts=accounts,
        )
    except BaseException:
        await discard_credentials(deps, made)
        raise
    if vote.outcome is not VoteOutcome.RESOLVED:
        await discard_credentials(deps, made)  # this vote issued no grant: nothing may stay behind
    current = await deps.store.get_request(request_id) or request
    if vote.outcome in (VoteOutcome.NOT_PENDING, VoteOutcome.REPEATED):
        refusal = _already(current) if vote.outcome is VoteOutcome.NOT_PENDING else _repeated(current, vote)
        await record_refusal(deps, APPROVAL_REFUSED, approver, refusal, request_id)
        raise refusal
    deps.changes.notify(request_id)
    if vote.outcome is VoteOutcome.RESOLVED:
        deps.observer.request_decided(current, "people")
        if current.status is RequestStatus.APPROVED and grant is not None:
            deps.observer.grant_issued(grant)
    outcome = current.status.value if vote.outcome is VoteOutcome.RESOLVED else f"{verdict.value} counted, still pending"
    log.info("access request %s: %s by %s (%d approval(s), %d denial(s))", request_id, outcome, approver,
             vote.tally.approvals, vote.tally.denials,
             extra={"access_request": request_id, "approver": approver, "verdict": verdict.value,
                    "status": current.status.value})
    return current


async def _make_credentials(deps: Deps, request: AccessRequest, approver: str,
                            grant: Grant) -> tuple[tuple[Account, ...], tuple[Account, ...]]:
    """The accounts of the grant this approval would issue, and those made now (without secrets): all of them when
    it may resolve the request, so that a provider that is down or lacks a right shows now: the approval is not
    recorded, the approver is told, and the card's thread says why. (An approval that resolves it unforeseen, in a
    race, records the accounts anyway; the hand-over makes them.)"""
    try:
        accounts = accounts_for(deps, request, grant)
        if accounts and await may_resolve(deps, request):
            await create_credentials(deps, accounts)
            return accounts, accounts
    except CredentialsUnavailable as exc:
        # The card's thread says so too; the log is where an operator looks for why a provider failed.
        log.warning("approval of access request %s by %s not recorded: %s", request.id, approver, exc.detail,
                    extra={"access_request": request.id, "approver": approver, "provider": exc.provider})
        await deps.store.note_credentials_unavailable(request.id, approver, exc.provider, exc.detail, deps.clock.now())
        deps.changes.notify(request.id)  # wakes the outbox worker
        raise CredentialsUnavailable(
            f"Your approval was not recorded: grantbot could not make this grant's credentials. {exc.detail} "
            "The request stays pending; approve again once it is fixed.", exc.provider) from None
    return accounts, ()


def _repeated(request: AccessRequest, vote: Vote) -> AlreadyVoted:
    said = "approved" if vote.earlier is Verdict.APPROVE else "denied"
    return AlreadyVoted(f"You already {said} this request; it is waiting for {waiting_for(request, vote.tally)}.")


def _already(request: AccessRequest) -> AlreadyDecided:
    if request.status is RequestStatus.PENDING:  # pending but past its deadline; the sweep will mark it
        return AlreadyDecided("This request timed out before it was decided.", "expired", "timeout")
    who = f" by {request.decided_by}" if request.decided_by not in (None, "policy", "timeout") else ""
    return AlreadyDecided(f"This request was already {request.status.value}{who}.", request.status.value,
                          request.decided_by)


async def approve(deps: Deps, request_id: str, approver: str, *, scopes: tuple[str, ...] | None = None,
                  ttl_seconds: int | None = None) -> AccessRequest:
    """Record an approval; the one that brings distinct approvals to ``min_approvals`` issues the grant (TTL
    counted from now) — exactly once, however many approvers click at the same time. Queues a card update, and a
    thread reply when it resolves the request.

    ``scopes`` / ``ttl_seconds`` (seconds): approve with changes, a narrower grant than asked (Slack "Approve with
    changes" modal); checked by :func:`check_changes`, which raises :class:`InvalidChanges` / :class:`InvalidRequest`.

    Raises :class:`NotFound`, :class:`CannotApproveOwnRequest` (the approver triggered the pipeline),
    :class:`NotAnApprover` (neither listed nor in an approver group), :class:`AlreadyVoted` (this person already
    gave a verdict; nothing changes), :class:`AlreadyDecided` (no longer pending: a replayed payload, a lost race
    or a timeout), :class:`~bot.domain.errors.ApproverDirectoryUnavailable` (group membership unknowable now) and
    :class:`CredentialsUnavailable` (the rule's credentials could not be made: the approval is not recorded, and a
    thread reply under the card says why).
    """
    return await _decide(deps, request_id, approver, Verdict.APPROVE, scopes=scopes, ttl_seconds=ttl_seconds)


async def deny(deps: Deps, request_id: str, approver: str, reason: str | None = None) -> AccessRequest:
    """Record a denial with the approver's ``reason`` (audited; the request's ``denial_reason`` when this denial
    decides it); it denies the request per ``deny_on_first_denial`` (``bot.domain.approvals``). Same errors as
    :func:`approve`."""
    return await _decide(deps, request_id, approver, Verdict.DENY, reason=reason)
