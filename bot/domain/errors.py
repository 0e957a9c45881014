"""Domain errors: each names what went wrong in the field's terms and carries a sentence a person can act on.

The web layer maps them to HTTP statuses (``status``) and the DESIGN.md error body
``{"error": code, "detail": message}``.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the use cases raise on purpose."""

    code = "error"
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(DomainError):
    """The access request itself is malformed or outside what the policy allows (e.g. TTL above the cap)."""

    code = "invalid_request"
    status = 422


class UnknownEnvironment(InvalidRequest):
    code = "unknown_environment"


class TTLTooLong(InvalidRequest):
    code = "ttl_too_long"


class InvalidChanges(InvalidRequest):
    """An approval with changes asked for more than the request did (a longer TTL, a scope not asked for) or for
    nothing at all; ``field`` names what is wrong (``ttl`` or ``scopes``) so a form can show it there."""

    code = "invalid_changes"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class IdempotencyConflict(DomainError):
    """An ``Idempotency-Key`` was reused with a different request body."""

    code = "idempotency_conflict"
    status = 422


class NotFound(DomainError):
    """No such request or grant, or it belongs to another identity (indistinguishable on purpose)."""

    code = "not_found"
    status = 404


class Unauthenticated(DomainError):
    """The caller could not be authenticated (bad signature, stale timestamp, replay, unknown identity).

    For the audit trail: ``who`` is the identity the caller claimed (None when it named none), ``audit_reason``
    why, in words that may say more than ``detail`` (an unknown identity gets a wrong signature's answer);
    ``reason``: one of a few words, a bounded label for metrics.
    """

    code = "unauthenticated"
    status = 401

    def __init__(self, detail: str, *, who: str | None = None, audit_reason: str | None = None,
                 reason: str = "invalid") -> None:
        super().__init__(detail)
        self.who = who
        self.audit_reason = audit_reason or detail
        self.reason = reason  # a short word for metrics (grantbot_auth_failures_total), e.g. "replay"


class SignatureReplayed(Unauthenticated):
    """A signed request whose signature was used before (and whose record is not stale): a replay."""

    def __init__(self, who: str | None) -> None:
        super().__init__("This signature was already used; a retrying client must sign the request again.",
                         who=who, reason="replay")


class CiTokenAlreadyUsed(Unauthenticated):
    """A CI identity token that already created an access request was sent to create one again. ``caller`` is
    the identity it proves: a retry of that same request (its ``Idempotency-Key``) is still answered, since a replay
    creates nothing; anything else is refused with this error."""

    def __init__(self, detail: str, caller: object) -> None:
        super().__init__(detail, who=getattr(caller, "identity", None), reason="replay")
        self.caller = caller


class NotAnApprover(DomainError):
    """Someone who is not an approver of the request's rule tried to decide it."""

    code = "not_an_approver"
    status = 403


class CannotApproveOwnRequest(NotAnApprover):
    """The person who triggered the pipeline (policy ``people:``) tried to decide its request."""

    code = "cannot_approve_own_request"


class AlreadyVoted(DomainError):
    """This approver already gave a verdict on this still-pending request; a person counts once."""

    code = "already_voted"
    status = 409


class ApproverDirectoryUnavailable(DomainError):
    """User group membership could not be looked up (Slack unreachable), so nobody can be checked against it."""

    code = "approver_directory_unavailable"
    status = 503


class AlreadyDecided(DomainError):
    """The request is no longer pending: ``outcome`` is its status (``approved``, ``denied``, ``expired`` …) and
    ``decided_by`` who decided it (a Slack user ID, ``policy``, ``timeout``, or None)."""

    code = "already_decided"
    status = 409

    def __init__(self, detail: str, outcome: str, decided_by: str | None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.decided_by = decided_by


class AutoApproveLimitReached(Exception):
    """Internal: the store found the rule's automatic approvals used up while inserting; people must decide."""

    def __init__(self, count: int) -> None:
        super().__init__(f"auto-approve limit of {count} reached")
        self.count = count


class PolicyError(Exception):
    """The policy file is invalid; the message names the file, the key and what is wrong."""


class Unavailable(DomainError):
    """Something grantbot depends on cannot be reached (e.g. a CI issuer's signing keys); retrying later helps.

    ``retry_after`` is the suggested wait in seconds (sent as ``Retry-After``).
    """

    code = "unavailable"
    status = 503
    retry_after = 5


class DatabaseUnavailable(Unavailable):
    """grantbot's own database cannot be used now (down, silent past its time limits, starting up, out of
    connections); raised by the store in place of the driver's error, so callers above it need not know the driver.
    Nothing was changed; retrying later helps."""

    def __init__(self, detail: str = "The database is unavailable; retry shortly.", cause: str = "") -> None:
        super().__init__(detail)
        self.cause = cause  # the driver error's class name, for one log line (never its message: it may quote data)


class NotAllowed(DomainError):
    """The person may not do this (e.g. revoke a grant: approvers of the request's rule and policy ``admins`` may)."""

    code = "not_allowed"
    status = 403


class GrantNotActive(DomainError):
    """The grant already ended (expired or revoked); ``outcome`` is ``expired`` or ``revoked``, ``ended_by`` who
    ended it (an identity, a Slack user ID, ``expiry``) when known. Nothing changed."""

    code = "grant_not_active"
    status = 409

    def __init__(self, detail: str, outcome: str, ended_by: str | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.ended_by = ended_by


class NotHandedOver(DomainError):
    """The grant's token was never handed over, so there is nothing to re-issue: reading the request hands it over."""

    code = "not_handed_over"
    status = 409


class CredentialsUnavailable(Unavailable):
    """A provider could not make, hand over or reset a grant's credentials now (its admin connection is down, it
    lacks a right, the account name is taken by someone else). Nothing half-made is left and no token is handed
    over without its credentials; the detail names the provider and what went wrong (never a password or URL)."""

    code = "credentials_unavailable"
    retry_after = 10

    def __init__(self, detail: str, provider: str | None = None) -> None:
        super().__init__(detail)
        self.provider = provider


class CredentialsRefused(Exception):
    """A provider will not act on an account: it exists but grantbot did not make it (no marker of grantbot's,
    or another grant's). Never retried: such an account is never altered or dropped."""
