"""Use cases: a grant ends early — its holder revokes it (``POST /v1/grants/{id}/revoke``) or an approver does
(the card's Revoke button)."""

from __future__ import annotations

from bot.domain.errors import AlreadyDecided, NotAnApprover, NotFound
from bot.domain.models import Caller, EventKind, Grant, GrantStatus, OutboxEvent
from bot.domain.permissions import may_revoke
from bot.domain.refusals import REVOKE_REFUSED
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.refusals import record_refusal


def revocation_events(grant: Grant) -> list[OutboxEvent]:
    """Tell the channel (thread under the card, if any) and re-render the card."""
    return [
        OutboxEvent(EventKind.GRANT_REVOKED, grant.request_id, grant.id),
        OutboxEvent(EventKind.CARD_UPDATE, grant.request_id),
    ]


async def revoke_own_grant(deps: Deps, caller: Caller, grant_id: str) -> Grant:
    """Revoke ``grant_id`` if it is active; idempotent (an ended grant is returned as it is).

    Raises :class:`NotFound` for an unknown grant or another identity's grant.
    """
    grant = await deps.store.get_grant(grant_id)
    if grant is None or grant.identity != caller.identity:
        raise NotFound(f"There is no grant {grant_id!r} for identity {caller.identity!r}.")
    if await deps.store.revoke_grant(grant_id, caller.identity, deps.clock.now(), revocation_events(grant)):
        deps.changes.notify(grant.request_id)
    return await deps.store.get_grant(grant_id) or grant


async def revoke_as_approver(deps: Deps, request_id: str, user: str) -> Grant:
    """An approver of the request, or a policy admin, ends its grant early (the Revoke button on a card).

    ``user`` is a Slack user ID; the grant's ``ended_by`` and the audit's actor are that ID. Whoever
    :func:`~bot.domain.permissions.may_revoke` allows (an approver or a policy admin) may revoke, including the
    person who triggered the pipeline (ending access is always safe). Raises :class:`NotFound` (no such request, or it has no grant),
    :class:`NotAnApprover`, :class:`AlreadyDecided` (the grant already expired or was revoked: nothing changes)
    and ``ApproverDirectoryUnavailable``. A refusal (not allowed, already ended) is audited as ``revoke.refused``.
    """
    try:
        grant = await _revoke_as_approver(deps, request_id, user)
    except (NotAnApprover, AlreadyDecided) as exc:
        await record_refusal(deps, REVOKE_REFUSED, user, exc, request_id)
        raise
    deps.changes.notify(request_id)
    return await deps.store.get_grant(grant.id) or grant


async def _revoke_as_approver(deps: Deps, request_id: str, user: str) -> Grant:
    request = await deps.store.get_request(request_id)
    grant = await deps.store.grant_for_request(request_id) if request is not None else None
    if request is None or grant is None:
        raise NotFound(f"There is no grant for access request {request_id!r}.")
    if grant.status is not GrantStatus.ACTIVE:
        raise _ended(grant)
    if not await may_revoke(deps.policy, deps.directory, request, user):  # the same rule as /access revoke
        raise NotAnApprover(
            f"Only the approvers of rule {request.rule!r} or grantbot admins can revoke this grant; you are "
            "neither."
        )
    if not await deps.store.revoke_grant(grant.id, user, deps.clock.now(), revocation_events(grant)):
        raise _ended(await deps.store.get_grant(grant.id) or grant)  # lost a race with expiry or another click
    return grant


def _ended(grant: Grant) -> AlreadyDecided:
    if grant.status is GrantStatus.EXPIRED:
        return AlreadyDecided("This grant already expired; there is nothing to revoke.", "expired", "expiry")
    return AlreadyDecided(f"This grant was already revoked by {grant.ended_by or 'someone'}.", "revoked",
                          grant.ended_by)
