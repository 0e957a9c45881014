"""Use cases: read-only views for people in Slack (``/access list``, ``pending``, ``show``, ``explain``).

Nothing secret is shown (no tokens, no hashes): the same facts as the approval cards in the channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.credentials import CredentialState
from bot.domain.errors import InvalidRequest, NotFound
from bot.domain.ids import id_prefix, is_uuid
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
    """The request named by ``some_id``, which is a request id (as on the cards) or a grant id, or a unique prefix
    of either (at least 8 characters, as lists print them), with its grant and the grant's credentials.

    Raises :class:`NotFound` when it names neither, and :class:`InvalidRequest` when a prefix names several.
    """
    if not is_uuid(some_id):
        some_id = await _by_prefix(deps, some_id)
    request = await deps.store.get_request(some_id)
    grant = await deps.store.grant_for_request(request.id) if request is not None else None
    if request is None:
        grant = await deps.store.get_grant(some_id)
        request = await deps.store.get_request(grant.request_id) if grant is not None else None
    if request is None:
        raise NotFound(f"There is no access request or grant {some_id}.")
    credentials = tuple(await deps.store.credential_states(grant.id)) if grant is not None else ()
    return Found(request, grant, credentials)


async def _by_prefix(deps: Deps, text: str) -> str:
    """The one request or grant id starting with ``text``; a grant's and its own request's ids count as one."""
    prefix = id_prefix(text)
    if prefix is None:
        raise InvalidRequest(f"{text[:80]} is not a request or grant id; ids look like 3f2a6c1e (the first 8 "
                             "characters, as /access list shows them) or 3f2a6c1e-8b0d-4c7e-9a51-2d4e6f8a0b1c.")
    requests = await deps.store.ids_starting_with(prefix, grants=False, limit=2)
    grants = await deps.store.ids_starting_with(prefix, grants=True, limit=2)
    named = set(requests) | {await _request_of(deps, grant_id) for grant_id in grants}
    if not named:
        raise NotFound(f"There is no access request or grant whose id starts with {prefix}.")
    if len(named) > 1:
        raise InvalidRequest(f"Several requests or grants have ids starting with {prefix}; type more of the id.")
    return named.pop()


async def _request_of(deps: Deps, grant_id: str) -> str:
    grant = await deps.store.get_grant(grant_id)
    return grant.request_id if grant is not None else grant_id


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
