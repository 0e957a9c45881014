"""Use case: a resource server asks whether a token is active (RFC 7662 §2.2)."""

from __future__ import annotations

from bot.domain.models import GrantStatus
from bot.domain.usecases.deps import Deps

_CLAIMS = ("sub", "scope", "aud", "exp", "iat", "nbf", "jti", "client_id", "iss", "grant_id", "environment")


async def introspect(deps: Deps, token: str) -> dict[str, object]:
    """``{"active": true, <claims>, "token_type": "Bearer"}`` for a live token, else exactly ``{"active": false}``.

    Live means: our signature, the token's own ``exp`` not reached (it is whole seconds, so up to a second before
    the grant's ``expires_at``: the answer never calls active a token whose ``exp`` it shows as past), a grant with
    that ``jti`` that is still active and not past ``expires_at`` at the clock's now, and the token's hash equal to
    the one recorded when it was handed over. The grant may come from
    a read up to half a second old (``Store.recent_grant_by_jti``), so a revocation made on another replica is seen
    within that; one made on this replica at once.
    """
    claims = deps.tokens.verify(token)
    if claims is None or not isinstance(claims.get("jti"), str):
        return {"active": False}
    now = deps.clock.now()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= now.timestamp():
        return {"active": False}
    grant = await deps.store.recent_grant_by_jti(claims["jti"], now)
    if (
        grant is None
        or grant.status is not GrantStatus.ACTIVE
        or grant.expires_at <= now
        or grant.token_hash != deps.tokens.token_hash(token)
    ):
        return {"active": False}
    return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in _CLAIMS if k in claims}}
