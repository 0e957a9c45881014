"""Use cases: read-only views for people in Slack (``/access list``, ``pending``, ``show``, ``explain``).

Nothing secret is shown (no tokens, no hashes): the same facts as the approval cards in the channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.credentials import CredentialState
from bot.domain.errors import NotFound
from bot.domain.models import AccessRequest, Grant
from bot.domain.usecases.deps import Deps


@dataclass(frozen=True)
class Found:
    """A request and its grant (None until approved); for ``show``, the grant's real credentials (never a secret)
    and how their revocation stands."""

    request: AccessRequest
    grant: Grant | None
    credentials: tuple[CredentialState, ...] = ()


@dataclass(frozen=True)
class ActiveGrants:
    """Active grants with their requests, soonest to expire first; ``total`` counts all of them."""

    items: list[Found]
    total: int


@dataclass(frozen=True)
class PendingRequests:
    items: list[AccessRequest]
    total: int


async def find_access(deps: Deps, some_id: str) -> Found:
    """The request named by ``some_id``, which is a request id (as on the cards) or a grant id, with its grant and
    the grant's credentials.

    Raises :class:`NotFound` when it names neither.
    """
    request = await deps.store.get_request(some_id)
    grant = await deps.store.grant_for_request(request.id) if request is not None else None
    if request is None:
        grant = await deps.store.get_grant(some_id)
        request = await deps.store.get_request(grant.request_id) if grant is not None else None
    if request is None:
        raise NotFound(f"There is no access request or grant {some_id}.")
    credentials = tuple(await deps.store.credential_states(grant.id)) if grant is not None else ()
    return Found(request, grant, credentials)


async def list_active_grants(deps: Deps, limit: int) -> ActiveGrants:
    """At most ``limit`` active grants (soonest to expire first) and how many are active in all."""
    now = deps.clock.now()
    grants = await deps.store.active_grants(now, limit=limit)
    requests = await deps.store.requests_by_id([g.request_id for g in grants])
    items = [Found(requests[g.request_id], g) for g in grants if g.request_id in requests]
    return ActiveGrants(items, await deps.store.count_active_grants(now))


async def list_pending(deps: Deps, limit: int) -> PendingRequests:
    """At most ``limit`` pending requests (oldest first) and how many are pending in all."""
    items, total = await deps.store.pending_requests(deps.clock.now(), limit)
    return PendingRequests(items, total)
