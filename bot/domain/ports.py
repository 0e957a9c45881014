"""Ports: what the use cases need from the outside world, as Protocols (implemented in store/, tokens/, app.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Protocol

from bot.domain.credentials import (
    Account,
    Credential,
    CredentialState,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationJob,
    RevocationReport,
    RevokedCertificate,
)
from bot.domain.models import (
    AccessRequest,
    Approval,
    AutoApproveQuota,
    Backlog,
    Grant,
    NoticeFolding,
    OutboxEvent,
    OutboxItem,
    RequestStatus,
    Tally,
    UnrecordedSignature,
    Verdict,
    Vote,
)
from bot.domain.policy import Usage
from bot.domain.refusals import Refusal


class Observer(Protocol):
    """What happened, told as it happens so operators can count it (implemented by ``bot.metrics.Metrics``; the
    domain never imports a metrics library). Each call is cheap and never raises."""

    def request_decided(self, request: AccessRequest, by: str) -> None:
        """``request`` got its final status (approved, denied, expired); ``by``: ``policy``, ``people`` or
        ``timeout``."""

    def grant_issued(self, grant: Grant) -> None: ...

    def grant_revoked(self, grant: Grant) -> None:
        """``grant`` ended early (any path: its holder, a person in Slack, RFC 7009, revoke-all)."""


class NoObserver:
    """An :class:`Observer` that counts nothing (tests and tools that have no metrics)."""

    def request_decided(self, request: AccessRequest, by: str) -> None:
        pass

    def grant_issued(self, grant: Grant) -> None:
        pass

    def grant_revoked(self, grant: Grant) -> None:
        pass


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC now."""


class TokenMinter(Protocol):
    def mint(self, grant: Grant) -> str:
        """Sign an RFC 9068 access token for ``grant`` (iat = ``issued_at``, exp = ``expires_at``)."""

    def verify(self, token: str) -> dict[str, object] | None:
        """Claims of a token this issuer signed with a valid signature, else None (expiry is not checked)."""

    def token_hash(self, token: str) -> str:
        """A one-way hash of a token for storage and comparison."""


class Changes(Protocol):
    """In-process notification that a request changed, so long polls wake without hammering the database.

    ``closing`` turns true when the process drains: long polls then answer with what they have.
    """

    closing: bool

    def notify(self, request_id: str) -> None: ...

    async def wait(self, request_id: str, timeout: float) -> None:
        """Return when ``notify(request_id)`` is called or ``timeout`` seconds pass."""


