"""The HMAC request signature of DESIGN.md "Caller authentication" (HMAC), shared by both sides of the contract.

The server (``bot.identity.hmac_auth``) recomputes it; the pipeline client (``bot.client``) computes it. It lives
here, importing nothing of grantbot, so the client signs exactly as the server checks without importing the server.
"""

from __future__ import annotations

import hmac

IDENTITY_HEADER = "X-Grantbot-Identity"
TIMESTAMP_HEADER = "X-Grantbot-Timestamp"
SIGNATURE_HEADER = "X-Grantbot-Signature"
NONCE_HEADER = "X-Grantbot-Nonce"


def signature(secret: bytes, timestamp: str, method: str, path_qs: str, body: bytes, nonce: str | None = None) -> str:
    """``v1=<hex HMAC-SHA256>`` over ``v1:{timestamp}:{METHOD}:{path_qs}:{body}``, or with a ``nonce``
    ``v1:{timestamp}:{nonce}:{METHOD}:{path_qs}:{body}`` (DESIGN.md). ``path_qs`` is the path and query exactly as
    sent in the request line; ``timestamp`` is unix seconds as text."""
    fields = (timestamp, *((nonce,) if nonce is not None else ()), method.upper(), path_qs)
    message = b"v1:" + b"".join(field.encode() + b":" for field in fields) + body
    return "v1=" + hmac.digest(secret, message, "sha256").hex()  # one C call (OpenSSL's HMAC), same bytes
