"""Use case: a resource server revokes a token it was given (RFC 7009 §2.1)."""

from __future__ import annotations

from bot.domain.usecases.deps import Deps
from bot.domain.usecases.revoke import revocation_events


async def revoke_token(deps: Deps, token: str, by: str) -> bool:
    """End the grant behind ``token`` if it is one of ours and still active; True if this call ended it.

    An unknown, foreign or already ended token is not an error (RFC 7009 §2.2: the server answers 200 anyway).
    """
    claims = deps.tokens.verify(token)
    if claims is None or not isinstance(claims.get("jti"), str):
        return False
    grant = await deps.store.grant_by_jti(claims["jti"])
    if grant is None or grant.token_hash != deps.tokens.token_hash(token):
        return False
    ended = await deps.store.revoke_grant(grant.id, by, deps.clock.now(), revocation_events(grant))
    if ended:
        deps.changes.notify(grant.request_id)
    return ended
