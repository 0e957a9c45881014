"""Who is calling a ``/v1`` route: an OIDC bearer token when ``Authorization: Bearer`` is sent, else HMAC headers.

See ``bot.identity.hmac_auth`` and ``bot.identity.oidc`` for the two schemes (DESIGN.md "Caller authentication").
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.domain.errors import Unauthenticated
from bot.domain.models import Caller
from bot.identity.hmac_auth import HmacAuthenticator
from bot.identity.oidc import OidcAuthenticator


class CallerAuthenticator:
    """Picks the scheme from the request's headers and delegates to it."""

    def __init__(self, hmac: HmacAuthenticator, oidc: OidcAuthenticator) -> None:
        self.hmac = hmac
        self.oidc = oidc

    async def authenticate(
        self, headers: Mapping[str, str], method: str, path_qs: str, body: bytes, *, single_use: bool = False
    ) -> Caller:
        """The caller, or :class:`Unauthenticated`. ``single_use``: a bearer token is used up by this request
        (creating an access request); HMAC signatures are always single-use."""
        authorization = headers.get("Authorization")
        if authorization is None:
            return await self.hmac.authenticate(headers, method, path_qs, body)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "Send a CI identity token as 'Authorization: Bearer <token>', or sign the request with the "
                "X-Grantbot-* HMAC headers (without an Authorization header)."
            )
        return await self.oidc.authenticate(token.strip(), single_use=single_use)
