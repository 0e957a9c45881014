"""HMAC caller authentication (DESIGN.md "Caller authentication", HMAC).

The caller sends ``X-Grantbot-Identity``, ``X-Grantbot-Timestamp`` (unix seconds) and
``X-Grantbot-Signature: v1=<hex HMAC-SHA256(secret, "v1:{timestamp}:{METHOD}:{path and query}:{raw body}")>``.
Timestamps more than 300 s from the server's clock are refused, and so is a signature already used.

With the optional ``X-Grantbot-Nonce`` (16 to 64 of ``[A-Za-z0-9_-]``) the signed string is
``v1:{timestamp}:{nonce}:{METHOD}:{path and query}:{raw body}``: identical requests signed in the same second (the
jobs of a matrix build) then carry different signatures, so none is taken for a replay of another; a request
replayed with its nonce carries a signature already used and is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from bot.domain.errors import PolicyError, SignatureReplayed, Unauthenticated
from bot.domain.models import Caller, UnrecordedSignature
from bot.domain.policy import Policy
from bot.domain.ports import Clock
from bot.signing import IDENTITY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

WINDOW_SECONDS = 300
NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# The signing itself is bot.signing's (shared with the pipeline client); re-exported for this side's callers.
__all__ = ["IDENTITY_HEADER", "NONCE_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "HmacAuthenticator",
           "secrets_from_policy", "signature"]


def secrets_from_policy(policy: Policy, environ: Mapping[str, str] = os.environ) -> dict[str, bytes]:
    """Each HMAC identity's secret, read from its ``secret_env`` variable; raises :class:`PolicyError` if unset."""
    secrets: dict[str, bytes] = {}
    for identity in policy.identities:
        value = environ.get(identity.secret_env)
        if not value:
            raise PolicyError(
                f"identity {identity.name!r}: the environment variable {identity.secret_env} that holds its "
                "secret is not set"
            )
        secrets[identity.name] = value.encode()
    return secrets


RememberSignature = Callable[[str, datetime, datetime], Awaitable[bool]]


class HmacAuthenticator:
    """Checks signed requests. ``remember`` records a used signature and returns False for a replay."""

    def __init__(self, secrets: dict[str, bytes], clock: Clock, remember: RememberSignature) -> None:
        self._secrets = secrets
        self._clock = clock
        self._remember = remember

    def replace_secrets(self, secrets: dict[str, bytes]) -> None:
        """Put a reloaded policy's identities in force (one assignment: a request sees the old or the new set)."""
        self._secrets = secrets

    async def authenticate(
        self, headers: Mapping[str, str], method: str, path_qs: str, body: bytes, *, defer_replay_check: bool = False
    ) -> Caller:
        """Return the caller, or raise :class:`Unauthenticated` with a reason that reveals no secret
        (:class:`SignatureReplayed` for a signature used before).

        ``defer_replay_check``: do not record the signature here; the caller's ``signature`` carries its replay
        record for the use case to write with its own rows (creating an access request: one transaction, not two).
        """
        identity = headers.get(IDENTITY_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        sent = headers.get(SIGNATURE_HEADER)
        if not identity or not timestamp or not sent:
            missing = [name for name, value in ((IDENTITY_HEADER, identity), (TIMESTAMP_HEADER, timestamp),
                                                (SIGNATURE_HEADER, sent)) if not value]
            lacking = f"{missing[0]} is missing" if len(missing) == 1 else \
                f"{', '.join(missing[:-1])} and {missing[-1]} are missing"
            raise Unauthenticated(
                f"Sign the request: {lacking}; send {IDENTITY_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} "
                "(or an OIDC bearer token).", who=identity or None, reason="unsigned"
            )
        nonce = headers.get(NONCE_HEADER)
        if nonce is not None and not NONCE.fullmatch(nonce):
            raise Unauthenticated(
                f"{NONCE_HEADER} must be 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-' (e.g. 32 random hex "
                "digits, new for each request), or left out.", who=identity, reason="bad_nonce"
            )
        try:
            signed_at = int(timestamp)
        except ValueError:
            raise Unauthenticated(f"{TIMESTAMP_HEADER} must be unix seconds, e.g. 1764400000.", who=identity,
                                  reason="bad_timestamp") from None
        now = self._clock.now()
        if abs(now.timestamp() - signed_at) > WINDOW_SECONDS:
            raise Unauthenticated(
                f"The request timestamp is more than {WINDOW_SECONDS} s away from the server's clock; "
                "sign it again with the current time (and check the caller's clock).", who=identity,
                reason="stale_timestamp",
            )
        secret = self._secrets.get(identity)
        # Compare even for an unknown identity so the answer's timing does not tell which identities exist.
        expected = signature(secret or b"\0unknown", timestamp, method, path_qs, body, nonce)
        # Bytes, so a non-ASCII header cannot make compare_digest raise.
        if not hmac.compare_digest(expected.encode(), sent.encode("utf-8", "backslashreplace")) or secret is None:
            signed = "{timestamp}:{nonce}" if nonce is not None else "{timestamp}"
            raise Unauthenticated(
                f"The signature does not match: sign \"v1:{signed}:{{METHOD}}:{{path and query}}:{{body}}\" "
                "with the identity's secret (HMAC-SHA256, hex, prefixed v1=).", who=identity,
                audit_reason=None if secret is not None else "The identity is not one of the policy's identities.",
                reason="bad_signature" if secret is not None else "unknown_identity",
            )
        digest = hashlib.sha256(sent.encode("utf-8", "backslashreplace")).hexdigest()
        expires_at = now + timedelta(seconds=2 * WINDOW_SECONDS)
        if defer_replay_check:
            return Caller(identity=identity, signature=UnrecordedSignature(digest, expires_at, now))
        if not await self._remember(digest, expires_at, now):
            raise SignatureReplayed(identity)
        return Caller(identity=identity)
