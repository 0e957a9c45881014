"""Use case: the holder of a grant ends it early (``POST /v1/grants/{id}/revoke``)."""

from __future__ import annotations

from bot.domain.errors import NotFound
from bot.domain.models import Caller, EventKind, Grant, OutboxEvent
from bot.domain.usecases.deps import Deps


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
