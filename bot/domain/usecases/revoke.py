"""Use cases: a grant ends early, by every path — its holder (``POST /v1/grants/{id}/revoke``), a resource server
(RFC 7009 ``/oauth/revoke``), a person in Slack (the card's Revoke button, ``/access revoke``) and an admin's
``/access revoke-all`` (``bot.domain.usecases.revoke_all``).

Every path ends the grant through :func:`end_grant`: one conditional update (so it happens once, however many
race), with its ``grant.revoked`` audit event, the thread reply and the card's update, and the revocation of its
credentials queued in the same transaction; then long polls wake, a log line says so and it is counted. People in
Slack are held to one rule whichever way they ask (``bot.domain.permissions.may_revoke``: an approver of the
request's rule, or a policy admin) and get the same refusals, audited as ``revoke.refused``.
"""

from __future__ import annotations

import logging

from bot.domain.errors import GrantNotActive, NotAllowed, NotFound
from bot.domain.models import AccessRequest, Caller, EventKind, Grant, GrantStatus, OutboxEvent
from bot.domain.permissions import may_revoke
from bot.domain.refusals import REVOKE_REFUSED
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.look_up import find_access
from bot.domain.usecases.refusals import record_refusal

log = logging.getLogger(__name__)

# Bounds what a reason adds to an audit row and an outbox payload (a Slack command's text is at most ~4,000).
MAX_REASON = 500


def revocation_events(grant: Grant, user: str | None = None, reason: str | None = None) -> list[OutboxEvent]:
    """Tell the channel (a thread reply under the card, if any; naming the Slack ``user`` and ``reason`` when a
    person revoked it) and re-render the card."""
    payload = {"by_user": user, "reason": reason} if user is not None else None
    return [
        OutboxEvent(EventKind.GRANT_REVOKED, grant.request_id, grant.id, payload=payload),
        OutboxEvent(EventKind.CARD_UPDATE, grant.request_id),
    ]


def clean_reason(reason: str | None) -> str | None:
    """A person's reason as it is audited and shown: trimmed, at most MAX_REASON characters, None when empty."""
    reason = (reason or "").strip()
    return reason[:MAX_REASON] or None


def not_active(grant: Grant, now) -> GrantNotActive | None:
    """Why ``grant`` can't be revoked any more at ``now`` (already revoked, or expired), or None while active."""
    if grant.status is GrantStatus.REVOKED:
        return GrantNotActive(f"Grant {grant.id} was already revoked; nothing changed.", "revoked", grant.ended_by)
    if grant.status is GrantStatus.EXPIRED or grant.expires_at <= now:
        return GrantNotActive(f"Grant {grant.id} has already expired; nothing changed.", "expired", "expiry")
    return None


async def end_grant(deps: Deps, grant: Grant, by: str, events: list[OutboxEvent], *, via: str, **audit) -> bool:
    """End the active ``grant`` now on behalf of ``by`` (an identity, a Slack user ID, ``client:<id>``); True if
    this call ended it, False if it had ended already (another path, or expiry, got there first). ``via`` names
    the path in the audit event and the log; ``audit`` adds to the event (e.g. ``reason``)."""
    if not await deps.store.revoke_grant(grant.id, by, deps.clock.now(), events, via=via, **audit):
        return False
    deps.changes.notify(grant.request_id)
    deps.observer.grant_revoked(grant)
    log.info("grant %s of %s revoked by %s via %s", grant.id, grant.identity, by, via,
             extra={"grant": grant.id, "access_request": grant.request_id, "by": by, "via": via})
    return True


async def revoke_own_grant(deps: Deps, caller: Caller, grant_id: str) -> Grant:
    """The holder ends ``grant_id``; idempotent (an ended grant is returned as it is).

    Raises :class:`NotFound` for an unknown grant or another identity's grant.
    """
    grant = await deps.store.get_grant(grant_id)
    if grant is None or grant.identity != caller.identity:
        raise NotFound(f"There is no grant {grant_id!r} for identity {caller.identity!r}.")
    await end_grant(deps, grant, caller.identity, revocation_events(grant), via="api:holder")
    return await deps.store.get_grant(grant_id) or grant


async def revoke_token(deps: Deps, token: str, by: str) -> bool:
    """A resource server revokes a token it was given (RFC 7009 §2.1): end the grant behind ``token`` if it is one
    of ours, the one the grant now accepts, and still active; True if this call ended it. An unknown, foreign,
    replaced (re-issued) or already ended token is not an error (§2.2: the server answers 200 anyway)."""
    claims = deps.tokens.verify(token)
    if claims is None or not isinstance(claims.get("jti"), str):
        return False
    grant = await deps.store.grant_by_jti(claims["jti"])
    if grant is None or grant.token_hash != deps.tokens.token_hash(token):
        return False
    return await end_grant(deps, grant, by, revocation_events(grant), via="oauth:revoke")


async def revoke_by_person(deps: Deps, some_id: str, user: str, reason: str | None = None, *,
                           via: str = "slack:/access revoke") -> tuple[AccessRequest, Grant]:
    """A person in Slack (``user``, a Slack user ID) ends the grant named by ``some_id`` (a grant id, its request
    id, or a unique prefix of either as printed) — from ``/access revoke`` or the card's Revoke button (``via``).

    Returns the request and the grant as revoked. Raises :class:`NotFound` (nothing by that id, or the request has
    no grant), :class:`NotAllowed` (neither an approver of the rule nor an admin; nothing changes),
    :class:`GrantNotActive` (already expired or revoked; nothing changes) and ``ApproverDirectoryUnavailable``.
    The refusals (NotAllowed, GrantNotActive) are audited as ``revoke.refused``.
    """
    found = await find_access(deps, some_id)
    request, grant = found.request, found.grant
    if grant is None:
        raise NotFound(f"Request {request.id} has no grant to revoke (it is {request.status.value}).")
    try:
        return request, await _revoke_by_person(deps, request, grant, user, clean_reason(reason), via)
    except (NotAllowed, GrantNotActive) as exc:
        await record_refusal(deps, REVOKE_REFUSED, user, exc, request.id)
        raise


async def _revoke_by_person(deps: Deps, request: AccessRequest, grant: Grant, user: str, reason: str | None,
                            via: str) -> Grant:
    if not await may_revoke(deps.policy, deps.directory, request, user):
        rule = request.rule or "default"
        raise NotAllowed(
            f"Only approvers of rule {rule} or grantbot admins can revoke this grant; you are neither, "
            "so nothing changed."
        )
    now = deps.clock.now()
    if problem := not_active(grant, now):
        raise problem
    if not await end_grant(deps, grant, user, revocation_events(grant, user, reason), via=via, reason=reason):
        # Lost a race: it expired or someone else revoked it between our read and the conditional update.
        current = await deps.store.get_grant(grant.id) or grant
        raise not_active(current, now) or GrantNotActive(f"Grant {grant.id} is no longer active.", "revoked")
    return await deps.store.get_grant(grant.id) or grant
