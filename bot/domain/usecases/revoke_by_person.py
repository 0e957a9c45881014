"""Use case: a person ends a grant early from Slack (``/access revoke <id> [reason]``).

Who may: ``bot.domain.permissions.may_revoke`` (an approver of the request's rule, or a policy admin). The
revocation goes through the same conditional ``Store.revoke_grant`` as every other one, so it happens once: the
``grant.revoked`` audit event (with who and why), a thread reply under the card and the card's update.
"""

from __future__ import annotations

from bot.domain.errors import GrantNotActive, NotAllowed, NotFound
from bot.domain.models import AccessRequest, EventKind, Grant, GrantStatus, OutboxEvent
from bot.domain.permissions import may_revoke
from bot.domain.refusals import REVOKE_REFUSED
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.look_up import find_access
from bot.domain.usecases.refusals import record_refusal

# Bounds what a reason adds to an audit row and an outbox payload (a Slack command's text is at most ~4,000).
MAX_REASON = 500


def person_revocation_events(grant: Grant, user: str, reason: str | None) -> list[OutboxEvent]:
    """The thread reply (naming the person and the reason) and the card's re-render."""
    payload = {"by_user": user, "reason": reason}
    return [
        OutboxEvent(EventKind.GRANT_REVOKED, grant.request_id, grant.id, payload=payload),
        OutboxEvent(EventKind.CARD_UPDATE, grant.request_id),
    ]


def not_active(grant: Grant, now) -> GrantNotActive | None:
    """Why ``grant`` can't be revoked any more at ``now``, or None while it is active."""
    if grant.status is GrantStatus.REVOKED:
        return GrantNotActive(f"Grant {grant.id} was already revoked; nothing changed.", "revoked")
    if grant.status is GrantStatus.EXPIRED or grant.expires_at <= now:
        return GrantNotActive(f"Grant {grant.id} has already expired; nothing changed.", "expired")
    return None


def clean_reason(reason: str | None) -> str | None:
    reason = (reason or "").strip()
    return reason[:MAX_REASON] or None


async def revoke_by_person(deps: Deps, some_id: str, user: str, reason: str | None = None) -> tuple[AccessRequest, Grant]:
    """Revoke the grant named by ``some_id`` (a grant id or its request id) on behalf of Slack user ``user``.

    Returns the request and the grant as revoked. Raises :class:`NotFound` (no such request or grant, or the
    request has no grant), :class:`NotAllowed` (neither an approver of the rule nor an admin; nothing changes),
    :class:`GrantNotActive` (already expired or revoked; nothing changes) and ``ApproverDirectoryUnavailable``.
    Refusals (NotAllowed, GrantNotActive) are audited as ``revoke.refused``.
    """
    found = await find_access(deps, some_id)
    request, grant = found.request, found.grant
    if grant is None:
        raise NotFound(f"Request {request.id} has no grant to revoke (it is {request.status.value}).")
    try:
        return request, await _revoke(deps, request, grant, user, reason)
    except (NotAllowed, GrantNotActive) as exc:
        await record_refusal(deps, REVOKE_REFUSED, user, exc, request.id)
        raise


async def _revoke(deps: Deps, request: AccessRequest, grant: Grant, user: str, reason: str | None) -> Grant:
    if not await may_revoke(deps.policy, deps.directory, request, user):
        rule = request.rule or "default"
        raise NotAllowed(
            f"Only approvers of rule {rule} or grantbot admins can revoke this grant; you are neither, "
            "so nothing changed."
        )
    now = deps.clock.now()
    if problem := not_active(grant, now):
        raise problem
    reason = clean_reason(reason)
    if not await deps.store.revoke_grant(grant.id, user, now, person_revocation_events(grant, user, reason),
                                         reason=reason, via="slack:/access revoke"):
        # Lost a race: it expired or someone else revoked it between our read and the conditional update.
        current = await deps.store.get_grant(grant.id) or grant
        raise not_active(current, now) or GrantNotActive(f"Grant {grant.id} is no longer active.", "revoked")
    deps.changes.notify(request.id)
    return await deps.store.get_grant(grant.id) or grant
