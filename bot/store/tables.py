"""SQLModel tables. Times are stored as UTC and read back aware; lists and maps are JSON.

Tokens and secrets are never stored: a grant keeps its ``jti`` and a SHA-256 of the token handed over;
a used HMAC signature is kept as a hash for replay detection.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, DateTime, Index, TypeDecorator, UniqueConstraint, true as sa_true
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps naive text, so the zone is restored on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect):
        """On SQLite, the text SQLAlchemy's ``DATETIME`` stores ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), made in one C
        call: the generic path (this decorator, then the dialect's %-formatting of a dict of the parts) cost about
        a third of the grouped writes' Python time, with ten or so times per access request."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            value = self.process_bind_param(value, dialect)  # naive refused; UTC, the zone dropped
            return None if value is None else value.isoformat(" ", "microseconds")

        return to_text

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(nullable: bool = True, index: bool = False):
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json():
    return Field(default=None, sa_column=Column(JSON, nullable=False))


def _json_list():
    return Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))


class AccessRequestRow(SQLModel, table=True):
    __tablename__ = "access_requests"
    __table_args__ = (
        UniqueConstraint("identity", "idempotency_key", name="uq_access_requests_idempotency"),
        Index("ix_access_requests_status_expires_at", "status", "expires_at"),
        # auto_approve_limit counts a rule's recent automatic approvals of one identity
        Index("ix_access_requests_identity_rule_created_at", "identity", "rule", "created_at"),
        Index("ix_access_requests_status_remind_at", "status", "remind_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    identity: str = Field(index=True, max_length=255)
    environment: str = Field(max_length=255)
    scopes: list = _json()
    ttl_seconds: int
    audience: str = Field(max_length=1024)
    reason: str | None = Field(default=None)
    context: dict = _json()
    status: str = Field(max_length=16)
    decision: str = Field(max_length=32)
    rule: str | None = Field(default=None, max_length=255)
    decision_reason: str
    decision_reasons: list = _json_list()  # the explanation, condition by condition, shown on the card
    approvers: list = _json()
    approver_groups: list = _json_list()  # Slack user group IDs whose members may approve
    excluded_approvers: list = _json_list()  # Slack user IDs who may not approve (who triggered the pipeline)
    min_approvals: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    deny_on_first_denial: bool = Field(default=True, sa_column_kwargs={"server_default": sa_true()})
    actor: str | None = Field(default=None, max_length=255)  # the person who triggered the pipeline, as claimed
    remind_at: datetime | None = _time()  # when to remind the approvers of a pending request; cleared once sent
    denial_reason: str | None = Field(default=None)  # the deciding denial's reason, as the approver typed it
    ssh_public_key: str | None = Field(default=None)  # the pipeline's OpenSSH public key (public: no secret)
    channel: str | None = Field(default=None, max_length=64)
    created_at: datetime = _time(nullable=False)
    expires_at: datetime | None = _time()
    decided_at: datetime | None = _time()
    decided_by: str | None = Field(default=None, max_length=255)
    card_channel: str | None = Field(default=None, max_length=64)
    card_ts: str | None = Field(default=None, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=255)
    body_hash: str | None = Field(default=None, max_length=64)


class ApprovalRow(SQLModel, table=True):
    """One person's verdict on one request; the unique pair makes a double click a no-op."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver", name="uq_approvals_request_approver"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="access_requests.id", max_length=36)
    approver: str = Field(max_length=255)
    verdict: str = Field(max_length=16)
    created_at: datetime = _time(nullable=False)


class GrantRow(SQLModel, table=True):
    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_status_expires_at", "status", "expires_at"),)

    id: str = Field(primary_key=True, max_length=36)
    request_id: str = Field(foreign_key="access_requests.id", unique=True, max_length=36)
    identity: str = Field(index=True, max_length=255)
    scopes: list = _json()
    audience: str = Field(max_length=1024)
    environment: str = Field(max_length=255)  # the request's: the token's ``environment`` claim
    jti: str = Field(unique=True, max_length=64)
    issued_at: datetime = _time(nullable=False)
    expires_at: datetime = _time(nullable=False)
    status: str = Field(max_length=16)
    ended_at: datetime | None = _time()
    ended_by: str | None = Field(default=None, max_length=255)
    delivered_at: datetime | None = _time()
    token_hash: str | None = Field(default=None, max_length=64)
    # While set and in the future, one caller is setting the secrets of this grant's credentials (a hand-over, a
    # reissue): others wait, and so do its revocations (a secret is never set on an account being removed).
    handover_until: datetime | None = _time()


class OutboxRow(SQLModel, table=True):
    """A notification to deliver to Slack, written in the state change's transaction (transactional outbox)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "sent_at", "not_before"),
        Index("uq_outbox_dedup_key", "dedup_key", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    request_id: str = Field(index=True, max_length=36)
    grant_id: str | None = Field(default=None, max_length=36)
    created_at: datetime = _time(nullable=False)
    not_before: datetime = _time(nullable=False)
    locked_until: datetime | None = _time()
    # Claims (leases taken), which fence a lease (``renew_outbox_lease``); a claim given back unattempted is not
    # counted. ``failures`` counts the attempts Slack failed or refused, not its 429s: it alone grows the backoff.
    attempts: int = 0
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    sent_at: datetime | None = _time()
    last_error: str | None = Field(default=None, max_length=500)
    # A notice (not about one request): its channel and text, and a key that makes it once-only across replicas.
    payload: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    dedup_key: str | None = Field(default=None, max_length=100)
    # Where a notice or digest goes (None: the default channel); items about a request go where the request says.
    channel: str | None = Field(default=None, max_length=64)
    # The digest (an outbox item's id) that told this grant's end along with others; set when it was folded.
    folded_into: int | None = Field(default=None)


class OutboxChannelRow(SQLModel, table=True):
    """Per Slack channel, what every replica's outbox worker shares: the next write slot (Slack allows about one
    message per second per channel) and how many notices of auto-approved grants went out one by one lately."""

    __tablename__ = "outbox_channels"

    channel: str = Field(primary_key=True, max_length=64)
    # Unix seconds on the database's clock (one clock for all replicas) from which the next write may go.
    next_write: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    # Notices told one by one since ``notices_since`` (clock time); a digest closes the interval to them.
    notices_since: datetime | None = _time()
    notices_told: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_digest_at: datetime | None = _time()  # the earliest a new digest may be posted (clock time)


class IdentityScopeRow(SQLModel, table=True):
    """A scope an identity has been granted at least once (``first_use: require_approval`` asks people before)."""

    __tablename__ = "identity_scopes"

    identity: str = Field(primary_key=True, max_length=255)
    scope: str = Field(primary_key=True, max_length=255)
    first_granted_at: datetime = _time(nullable=False)


class UsedSignatureRow(SQLModel, table=True):
    """HMAC signatures and CI tokens (``sha256("oidc:{issuer}:{jti}")``) already accepted, kept until they would be
    stale anyway (replay protection)."""

    __tablename__ = "used_signatures"

    digest: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = _time(nullable=False, index=True)


class AuditEventRow(SQLModel, table=True):
    """One thing grantbot did, written in the transaction of the change it records; rows are only ever inserted.

    ``kind`` is e.g. ``request.received``, ``policy.decided``, ``request.approved``, ``grant.issued``,
    ``token.handed_over``, ``grant.expired``; ``actor`` is an identity, a Slack user ID, ``policy`` or ``expiry``.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _time(nullable=False)
    kind: str = Field(max_length=32)
    request_id: str | None = Field(default=None, index=True, max_length=36)
    grant_id: str | None = Field(default=None, max_length=36)
    actor: str = Field(max_length=255)
    data: dict = _json()


class RefusalCountRow(SQLModel, table=True):
    """Refusals of one kind, by one who, for one reason, in one minute (``window_start``): the first is audited at
    once, the repeats are counted here and audited as one event when the minute is over (``bot.store.refusals``).
    The audit trail itself is append-only, so the count lives here until then."""

    __tablename__ = "refusal_counts"
    __table_args__ = (Index("ix_refusal_counts_kind_window_start", "kind", "window_start"),)

    key: str = Field(primary_key=True, max_length=64)  # sha256 of kind, who, reason and window_start
    kind: str = Field(max_length=32)
    who: str = Field(max_length=255)
    reason: str
    window_start: datetime = _time(nullable=False, index=True)
    count: int = 1
    request_id: str | None = Field(default=None, max_length=36)  # of the first refusal of the window
    data: dict = _json()  # the first refusal's details (e.g. the authentication scheme)


class CredentialRow(SQLModel, table=True):
    """One account a provider made for a grant (never its secret), and its revocation: a durable job written in the
    transaction that ends the grant, leased like the outbox (``locked_until``, ``attempts``), retried with backoff
    (``not_before``) until verified or failed.

    ``target`` is the provider's spec as it was at issue (names of variables, never a URL or secret), so a policy
    reload cannot strand a grant's revocation; ``params`` the rule's parameters (e.g. roles); ``revocation`` is
    NULL while the grant is active, then ``pending``, ``verified`` or ``failed``; ``detail`` what the revocation did
    and what the check after it found; ``grant_id`` may name no grant (an orphan found by reconciliation).
    """

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("provider", "username", name="uq_credentials_provider_username"),
        Index("ix_credentials_revocation_not_before", "revocation", "not_before"),
    )

    id: int | None = Field(default=None, primary_key=True)
    grant_id: str = Field(index=True, max_length=36)
    request_id: str | None = Field(default=None, max_length=36)
    position: int = 0  # the entry's place in the rule's credentials:
    provider: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    username: str = Field(max_length=255)
    target: dict = _json()
    params: dict = _json()
    created_at: datetime = _time(nullable=False)
    revocation: str | None = Field(default=None, max_length=16)
    attempts: int = 0  # since the revocation was (re)queued: its retry budget, reset by a requeue by hand
    # Every claim counts one, never reset: what a worker's outcome is fenced by (attempt numbers repeat after a
    # requeue, and a stale worker with a repeated number would otherwise pass the fence).
    claims: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    not_before: datetime | None = _time()
    locked_until: datetime | None = _time()
    last_error: str | None = Field(default=None, max_length=500)
    detail: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    revoked_at: datetime | None = _time()
