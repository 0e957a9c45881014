"""Use case: the holder of a grant lost its token (a dropped response) and asks for a new one
(``POST /v1/grants/{id}/reissue``, DESIGN.md HTTP contract).

The token is handed over once and never stored, so a lost answer would leave a live grant nobody holds. Re-issuing
signs a new token for the same grant (same scopes, audience, environment, ``iat`` and ``exp``) under a new
``jti``; the grant then recognises only the new token, so the lost one is inactive at introspection and cannot end
the grant through ``/oauth/revoke`` either.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from bot.domain.errors import GrantNotActive, NotFound, NotHandedOver
from bot.domain.models import Caller, Grant, GrantStatus
from bot.domain.usecases.deps import Deps


@dataclass(frozen=True)
class ReissueView:
    """What the holder gets back: the grant as it now is and its new token, handed over in this answer only.

    Fresh credential secrets for the same grant (DESIGN.md "Credentials") belong here too, once grants carry them.
    """

    grant: Grant
    access_token: str


def _refusal(grant: Grant, now) -> GrantNotActive | NotHandedOver | None:
    """Why ``grant``'s token cannot be re-issued at ``now``, or None when it can."""
    if grant.status is GrantStatus.REVOKED:
        return GrantNotActive(f"Grant {grant.id} was revoked; it gets no new token. Ask for access again.", "revoked")
    if grant.status is GrantStatus.EXPIRED or grant.expires_at <= now:
        return GrantNotActive(f"Grant {grant.id} has expired; it gets no new token. Ask for access again.", "expired")
    if grant.delivered_at is None:
        return NotHandedOver(
            f"The token of grant {grant.id} has not been handed over yet: read the request with "
            f"GET /v1/access-requests/{grant.request_id} to get it."
        )
    return None


async def reissue(deps: Deps, caller: Caller, grant_id: str) -> ReissueView:
    """Sign a new token for ``caller``'s active grant ``grant_id`` and make it the only one the grant accepts.

    The new token differs from the old one only in ``jti``; ``exp`` stays the grant's ``expires_at``. Audited as
    ``token.reissued`` (old and new ``jti``, never the token). Two concurrent re-issues each get a token; only
    the one committed last stays active (the store serialises them).

    Raises :class:`NotFound` (unknown grant, or another identity's: indistinguishable on purpose),
    :class:`GrantNotActive` (expired or revoked) and :class:`NotHandedOver` (approved, but its token was never
    collected: ``GET /v1/access-requests/{id}`` hands it over).
    """
    grant = await deps.store.get_grant(grant_id)
    if grant is None or grant.identity != caller.identity:
        raise NotFound(f"There is no grant {grant_id!r} for identity {caller.identity!r}.")
    now = deps.clock.now()
    if refusal := _refusal(grant, now):
        raise refusal
    renewed = replace(grant, jti=str(uuid.uuid4()))
    token = deps.tokens.mint(renewed)
    current = await deps.store.reissue_token(grant.id, renewed.jti, deps.tokens.token_hash(token), now)
    if current is None:  # ended (or expired) since it was read
        latest = await deps.store.get_grant(grant.id) or grant
        raise _refusal(latest, now) or GrantNotActive(f"Grant {grant.id} is no longer active.", latest.status.value)
    return ReissueView(current, token)
