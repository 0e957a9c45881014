"""Use case: a caller reads its access request, long-polling for the decision; the token is handed over once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bot.domain.credentials import Credential, Revocation
from bot.domain.errors import NotFound
from bot.domain.models import (
    AccessRequest, Caller, Decision, EventKind, Grant, GrantStatus, OutboxEvent, RequestStatus,
)
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.issue_credentials import hand_over_credentials

MAX_WAIT_SECONDS = 60
# Bounds how stale a long poll can be when the change happened on another replica (no in-process signal).
_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class RequestView:
    """A request as its caller sees it: the grant when approved, the token and the grant's real credentials only on
    the first hand-over, and, once the grant ended, how the removal of its credentials stands."""

    request: AccessRequest
    grant: Grant | None = None
    access_token: str | None = None
    replayed: bool = False  # the answer to an Idempotency-Key retry: the request was made by an earlier call
    credentials: tuple[Credential, ...] = ()
    revocation: Revocation | None = None


async def hand_over(deps: Deps, request: AccessRequest) -> RequestView:
    """Attach the grant and, if it was never handed over and is still active, a freshly signed token with the
    grant's credentials (their secrets set now: ``hand_over_credentials``).

    The token is signed from the grant's stored ``jti``, ``issued_at`` and ``expires_at``, so nothing secret is
    stored; the conditional ``mark_handed_over`` makes sure only one caller ever receives it. Raises
    ``CredentialsUnavailable`` when a provider cannot set the secrets: no token is handed over without them, and
    the next poll tries again.
    """
    if request.status is not RequestStatus.APPROVED:
        return RequestView(request)
    grant = await deps.store.grant_for_request(request.id)
    if grant is None:
        return RequestView(request)
    now = deps.clock.now()
    if grant.delivered_at is None and grant.status is GrantStatus.ACTIVE and grant.expires_at > now:
        credentials = await hand_over_credentials(deps, grant)
        if credentials is not None:
            token = deps.tokens.mint(grant)
            # People approved it: tell them, under the card, that the pipeline collected its token.
            events = ([OutboxEvent(EventKind.TOKEN_HANDED_OVER, request.id, grant.id)]
                      if request.decision is Decision.REQUIRE_APPROVAL else [])
            if await deps.store.mark_handed_over(grant.id, deps.tokens.token_hash(token), now, events):
                if events:
                    deps.changes.notify(request.id)  # wakes the outbox worker
                return RequestView(request, grant, token, credentials=credentials)
            if credentials:  # it ended meanwhile: its revocation waited for this lease
                await deps.store.release_hand_over(grant.id)
        grant = await deps.store.get_grant(grant.id) or grant
    return RequestView(request, grant, revocation=await revocation_of(deps, grant))


async def revocation_of(deps: Deps, grant: Grant) -> Revocation | None:
    """How the removal of an ended grant's credentials stands (None while it is active or when it has none)."""
    if grant.status is GrantStatus.ACTIVE:
        return None
    return Revocation.of(await deps.store.credential_states(grant.id))


async def own_request(deps: Deps, caller: Caller, request_id: str) -> AccessRequest:
    """The caller's access request ``request_id``; :class:`NotFound` for an unknown id and for another identity's
    request alike (which ids exist is not told)."""
    request = await deps.store.get_request(request_id)
    if request is None or request.identity != caller.identity:
        raise NotFound(f"There is no access request {request_id!r} for identity {caller.identity!r}.")
    return request


async def read_request(deps: Deps, caller: Caller, request_id: str, wait_seconds: float = 0) -> RequestView:
    """``GET /v1/access-requests/{id}?wait=N``: wait up to ``wait_seconds`` (capped at 60) while it is pending.

    Raises :class:`NotFound` for an unknown id and for another identity's request (indistinguishable on purpose).
    """
    request = await own_request(deps, caller, request_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(wait_seconds, 0), MAX_WAIT_SECONDS)
    while (
        request.status is RequestStatus.PENDING
        and not deps.changes.closing
        and (remaining := deadline - loop.time()) > 0
    ):
        await deps.changes.wait(request_id, min(remaining, _RECHECK_SECONDS))
        request = await deps.store.get_request(request_id) or request
    return await hand_over(deps, request)
