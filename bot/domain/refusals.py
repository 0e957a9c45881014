"""Refusals worth an audit event: a caller that could not be authenticated, a person whose click or command was
refused. Recorded through the :class:`~bot.domain.ports.RefusalLog` port, which rate-limits them (a flood of bad
requests must not fill the audit trail) and never stores a secret: ``reason`` is the sentence the caller got (or,
where that hides something on purpose, a plainer one), never a signature, token or secret."""

from __future__ import annotations

from dataclasses import dataclass, field

AUTH_REFUSED = "auth.refused"  # a bad HMAC signature, stale timestamp, unknown identity, replay, bad CI token
APPROVAL_REFUSED = "approval.refused"  # an Approve / Deny by someone who may not decide, or on a decided request
REVOKE_REFUSED = "revoke.refused"  # a Revoke button or /access revoke by someone who may not, or of an ended grant


@dataclass(frozen=True)
class Refusal:
    """``kind`` (above), ``who`` (an identity as claimed, or a Slack user ID), ``reason`` (a sentence);
    ``request_id`` when it concerns one request; ``data``: further details for the audit event (JSON-ready)."""

    kind: str
    who: str
    reason: str
    request_id: str | None = None
    data: dict = field(default_factory=dict)
