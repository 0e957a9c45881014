"""Who is calling a ``/v1`` route: an OIDC bearer token when ``Authorization: Bearer`` is sent, else HMAC headers.

See ``bot.identity.hmac_auth`` and ``bot.identity.oidc`` for the two schemes (DESIGN.md "Caller authentication").
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.domain.errors import Unauthenticated
from bot.domain.models import Caller
from bot.domain.ports import Clock, RefusalLog
from bot.domain.refusals import AUTH_REFUSED, Refusal
from bot.identity.hmac_auth import HmacAuthenticator
from bot.identity.oidc import OidcAuthenticator

ANONYMOUS = "(none)"  # the audit trail's who for a caller that named no identity


class CallerAuthenticator:
    """Picks the scheme from the request's headers and delegates to it; a refusal is audited (``auth.refused``,
    with the identity as claimed and why, never the signature or token) through ``refusals`` when given."""

    def __init__(self, hmac: HmacAuthenticator, oidc: OidcAuthenticator, refusals: RefusalLog | None = None,
                 clock: Clock | None = None) -> None:
        self.hmac = hmac
        self.oidc = oidc
        self._refusals = refusals
        self._clock = clock

    async def authenticate(
        self, headers: Mapping[str, str], method: str, path_qs: str, body: bytes, *, single_use: bool = False,
        defer_replay_check: bool = False,
    ) -> Caller:
        """The caller, or :class:`Unauthenticated`. ``single_use``: a bearer token is used up by this request
        (creating an access request); HMAC signatures are always single-use. ``defer_replay_check``: an HMAC
        signature's replay record is left to the use case (``Caller.signature``; see ``HmacAuthenticator``)."""
        authorization = headers.get("Authorization")
        scheme = "hmac" if authorization is None else "oidc"
        try:
            if authorization is None:
                return await self.hmac.authenticate(headers, method, path_qs, body,
                                                    defer_replay_check=defer_replay_check)
            kind, _, token = authorization.strip().partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "Send a CI identity token as 'Authorization: Bearer <token>', or sign the request with the "
                    "X-Grantbot-* HMAC headers (without an Authorization header).", reason="malformed"
                )
            return await self.oidc.authenticate(token.strip(), single_use=single_use)
        except Unauthenticated as exc:
            await self.refused(exc, scheme)
            raise

    async def refused(self, exc: Unauthenticated, scheme: str) -> None:
        """Audit a refusal (``auth.refused``): one that :meth:`authenticate` raised, or a replay found later, when
        the use case wrote the signature's record (``scheme``: "hmac" or "oidc")."""
        if self._refusals is not None and self._clock is not None:
            refusal = Refusal(AUTH_REFUSED, exc.who or ANONYMOUS, exc.audit_reason, data={"scheme": scheme})
            await self._refusals.record(refusal, self._clock.now())
