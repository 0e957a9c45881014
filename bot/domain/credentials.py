"""Real credentials: the policy's ``providers:`` and rules' ``credentials:``, and the records of an account a
provider makes for a grant, hands over once and removes when the grant ends (DESIGN.md "Real credentials").

Kind-agnostic on purpose: what a ``postgresql``, ``mysql``, ``redis``, ``rabbitmq``, ``ssh`` or ``webhook`` provider
accepts is checked by its module in ``bot.providers``; here are only the shapes every kind shares. Secrets (a password, a
private key) live in a :class:`Credential` for the one answer that hands them over, and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DEFAULT_USERNAME_PREFIX = "gb_"


class ProviderSpec(BaseModel):
    """One entry of the policy's ``providers:``: a system grantbot makes temporary accounts in.

    ``url_env`` names the environment variable holding the admin connection (never the URL itself: it carries a
    password); ``username_prefix`` starts every account name grantbot makes there (reconciliation looks only at
    those); ``owner_role`` receives what a temporary account created, when it is revoked. Keys of other kinds
    (``ca_key_file``, ``url``, ``secret_env``) are kept as extras and checked by the kind's module.

    The spec, as JSON, is also what a revocation keeps (``credentials.target``), so a grant issued under an older
    policy is still revoked after its provider was renamed or removed from the file.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(min_length=1)
    url_env: str | None = None
    username_prefix: str = DEFAULT_USERNAME_PREFIX
    owner_role: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PROVIDER_NAME.fullmatch(value):
            raise ValueError(f"provider name {value!r} must be letters, digits, '.', '_' or '-'")
        return value

    def extras(self) -> dict[str, Any]:
        """The keys this model does not know (a kind's own keys, or misspellings for the kind to refuse)."""
        return dict(self.model_extra or {})

    def target(self) -> dict[str, Any]:
        """What a revocation needs to reach this provider again, as JSON (no secret: names of variables only)."""
        return self.model_dump(mode="json")


class CredentialSpec(BaseModel):
    """One entry of a rule's ``credentials:``: the provider's name and its parameters for this rule (e.g.
    ``roles: [orders_read]`` for PostgreSQL), checked by the provider's kind."""

    model_config = ConfigDict(extra="allow", frozen=True)

    provider: str = Field(min_length=1)

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class Account:
    """The account one provider makes for one grant: its deterministic ``username`` (the provider's prefix and the
    grant's id, so every step can be retried after a crash), the rule's ``params``, the provider's ``target``
    (:meth:`ProviderSpec.target`) and the grant's ``expires_at`` (aware UTC).

    What a provider may tell the system about the grant (a webhook's ``grant``, an SSH certificate's key id and
    validity): its ``identity``, ``environment``, ``scopes`` and ``valid_from`` (the approval, aware UTC), and the
    ``public_key`` the pipeline sent with its request (``ssh_public_key``: an SSH certificate is made for it). An
    account found by reconciliation, with no record, knows none of them.
    """

    grant_id: str
    provider: str
    kind: str
    username: str
    expires_at: datetime
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    target: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    request_id: str | None = None
    identity: str | None = None
    environment: str | None = None
    scopes: tuple[str, ...] = ()
    valid_from: datetime | None = None
    public_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Credential:
    """What a pipeline receives once, with its token (DESIGN.md ``grant.credentials``): ``fields`` holds the kind's
    fields (``username``, ``password``, ``host``, ``port``, ``database``, ``dsn`` for PostgreSQL). Never stored,
    logged or posted; ``repr`` leaves the fields out."""

    provider: str
    kind: str
    expires_at: datetime
    fields: dict[str, Any] = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "kind": self.kind, **self.fields,
                "expires_at": self.expires_at.isoformat().replace("+00:00", "Z")}


@dataclass(frozen=True)
class RevocationReport:
    """What a revocation did, step by step (JSON-ready ``facts``), and ``summary``: one sentence for people, e.g.
    ``role gb_3f2a… dropped, 2 sessions ended, 1 table reassigned to orders_owner``."""

    summary: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RevocationCheck:
    """The check after a revocation: ``gone`` when nothing of the account is left (the role does not exist and none
    of its sessions is open); ``facts`` what was looked at, ``problem`` a sentence when not gone; ``checked``: what
    was checked, for people (``the account is gone and none of its sessions is open``; an SSH certificate's check
    says that the revocation list lists it)."""

    gone: bool
    facts: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    checked: str = "the account is gone and none of its sessions is open"


@dataclass(frozen=True)
class RevokedCertificate:
    """An SSH certificate whose grant ended (``credentials`` row of an ``ssh`` provider with a revocation): the
    account's ``username`` (the certificate's serial comes from it) and when the certificate expires by itself."""

    username: str
    grant_id: str
    expires_at: datetime


@dataclass(frozen=True)
class MadeAccount:
    """An account a provider finds that grantbot made (its prefix and grantbot's marker): for reconciliation.
    ``created_at`` is when grantbot made it (aware UTC; None if the marker does not say)."""

    username: str
    grant_id: str
    created_at: datetime | None


class RevocationStatus(StrEnum):
    """Where removing an account stands (DESIGN.md ``grant.revocation.status``)."""

    PENDING = "pending"  # queued or being retried
    VERIFIED = "verified"  # done, and checked that nothing is left
    FAILED = "failed"  # every retry failed: people must look (alert, gauge, `grantbot credentials reconcile`)


@dataclass(frozen=True)
class RevocationJob:
    """A claimed revocation (a row of ``credentials`` whose grant ended): which ``account``, how many attempts
    this claim makes it since the revocation was queued (the claim counts one: the retry budget), and ``claim``,
    the row's claim count, which only ever grows (finishing, retrying and renewing are fenced by it)."""

    id: int
    account: Account
    attempts: int
    claim: int

    @property
    def grant_id(self) -> str:
        return self.account.grant_id

    @property
    def request_id(self) -> str | None:
        return self.account.request_id

    @property
    def provider(self) -> str:
        return self.account.provider

    @property
    def kind(self) -> str:
        return self.account.kind

    @property
    def username(self) -> str:
        return self.account.username

    @property
    def target(self) -> dict[str, Any]:
        return self.account.target


@dataclass(frozen=True)
class CredentialState:
    """One account of a grant as people may see it (never a secret): where, which account, and its revocation
    (None while the grant is active) with the sentence saying what was done or what failed."""

    provider: str
    kind: str
    username: str
    revocation: RevocationStatus | None = None
    detail: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Revocation:
    """A grant's revocation as the API shows it (DESIGN.md ``grant.revocation``): ``failed`` if any account's
    failed, else ``pending`` if any is pending, else ``verified``; ``detail`` joins the accounts' sentences."""

    status: RevocationStatus
    detail: str

    @staticmethod
    def of(states: list[CredentialState] | tuple[CredentialState, ...]) -> Revocation | None:
        ended = [s for s in states if s.revocation is not None]
        if not ended:
            return None
        order = (RevocationStatus.FAILED, RevocationStatus.PENDING, RevocationStatus.VERIFIED)
        status = next(st for st in order if any(s.revocation is st for s in ended))
        detail = "; ".join(f"{s.provider}: {s.detail or s.revocation.value}" for s in ended)
        return Revocation(status, detail)

    def as_json(self) -> dict[str, str]:
        return {"status": self.status.value, "detail": self.detail}
