"""Domain records: access requests, grants, callers and the outbox events that drive notifications.

Plain dataclasses (stdlib only); times are aware UTC ``datetime``; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"  # nobody decided before the pending timeout
    CANCELLED = "cancelled"


class GrantStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Decision(StrEnum):
    """What the policy says about an access request (DESIGN.md policy file, ``decision``)."""

    AUTO_APPROVE = "auto_approve"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


class Verdict(StrEnum):
    """What one approver said."""

    APPROVE = "approve"
    DENY = "deny"


@dataclass
class UnrecordedSignature:
    """A signed request's replay record still to be written (DESIGN.md "Caller authentication"): the SHA-256 hex
    ``digest`` of its signature, kept until ``expires_at``; a record older than ``now`` refuses nothing.

    Creating an access request writes it in the same transaction as the request's rows, so a request costs one
    write; every other way out of that route records it on its own first. ``recorded`` is set once it is written
    (or found to be a replay), so it is written once."""

    digest: str
    expires_at: datetime
    now: datetime
    recorded: bool = False


# The longest identity and actor (CI login) grantbot stores: the width of the columns that hold them.
MAX_IDENTITY = 255


@dataclass(frozen=True)
class Caller:
    """An authenticated machine: ``identity`` is an HMAC identity name or ``<issuer>:<sub>`` for OIDC.
    ``signature``: its HMAC signature, when checked but not yet recorded as used (``UnrecordedSignature``)."""

    identity: str
    claims: dict[str, object] = field(default_factory=dict)
    signature: UnrecordedSignature | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AccessRequestInput:
    """The body of ``POST /v1/access-requests`` after validation (DESIGN.md HTTP contract)."""

    environment: str
    scopes: tuple[str, ...]
    ttl_seconds: int | None = None
    reason: str | None = None
    audience: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    ssh_public_key: str | None = None  # an OpenSSH public key: an ssh provider's certificate is made for it


@dataclass
class AccessRequest:
    """An access request and its resolution.

    ``expires_at`` is the pending deadline (after it an undecided request becomes ``expired``);
    ``approvers`` are the Slack user IDs who may decide it and ``approver_groups`` the Slack user groups whose
    members may, both fixed when it was made; ``excluded_approvers`` may never decide it (the person who
    triggered the pipeline); it is approved once ``min_approvals`` distinct people approve, and denied by the
    first denial when ``deny_on_first_denial``; ``decision_reasons`` explain the policy's decision, condition by
    condition; ``card_channel``/``card_ts`` locate its approval card once the outbox has posted it.
    """

    id: str
    identity: str
    environment: str
    scopes: tuple[str, ...]
    ttl_seconds: int
    audience: str
    reason: str | None
    context: dict[str, str]
    status: RequestStatus
    decision: Decision
    rule: str | None
    decision_reason: str
    approvers: tuple[str, ...]
    channel: str | None
    created_at: datetime
    expires_at: datetime | None
    decided_at: datetime | None = None
    decided_by: str | None = None
    card_channel: str | None = None
    card_ts: str | None = None
    decision_reasons: tuple[str, ...] = ()
    approver_groups: tuple[str, ...] = ()
    excluded_approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    deny_on_first_denial: bool = True
    actor: str | None = None
    remind_at: datetime | None = None
    denial_reason: str | None = None  # what the approver whose denial decided it wrote (Slack deny modal)
    ssh_public_key: str | None = None  # the pipeline's OpenSSH public key, for an ssh provider's certificate


@dataclass(frozen=True)
class Approval:
    """One person's verdict on one request (a row of ``approvals``; one per person and request)."""

    approver: str  # Slack user ID
    verdict: Verdict
    created_at: datetime


@dataclass(frozen=True)
class Tally:
    """Distinct people who approved and who denied a request so far."""

    approvals: int = 0
    denials: int = 0


class VoteOutcome(StrEnum):
    """What recording one approver's verdict did (``Store.decide``)."""

    COUNTED = "counted"  # recorded; the request is still pending (quorum not reached)
    RESOLVED = "resolved"  # recorded, and it approved or denied the request
    REPEATED = "repeated"  # this person had already given a verdict on it: nothing changed
    NOT_PENDING = "not_pending"  # already decided, or past its pending deadline: nothing changed


@dataclass(frozen=True)
class Vote:
    """The result of ``Store.decide``: the outcome, the tally after it, and for ``REPEATED`` the earlier verdict."""

    outcome: VoteOutcome
    tally: Tally = Tally()
    earlier: Verdict | None = None