class CredentialStore(Protocol):
    """What the credential lifecycle keeps (implemented by ``bot.store.repository.SqlStore``): the accounts made
    for each grant (never a secret) and their revocation, a durable job leased like the outbox."""

    async def credential_accounts(self, grant_id: str) -> list[Account]:
        """The accounts recorded for ``grant_id``, in the rule's order."""

    async def credential_states(self, grant_id: str) -> list[CredentialState]:
        """Each account of ``grant_id`` and its revocation (None while the grant is active)."""

    async def claim_hand_over(self, grant_id: str, now: datetime, until: datetime, *, undelivered: bool) -> bool:
        """Lease the grant's credentials for setting their secrets until ``until``: only while the grant is active
        (and, with ``undelivered``, its token not handed over), and nobody else holds the lease; False otherwise.
        Revocations of the grant wait while it is held, so a secret is never set on an account being removed."""

    async def release_hand_over(self, grant_id: str) -> None: ...

    async def claim_revocations(self, now: datetime, lease_seconds: float, limit: int) -> list[RevocationJob]:
        """Lease up to ``limit`` due pending revocations (counting an attempt each), oldest first; rows another
        worker holds, or whose grant's hand-over lease is held, are left alone."""

    async def renew_revocations(self, jobs: list[RevocationJob], until: datetime) -> int:
        """Extend the leases of ``jobs`` to ``until`` where this claim still holds them (fenced like
        :meth:`finish_revocation`); how many were renewed."""

    async def release_revocations(self, jobs: list[RevocationJob]) -> int:
        """Give back the leases of ``jobs`` not finished (their worker was cut off), due at once and with the
        cut-off attempt not counted against the retries, where this claim still holds them; how many were
        released."""

    async def held_revocations(self, now: datetime) -> tuple[int, datetime | None]:
        """Pending revocations a worker holds at ``now`` (claimed, their lease not run out: a live worker's, or
        one a crashed process left): how many, and when the last of those leases runs out (None if none)."""

    async def finish_revocation(self, job: RevocationJob, now: datetime, detail: dict,
                                events: list[OutboxEvent]) -> bool:
        """Mark ``job`` verified with ``detail`` (the report and the check), audited and with ``events``, if this
        claim still holds it (its attempt count); False otherwise."""

    async def retry_revocation(self, job: RevocationJob, not_before: datetime, error: str) -> bool:
        """Give ``job`` back, due again at ``not_before``, remembering ``error``; fenced like
        :meth:`finish_revocation`."""

    async def fail_revocation(self, job: RevocationJob, now: datetime, error: str, events: list[OutboxEvent]) -> bool:
        """Mark ``job`` failed (no more automatic retries) with ``error``, audited and with ``events`` (the alert),
        once; fenced like :meth:`finish_revocation`."""

    async def requeue_revocations(self, now: datetime, *, grant_id: str | None = None, failed: bool = False,
                                  provider: str | None = None, username: str | None = None) -> int:
        """Make revocations due now again, their attempts counted afresh: of ``grant_id`` (any finished state),
        with ``failed`` every failed one and every pending one waiting for its next retry, or the finished one of
        ``provider``/``username``; returns how many."""

    async def record_orphan(self, account: Account, now: datetime) -> bool:
        """Queue the revocation of an account found in a provider with no record of it here (a crash between
        making it and recording it); False when it is recorded already."""

    async def credential_by_username(self, provider: str, username: str) -> CredentialState | None: ...

    async def note_credentials_unavailable(self, request_id: str, approver: str, provider: str | None, detail: str,
                                           now: datetime) -> None:
        """Audit that an approval could not make its grant's credentials, with a thread reply under the card."""

    async def failed_revocations(self, limit: int) -> list[tuple[str, CredentialState]]:
        """Revocations that failed, newest first, each with its grant id."""


