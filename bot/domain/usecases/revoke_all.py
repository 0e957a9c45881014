"""Use case: the incident kill switch (``/access revoke-all <identity glob> [reason]``).

Two steps, so nobody ends a hundred grants with a typo: :func:`preview_revoke_all` says which active grants match
(shown with a confirmation dialog); :func:`revoke_all` ends them when the person confirms. Only policy admins may
do either (checked at both steps). The confirmation carries the moment of the preview (``as_of``): the click ends
the matching grants issued up to then, and a second click of the same button ends nothing more (each grant's
conditional update happens once); grants issued after the preview need a new ``revoke-all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from bot.domain.errors import InvalidRequest, NotAllowed
from bot.domain.models import Grant
from bot.domain.permissions import is_admin
from bot.domain.refusals import REVOKE_REFUSED
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.refusals import record_refusal
from bot.domain.usecases.revoke import clean_reason, end_grant, revocation_events

MAX_GLOB = 200


@dataclass(frozen=True)
class RevokeAllPreview:
    """The active grants of identities matching ``glob`` at ``as_of`` (aware UTC), soonest to expire first."""

    glob: str
    grants: list[Grant]
    as_of: datetime


def check_glob(glob: str) -> str:
    """An identity glob (``fnmatch``, case-sensitive, as in the policy's ``match.identity``); raises InvalidRequest."""
    if not glob or len(glob) > MAX_GLOB or any(ch.isspace() or ord(ch) < 32 for ch in glob):
        raise InvalidRequest(f"An identity glob is one word of at most {MAX_GLOB} characters, e.g. deploy-* or github:repo:acme/*.")
    return glob


async def _require_admin(deps: Deps, user: str) -> None:
    if not await is_admin(deps.policy, deps.directory, user):
        refusal = NotAllowed("Only grantbot admins (the policy's admins:) can use revoke-all; nothing changed.")
        await record_refusal(deps, REVOKE_REFUSED, user, refusal)
        raise refusal


async def _matching(deps: Deps, glob: str, now: datetime, as_of: datetime) -> list[Grant]:
    identities = [i for i in await deps.store.active_identities(now) if fnmatchcase(i, glob)]
    if not identities:
        return []
    return await deps.store.active_grants(now, identities=identities, issued_at_or_before=as_of)


async def preview_revoke_all(deps: Deps, glob: str, user: str) -> RevokeAllPreview:
    """What ``revoke-all glob`` would end now. Raises :class:`NotAllowed` (not an admin), :class:`InvalidRequest`
    (bad glob) and ``ApproverDirectoryUnavailable``. Changes nothing."""
    check_glob(glob)
    await _require_admin(deps, user)
    now = deps.clock.now()
    return RevokeAllPreview(glob, await _matching(deps, glob, now, now), now)


async def revoke_all(deps: Deps, glob: str, user: str, reason: str | None, as_of: datetime) -> list[Grant]:
    """End every active grant of identities matching ``glob`` issued at or before ``as_of``; returns the grants
    this call ended (each with its ``grant.revoked`` audit event and thread reply). Idempotent: what another call
    already ended is not counted again. Same errors as :func:`preview_revoke_all`."""
    check_glob(glob)
    await _require_admin(deps, user)
    now = deps.clock.now()
    reason = clean_reason(reason)
    ended: list[Grant] = []
    # One transaction per grant: each ends with its own events, and a failure halfway leaves the rest active
    # (and still listed by a new preview) rather than half-written.
    for grant in await _matching(deps, glob, now, as_of):
        if await end_grant(deps, grant, user, revocation_events(grant, user, reason), via="slack:/access revoke-all",
                           reason=reason, identity_glob=glob):
            ended.append(grant)
    return ended