@dataclass
class Grant:
    """Access that was granted: the token's ``jti`` and, once handed over, a hash of it (never the token).

    ``environment`` binds it (and its token) to the request's environment; ``audience`` is the token's ``aud``.

    ``issued_at`` is the approval time; ``expires_at - issued_at`` is the granted TTL.
    """

    id: str
    request_id: str
    identity: str
    scopes: tuple[str, ...]
    audience: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    status: GrantStatus = GrantStatus.ACTIVE
    ended_at: datetime | None = None
    ended_by: str | None = None
    delivered_at: datetime | None = None
    token_hash: str | None = None
    environment: str = ""  # the request's environment: the token's ``environment`` claim

    @property
    def ttl_seconds(self) -> int:
        return int((self.expires_at - self.issued_at).total_seconds())


class EventKind(StrEnum):
    """Outbox events: written in the same transaction as the state change, turned into Slack messages later."""

    CARD_POST = "card.post"  # post the approval card of a pending request
    CARD_UPDATE = "card.update"  # re-render the card from the request's current state
    GRANT_EXPIRED = "grant.expired"  # tell the channel (thread under the card, if any)
    GRANT_REVOKED = "grant.revoked"
    REMINDER = "request.reminder"  # a pending request waits: mention its approvers in the card's thread
    # Thread replies under the card: who decided (an approval's reply also names the grant it issued), and the
    # pipeline collecting its token.
    REQUEST_DECIDED = "request.decided"
    TOKEN_HANDED_OVER = "token.handed_over"
    NOTICE = "notice"  # a plain message to a channel, e.g. a refused policy reload; payload {channel, text}
    # Real credentials (payloads name the provider and the account, never a secret): a verified revocation (thread
    # reply, or a channel message for an auto-approved grant), a revocation that failed every retry (an alert in the
    # channel), and an approval that could not make its credentials (thread reply; the request stays pending).
    CREDENTIALS_REVOKED = "credentials.revoked"
    CREDENTIALS_FAILED = "credentials.failed"
    CREDENTIALS_UNAVAILABLE = "credentials.unavailable"
    # Many ends of auto-approved grants told in one channel message; payload {channel, digest} (see the outbox)
    DIGEST = "notice.digest"


# Approval cards, their updates and the decision replies under them, and alerts about credentials that could not be
# made or removed: told before anything else queued for a channel.
URGENT_EVENTS = frozenset({EventKind.CARD_POST, EventKind.CARD_UPDATE, EventKind.REQUEST_DECIDED,
                           EventKind.CREDENTIALS_FAILED, EventKind.CREDENTIALS_UNAVAILABLE})


@dataclass(frozen=True)
class OutboxEvent:
    """``payload``: extra JSON for the message's builder, e.g. ``{"reason": ..., "by_user": "U…"}`` of a
    revocation from Slack."""

    kind: EventKind
    request_id: str
    grant_id: str | None = None
    payload: dict | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class OutboxItem:
    """A claimed outbox row: the event plus delivery bookkeeping."""

    id: int
    kind: EventKind
    request_id: str
    grant_id: str | None
    attempts: int  # claims so far, this one included (they fence the lease)
    created_at: datetime
    payload: dict | None = None
    channel: str | None = None  # where it goes: the card's channel, else the request's (None: nowhere)
    failures: int = 0  # earlier attempts that failed (a 429 is not one): they set the backoff


@dataclass(frozen=True)
class AutoApproveQuota:
    """An auto-approve rule's limit, checked again inside the insert's transaction: fewer than ``count`` automatic
    approvals of the identity under the rule after ``since``."""

    count: int
    since: datetime


class Backlog(NamedTuple):
    """What waits right now, across all replicas (``Operations.backlog``; the gauges of ``/metrics``): pending
    requests, grants active now, outbox items not sent yet and the ``created_at`` of the oldest, the ``expires_at``
    of the grant longest overdue (still active past it), and credential revocations pending and failed."""

    pending_requests: int
    active_grants: int
    outbox_unsent: int
    outbox_oldest: datetime | None
    oldest_overdue_grant: datetime | None = None
    revocations_pending: int = 0
    revocations_failed: int = 0


@dataclass(frozen=True)
class NoticeFolding:
    """How notices of auto-approved grants are told: at most ``one_by_one`` messages each per channel per
    ``interval_seconds``, more fold into one digest per channel per interval; a digest lists ``listed`` of its
    grants (Slack's message limits) and one transaction folds at most ``batch`` notices."""

    one_by_one: int = 3
    interval_seconds: float = 60.0
    listed: int = 20
    batch: int = 5000