class Store(CredentialStore, Protocol):
    """Persistence. Every method is one transaction; every state change is a conditional UPDATE."""

    async def find_by_idempotency_key(self, identity: str, key: str) -> tuple[AccessRequest, str] | None:
        """The request made earlier with this key, with the hash of the body it was made with."""

    async def insert_request(
        self,
        request: AccessRequest,
        grant: Grant | None,
        events: list[OutboxEvent],
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        quota: AutoApproveQuota | None = None,
        accounts: tuple[Account, ...] = (),
        signature: UnrecordedSignature | None = None,
    ) -> bool:
        """Insert a new request (and its grant when auto-approved, with the ``accounts`` its credentials were made
        in). False when the idempotency key is taken. With ``quota``, raises :class:`AutoApproveLimitReached` (and
        stores nothing) when the rule's automatic approvals are used up, counted inside the same transaction.

        ``signature``: the request's replay record, written in the same transaction. Raises
        :class:`SignatureReplayed` (storing nothing) when it was used before. It is recorded when this returns True
        or raises ``AutoApproveLimitReached`` or ``SignatureReplayed``, and not otherwise."""

    async def remember_signature(self, digest: str, expires_at: datetime, now: datetime) -> bool:
        """Record a used HMAC signature or CI token (its SHA-256 ``digest``) until ``expires_at``; False when it
        was used before and its record is not stale at ``now`` (a replay), across replicas."""

    async def usage(self, identity: str, rule: str, since: datetime) -> Usage:
        """What the policy's guard rails need: automatic approvals of ``identity`` under ``rule`` after ``since``
        and the scopes ``identity`` was ever granted."""

    async def get_request(self, request_id: str) -> AccessRequest | None: ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def ids_starting_with(self, prefix: str, *, grants: bool, limit: int) -> list[str]:
        """Up to ``limit`` request ids (or grant ids) starting with ``prefix`` (lower-case hex and dashes)."""

    async def grant_for_request(self, request_id: str) -> Grant | None: ...

    async def grant_by_jti(self, jti: str) -> Grant | None: ...

    async def recent_grant_by_jti(self, jti: str, now: datetime) -> Grant | None:
        """``grant_by_jti`` for introspection: an active grant may come from a read less than a second old at
        ``now`` (a revocation on another replica is seen within it); one this replica ended or re-issued is read
        afresh at once."""

    async def decide(
        self,
        request_id: str,
        approver: str,
        verdict: Verdict,
        now: datetime,
        resolve: Callable[[Tally], RequestStatus | None],
        grant: Grant | None,
        events: list[OutboxEvent],
        *,
        reason: str | None = None,
        details: dict | None = None,
        resolved_events: list[OutboxEvent] = (),
        accounts: tuple[Account, ...] = (),
    ) -> Vote:
        """Record ``approver``'s verdict on a pending request, once per person, in one transaction.

        With the verdict counted, ``resolve(tally)`` says whether the request is now APPROVED (``grant`` is
        inserted) or DENIED, or None (still pending); ``events`` are queued whenever the verdict was recorded,
        ``resolved_events`` only when it resolved the request. ``reason`` (the approver's words) is audited and
        becomes the request's ``denial_reason`` when this verdict denies it; ``details`` join the audit data.
        Counting and resolving are serialised per request, so concurrent verdicts resolve it exactly once.
        ``accounts``: the grant's credential accounts, recorded with it when this verdict approves.
        """

    async def approvals(self, request_id: str) -> list[Approval]:
        """Every verdict given on a request, oldest first."""

    async def mark_handed_over(self, grant_id: str, token_hash: str, now: datetime,
                               events: list[OutboxEvent] = ()) -> bool:
        """Record that the token was handed over, queueing ``events`` with it; False if it already was (a token
        is handed over once)."""

    async def reissue_token(self, grant_id: str, jti: str, token_hash: str, now: datetime) -> Grant | None:
        """Give an active grant whose token was handed over (and is not past ``expires_at`` at ``now``) a new token:
        its ``jti`` and token hash replace the old ones (the old token is inactive from then on), audited as
        ``token.reissued`` with the old and the new ``jti``. Returns the grant as it now is, or None when it is
        not in that state (nothing changes). Concurrent calls are serialised on the grant: the last to commit
        holds the active token."""

    async def expire_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """End active grants whose ``expires_at <= now``, each with a ``grant.expired`` event; returns them."""

    async def next_due(self) -> datetime | None:
        """The earliest moment the sweep has something to do: an active grant's ``expires_at``, a pending
        request's deadline or reminder; None when nothing is scheduled. May be in the past."""

    async def expire_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Mark pending requests past their deadline ``expired``, each with a ``card.update`` event."""

    async def cancel_request(self, request_id: str, identity: str, now: datetime) -> bool:
        """Mark ``identity``'s pending request ``cancelled`` (decided by that identity) with its audit event and a
        ``card.update`` event, once; False when it was not pending."""

    async def remind_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Clear ``remind_at`` of pending requests it has come for, each with a ``request.reminder`` event."""

    async def forget_stale_signatures(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` replay records (used signatures and CI tokens) stale at ``now``; returns how many."""

    async def revoke_grant(self, grant_id: str, by: str, now: datetime, events: list[OutboxEvent],
                           **audit) -> bool:
        """End an active grant early; False if it was not active. ``audit``: extra data of its audit event.
        Ending a grant (here or in ``expire_due_grants``) queues the revocation of its credential accounts in the
        same transaction."""

    async def active_grants(self, now: datetime, *, identities: list[str] | None = None,
                            issued_at_or_before: datetime | None = None, limit: int | None = None) -> list[Grant]:
        """Active grants at ``now`` (status active, not yet past ``expires_at``), soonest to expire first."""

    async def count_active_grants(self, now: datetime) -> int: ...

    async def active_identities(self, now: datetime) -> list[str]:
        """Distinct identities holding an active grant at ``now``."""

    async def pending_requests(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests within their deadline, oldest first, at most ``limit``; and their total count."""

    async def requests_by_id(self, request_ids: list[str]) -> dict[str, AccessRequest]: ...

    async def add_notice(self, key: str, channel: str | None, text: str, now: datetime, audit_kind: str,
                         payload_extra: dict | None = None, **audit) -> bool:
        """Queue a message not about one request, once per ``key`` across replicas; False if queued before."""

    async def activity(self, since: datetime, until: datetime, now: datetime, top: int = 5) -> dict:
        """Counts of what happened in ``[since, until)`` and what is active at ``now`` (the daily summary)."""

    async def has_history_before(self, moment: datetime) -> bool:
        """True when the audit trail holds an event at or before ``moment`` (grantbot was in use by then)."""


class OutboxQueue(Protocol):
    """The outbox as its worker sees it (implemented by the SQL store; semantics: ``bot.slack.notifier``): items
    leased to one worker at a time, renewed before each post, completed, retried or given back; and the records a
    message is rendered from."""

    async def claim_outbox(self, now: datetime, lease_seconds: float, limit: int, per_channel: int | None = None,
                           held: Mapping[str, int] | None = None) -> list[OutboxItem]: ...

    async def renew_outbox_lease(self, item_id: int, attempts: int, until: datetime) -> bool: ...

    async def complete_outbox(self, item_id: int, now: datetime) -> None: ...

    async def retry_outbox(self, item_id: int, not_before: datetime, error: str, failed: bool = True) -> None: ...

    async def release_outbox(self, item_id: int, not_before: datetime) -> None: ...

    async def set_card(self, request_id: str, channel: str, ts: str) -> None:
        """Remember where a request's approval card was posted."""

    async def get_request(self, request_id: str) -> AccessRequest | None: ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def grant_for_request(self, request_id: str) -> Grant | None: ...

    async def approvals(self, request_id: str) -> list[Approval]: ...


class ChannelPacing(Protocol):
    """Slack channels shared by every replica (implemented in ``bot.store.outbox_channels``): each channel's next
    write slot, and the notices of auto-approved grants handed out one by one or folded into digests."""

    async def take_write_slot(self, channel: str, pace_seconds: float,
                              lease: tuple[int, int, datetime] | None = None) -> float | None:
        """Seconds to wait for ``channel``'s next write slot; with ``lease`` (item id, its claim count, until) that
        item's lease is renewed in the same transaction, and None means another worker holds it now."""

    async def claim_notices(self, now: datetime, lease_seconds: float, folding: NoticeFolding,
                            skip: Collection[str] = ()) -> list[OutboxItem]: ...


class Operations(Protocol):
    """What the operators' endpoints read (implemented by the SQL store): readiness and the backlog gauges."""

    async def answers(self, timeout: float) -> bool:
        """True when the database answers within ``timeout`` seconds, else False (after at most that long)."""

    async def backlog(self, now: datetime) -> Backlog:
        """What waits right now, across all replicas (a few aggregate reads)."""


class ApproverDirectory(Protocol):
    """Who is in a Slack user group (implemented in ``bot.slack.directory`` with ``usergroups.users.list``)."""

    async def members(self, group_id: str) -> frozenset[str]:
        """Slack user IDs of the group's members; empty for an unknown group.

        Raises :class:`~bot.domain.errors.ApproverDirectoryUnavailable` when membership cannot be known now.
        """


class HomeReads(Protocol):
    """Read-only queries behind the Slack App Home (implemented by ``bot.store.repository.SqlStore``)."""

    async def pending_requests_to_scan(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests inside their deadline at ``now``, newest first, at most ``limit``; and how many there
        are in all."""

    async def approvals_of(self, request_ids: list[str]) -> dict[str, list[Approval]]:
        """Every verdict on each request, oldest first."""

    async def active_grants_with_environment(self, now: datetime, limit: int) -> tuple[list[tuple[Grant, str]], int]:
        """Active grants, soonest to expire first, with their environment, at most ``limit``; and the total."""

    async def recent_decisions(self, limit: int) -> list[tuple[AccessRequest, Grant | None]]:
        """The last decided requests that went to people, newest first, with their grants."""

    async def failed_revocations(self, limit: int) -> list[tuple[str, CredentialState]]:
        """Credential revocations that failed every retry, newest first, each with its grant id."""


class CredentialProvider(Protocol):
    """One configured provider (a database, a cache, a broker, an SSH CA, a webhook) that makes temporary accounts.

    Shaped after Vault's database plugins (sdk/database/dbplugin/v5: ``NewUser`` / ``UpdateUser`` /
    ``DeleteUser``, one module per database) and Infisical's dynamic-secret providers (``create`` / ``revoke``),
    with what neither has: a check that the account is gone, and a list of the accounts it made (reconciliation).
    Every method is idempotent, keyed by the account's deterministic name, and takes the whole :class:`Account`:
    a kind may need more than the name to revoke (a webhook tells its hook which grant; an SSH certificate has no
    account in any server: its revocation is an entry in the revocation list grantbot publishes). Errors: raises
    :class:`~bot.domain.errors.CredentialsUnavailable` (the system cannot be reached or refused a step; retrying
    may help) and :class:`~bot.domain.errors.CredentialsRefused` (the account is not grantbot's: never retried).
    Messages never carry a secret or a URL with a password.
    """

    spec: ProviderSpec

    def username(self, grant_id: str) -> str:
        """The account name for a grant: the provider's prefix and the grant's id."""

    async def create(self, account: Account, now: datetime) -> None:
        """Make the account, unusable until :meth:`issue` (no secret set); marked as grantbot's, made at ``now``.
        An account already made for the same grant is kept."""

    async def issue(self, account: Account, now: datetime) -> Credential:
        """Set a fresh secret on the account, making it first if it is missing, usable until
        ``account.expires_at``; returns what the pipeline receives. Each call makes a new secret."""

    async def revoke(self, account: Account) -> RevocationReport:
        """Remove the account for good (end its sessions, hand on what it owns, drop it); an account already gone
        is not an error. ``account`` may be one found by reconciliation, knowing only its name and grant."""

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        """Look whether anything of the account is left (``report``: what :meth:`revoke` said it did, e.g. the
        identifiers it saw, for looking after them too)."""

    async def accounts(self) -> list[MadeAccount]:
        """Every account with this provider's prefix that grantbot made (marked as grantbot's); empty for a kind
        that cannot list them (a webhook)."""

    async def close(self) -> None:
        """Close its connections (at shutdown)."""


class CredentialProviders(Protocol):
    """The providers in use, built from a spec (the policy's, or the one a revocation kept) and reused."""

    def provider(self, spec: ProviderSpec) -> CredentialProvider:
        """The provider for ``spec``; raises ``CredentialsUnavailable`` when it cannot be built (its variable
        is unset, its kind unknown to this version)."""


class CertificateAuthority(Protocol):
    """An ``ssh`` provider as servers see it: the CA they trust and the revocation list they fetch."""

    def ca_public_key(self) -> str:
        """The CA's OpenSSH public key line (for ``TrustedUserCAKeys``)."""

    async def revocation_list(self) -> bytes:
        """The key revocation list in OpenSSH's binary format (for ``RevokedKeys``), as of now. Raises
        ``CredentialsUnavailable`` when the certificates whose grant ended cannot be read."""


class RevokedCertificates(Protocol):
    """The SSH certificates whose grant ended (implemented by ``bot.store``): what the revocation list an ``ssh``
    provider publishes is made of (``GET /ssh/{provider}/krl``)."""

    async def revoked_certificates(self, provider: str, since: datetime) -> list[RevokedCertificate]:
        """Certificates of ``provider`` whose grant ended, still valid after ``since`` (older ones expired by
        themselves and need no listing), oldest first."""


class RefusalLog(Protocol):
    """Refusals in the audit trail, rate-limited (implemented in ``bot.store.refusals``)."""

    async def record(self, refusal: Refusal, now: datetime) -> bool:
        """Audit ``refusal``: the first of its kind, who and reason in a minute becomes an audit event at once; the
        repeats are only counted. True when an audit event was written."""

    async def close_windows(self, now: datetime, limit: int) -> int:
        """Audit the counted repeats of every minute over at ``now`` (one event each, with the count) and forget
        them; at most ``limit`` minutes' counts. Returns how many were closed."""
