"""The policy file: its model (validated with pydantic) and the decision it makes for an access request.

Shape and semantics follow DESIGN.md "Policy file": a matching ``deny`` rule always wins; otherwise the first
matching rule in file order decides; nothing matches -> ``default``. Globs are ``fnmatch`` patterns, matched
case-sensitively. A grant rule's ``scopes`` must cover *every* requested scope; a deny rule's ``scopes`` match
when *any* requested scope matches (so ``db:read db:admin`` cannot slip past a rule denying ``*:admin``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from fnmatch import fnmatchcase
from collections.abc import Callable
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.domain.credentials import CredentialSpec, ProviderSpec
from bot.domain.errors import PolicyError, TTLTooLong
from bot.domain.models import MAX_IDENTITY, Caller, Decision
from bot.domain.zones import check_zone


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_glob(pattern: str) -> str:
    """A glob is a non-empty word; ``[`` must be closed (fnmatch would silently take an open one literally)."""
    if not pattern or any(ch.isspace() or ord(ch) < 32 for ch in pattern):
        raise ValueError(f"bad glob {pattern!r}: a glob is one word without spaces")
    depth = 0
    for ch in pattern:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"bad glob {pattern!r}: a '[' is never closed with ']'")
    return pattern


Glob = Annotated[str, AfterValidator(_check_glob)]
Globs = Annotated[list[Glob], BeforeValidator(_as_list)]
def _claim_text_or_value(value: Any) -> Any:
    """YAML reads ``ref_protected: true`` as a boolean; claims compare as text ("true"/"false")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approvers(_Strict):
    """Who may decide a request and how many must agree (rules and semantics: ``bot.domain.approvals``)."""

    users: list[str] = Field(default_factory=list, description="Slack user IDs")
    usergroups: list[str] = Field(default_factory=list, description="Slack user group IDs, resolved when clicked")
    min_approvals: int = Field(default=1, ge=1, description="distinct people who must approve")
    deny_on_first_denial: bool = Field(
        default=True, description="false: denied only once the others can no longer reach min_approvals"
    )

    def problem(self) -> str | None:
        """Why no request could ever be approved by these approvers, or None (usergroups: unknown until asked)."""
        if not self.users and not self.usergroups:
            return "needs approvers.users or approvers.usergroups"
        if not self.usergroups and self.min_approvals > len(set(self.users)):
            return (f"approvers.min_approvals is {self.min_approvals}, more than the {len(set(self.users))} "
                    "people in approvers.users")
        return None


class Admins(_Strict):
    """People who may revoke any grant (``/access revoke``, ``/access revoke-all``): Slack user IDs and user group
    IDs (members looked up when they act, as for approvers)."""

    users: list[str] = Field(default_factory=list, description="Slack user IDs")
    usergroups: list[str] = Field(default_factory=list, description="Slack user group IDs")


FirstUse = Literal["auto_approve", "require_approval"]


class Defaults(_Strict):
    ttl_seconds: int = Field(default=900, gt=0)
    max_ttl_seconds: int = Field(default=3600, gt=0)
    pending_timeout_seconds: int = Field(default=3600, gt=0)
    remind_after_seconds: int | None = Field(default=None, gt=0)  # None: no reminders
    channel: str | None = None
    audience: str | None = None
    approvers: Approvers | None = None
    first_use: FirstUse = "auto_approve"


class When(_Strict):
    """When a rule applies: ``days`` (mon..sun) and ``hours`` ("09:00-18:00"; may wrap midnight, "22:00-06:00"),
    read on the wall clock of ``timezone`` (IANA, e.g. "Europe/Berlin"; DST follows the zone's rules)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    hours: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_hours(value)
        return value

    def holds(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        if self.days is not None and WEEKDAYS[local.weekday()] not in self.days:
            return False
        if self.hours is not None:
            start, end = _parse_hours(self.hours)
            now = local.time().replace(tzinfo=None)
            inside = start <= now < end if start < end else (now >= start or now < end)
            if not inside:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.days is not None:
            parts.append("/".join(self.days))
        if self.hours is not None:
            parts.append(self.hours)
        return " ".join(parts + [self.timezone])


def _parse_hours(value: str) -> tuple[time, time]:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)", value.strip())
    if not match:
        raise ValueError(f"bad hours {value!r}: write a range like '09:00-18:00' (24-hour clock)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    end = time.max if (h2, m2) == (24, 0) else time(h2 % 24, m2)
    if (h2 == 24 and m2) or time(h1, m1) == end:
        raise ValueError(f"bad hours {value!r}: the range is empty")
    return time(h1, m1), end


class AutoApproveLimit(_Strict):
    """At most ``count`` automatic approvals per identity and rule in any ``per_seconds``; beyond it people decide."""

    count: int = Field(ge=0)
    per_seconds: int = Field(gt=0)


class Identity(_Strict):
    """An HMAC caller; its shared secret is read from the environment variable ``secret_env``."""

    name: str = Field(min_length=1, max_length=MAX_IDENTITY)  # as long as an identity can be stored
    secret_env: str = Field(min_length=1)


# Hosts where plain http is tolerated for an issuer: a test or development issuer on this machine only.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_ISSUER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_trusted_url(url: str) -> bool:
    """An absolute https URL, or http on 127.0.0.1/localhost/::1; where issuer metadata and keys may come from.

    Keys fetched over plain http from another host could be swapped in transit (RFC 8725 §3.10 asks for the
    issuer's keys to come from a trusted source).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host or parts.username or parts.password or parts.fragment:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOCAL_HOSTS)


class Issuer(_Strict):
    """A trusted CI OIDC issuer: tokens whose ``iss`` equals ``issuer`` exactly and whose ``aud`` is ``audience``
    are accepted; the caller's identity is ``<name>:<sub>``. Keys come from ``jwks_uri``, else from the issuer's
    ``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4).
    """

    name: str = Field(min_length=1, max_length=64)
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_uri: str | None = None

    @model_validator(mode="after")
    def _check_urls(self) -> Issuer:
        if not _ISSUER_NAME.fullmatch(self.name):
            raise ValueError(
                f"issuer name {self.name!r} must be letters, digits, '.', '_' or '-' (it prefixes identities "
                "as <name>:<sub>, so it cannot contain ':')"
            )
        for key in ("issuer", "jwks_uri"):
            value = getattr(self, key)
            if value is not None and not is_trusted_url(value):
                raise ValueError(
                    f"issuer {self.name!r}: {key} {value!r} must be an https URL (http only for 127.0.0.1 or "
                    "localhost)"
                )
        return self


class Environment(_Strict):
    """One entry of the ``environments:`` map: what the environment's tokens carry (DESIGN.md "Policy file").

    ``audience`` is the ``aud`` of a token for this environment when its request names none; give each
    environment its own, so that a resource server of one environment refuses another's tokens."""

    audience: str | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        if value is None:  # ``staging:`` with nothing after it: an environment without an audience of its own
            return {}
        if not isinstance(value, dict):
            raise ValueError(
                f"an environment's entry is a mapping such as {{audience: https://staging.api.example}}, not "
                f"{value!r}"
            )
        return value


EnvironmentName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def _environment_map(value: Any) -> Any:
    """The list form (``[staging, production]``) is the map form with no audiences; both stay valid."""
    if isinstance(value, list):
        for index, name in enumerate(value):
            if not isinstance(name, str):
                raise ValueError(f"item {index} ({name!r}) is not an environment name; list names, or map each "
                                 "name to {audience: …}")
        return {name: {} for name in value}
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"write a list of names ([staging, production]) or a map of each name to "
                         f"{{audience: …}}, not {value!r}")
    return value


class Match(_Strict):
    identity: Globs = Field(default_factory=lambda: ["*"])
    environment: Globs | None = None
    scopes: Globs | None = None
    audiences: Globs | None = None
    claims: dict[str, Annotated[Glob, BeforeValidator(_claim_text_or_value)]] = Field(default_factory=dict)


class Rule(_Strict):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    when: When | None = None
    decision: Decision
    approvers: Approvers | None = None
    max_ttl_seconds: int | None = Field(default=None, gt=0)
    default_ttl_seconds: int | None = Field(default=None, gt=0)
    pending_timeout_seconds: int | None = Field(default=None, gt=0)
    remind_after_seconds: int | None = Field(default=None, gt=0)
    channel: str | None = None
    require_reason: bool = False
    reason_pattern: str | None = None
    auto_approve_limit: AutoApproveLimit | None = None
    first_use: FirstUse | None = None
    credentials: list[CredentialSpec] = Field(
        default_factory=list, description="real credentials a grant under this rule gets (DESIGN.md)"
    )

    @field_validator("reason_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return value

    def needs_reason(self) -> bool:
        return self.require_reason or self.reason_pattern is not None


class Policy(_Strict):
    """The whole policy file (DESIGN.md "Policy file", core keys)."""

    defaults: Defaults = Field(default_factory=Defaults)
    environments: Annotated[dict[EnvironmentName, Environment], BeforeValidator(_environment_map)] | None = Field(
        default=None, description="the environments requests may name (a list, or a map of name to {audience}); "
                                  "default: those the rules name"
    )
    identities: list[Identity] = Field(default_factory=list)
    issuers: list[Issuer] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    default: Decision = Decision.DENY
    people: dict[str, str] = Field(
        default_factory=dict, description="CI login (GitHub actor, GitLab user_login) -> Slack user ID"
    )
    admins: Admins = Field(default_factory=Admins, description="may revoke any grant, incl. /access revoke-all")
    providers: list[ProviderSpec] = Field(
        default_factory=list, description="systems grantbot makes temporary accounts in (DESIGN.md Real credentials)"
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Policy:
        names = [rule.name for rule in self.rules]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"rule name {name!r} is used more than once")
        idents = [identity.name for identity in self.identities]
        for name in idents:
            if idents.count(name) > 1:
                raise ValueError(f"identity {name!r} is listed more than once")
        self._check_issuers()
        for index, rule in enumerate(self.rules):
            if rule.decision is Decision.REQUIRE_APPROVAL and (problem := self.approvers_for(rule).problem()):
                raise ValueError(
                    f"rules[{index}] ({rule.name}): decision require_approval {problem} "
                    "(on the rule or in defaults.approvers)"
                )
            if (rule.decision is Decision.AUTO_APPROVE and self.sends_to_people(rule)
                    and (problem := self.approvers_for(rule).problem())):
                raise ValueError(
                    f"rules[{index}] ({rule.name}): auto_approve_limit / first_use send requests to people, so the "
                    f"rule {problem} (on the rule or in defaults.approvers)"
                )
            if rule.decision is not Decision.AUTO_APPROVE and (rule.auto_approve_limit or rule.first_use):
                raise ValueError(
                    f"rules[{index}] ({rule.name}): auto_approve_limit and first_use only apply to auto_approve rules"
                )
        if self.default is Decision.REQUIRE_APPROVAL and (problem := self.approvers_for(None).problem()):
            raise ValueError(f"default: require_approval {problem.replace('approvers.', 'defaults.approvers.')}")
        return self

    def provider_named(self, name: str) -> ProviderSpec | None:
        return next((provider for provider in self.providers if provider.name == name), None)

    def rule_named(self, name: str | None) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None) if name else None

    def credential_problems(self) -> list[tuple[tuple, str]]:
        """Where ``providers:`` and rules' ``credentials:`` contradict each other, as (key path, problem): a
        provider named twice, a rule naming an unknown provider or one provider twice, a deny rule with
        credentials. (What each kind accepts is checked by ``bot.providers``.)"""
        problems: list[tuple[tuple, str]] = []
        seen: set[str] = set()
        for index, provider in enumerate(self.providers):
            if provider.name in seen:
                problems.append((("providers", index, "name"), f"provider {provider.name!r} is listed more than once"))
            seen.add(provider.name)
        for index, rule in enumerate(self.rules):
            named: set[str] = set()
            for position, spec in enumerate(rule.credentials):
                where = ("rules", index, "credentials", position, "provider")
                if spec.provider not in seen:
                    known = ", ".join(sorted(seen)) or "none is defined under providers:"
                    problems.append((where, f"unknown provider {spec.provider!r} (known: {known})"))
                elif spec.provider in named:
                    problems.append((where, f"provider {spec.provider!r} is named twice in this rule"))
                named.add(spec.provider)
            if rule.credentials and rule.decision is Decision.DENY:
                problems.append((("rules", index, "credentials"), "a deny rule grants nothing: remove credentials"))
        return problems

    def first_use(self, rule: Rule | None) -> FirstUse:
        return (rule.first_use if rule and rule.first_use else None) or self.defaults.first_use

    def sends_to_people(self, rule: Rule) -> bool:
        """An auto-approve rule whose guard rails can send a request to people instead."""
        return rule.auto_approve_limit is not None or self.first_use(rule) == "require_approval"

    def pending_timeout(self, rule: Rule | None) -> int:
        if rule and rule.pending_timeout_seconds:
            return rule.pending_timeout_seconds
        return self.defaults.pending_timeout_seconds

    def _check_issuers(self) -> None:
        """Issuer names and URLs are unique, and no HMAC identity could pass for an OIDC one (``<name>:...``)."""
        seen_names: set[str] = set()
        seen_urls: set[str] = set()
        for issuer in self.issuers:
            if issuer.name in seen_names:
                raise ValueError(f"issuer name {issuer.name!r} is listed more than once")
            if issuer.issuer in seen_urls:
                raise ValueError(f"issuer {issuer.issuer!r} is listed more than once (one entry per issuer URL)")
            seen_names.add(issuer.name)
            seen_urls.add(issuer.issuer)
            for identity in self.identities:
                if identity.name == issuer.name or identity.name.startswith(issuer.name + ":"):
                    raise ValueError(
                        f"identity {identity.name!r} collides with issuer {issuer.name!r}: OIDC callers are named "
                        f"{issuer.name}:<sub>, so an HMAC identity must not be named {issuer.name!r} or start "
                        f"with {issuer.name + ':'!r}"
                    )

    def issuer_named_by(self, iss: str) -> Issuer | None:
        """The trusted issuer whose ``issuer`` URL is exactly ``iss`` (no normalisation), else None."""
        return next((issuer for issuer in self.issuers if issuer.issuer == iss), None)

    def remind_after(self, rule: Rule | None) -> int | None:
        """Seconds after which the approvers of a pending request are reminded, or None (never); a reminder
        due at or after the pending timeout is never sent."""
        after = (rule.remind_after_seconds if rule and rule.remind_after_seconds else None) or \
            self.defaults.remind_after_seconds
        return after if after is not None and after < self.pending_timeout(rule) else None

    def approvers_for(self, rule: Rule | None) -> Approvers:
        return (rule.approvers if rule and rule.approvers else None) or self.defaults.approvers or Approvers()

    def audience_for(self, environment: str) -> str | None:
        """The ``aud`` of a token for ``environment`` when its request names none: the environment's own audience
        (``environments: {name: {audience: …}}``), else ``defaults.audience``; None: the issuer's URL."""
        own = self.environments.get(environment) if self.environments else None
        return (own.audience if own else None) or self.defaults.audience

    def known_environments(self) -> set[str] | None:
        """The environments a request may name, or None when any is accepted."""
        if self.environments is not None:
            return set(self.environments)
        named: set[str] = set()
        for rule in self.rules:
            if rule.match.environment is None or any(_is_glob(env) for env in rule.match.environment):
                return None
            named.update(rule.match.environment)
        return named

    def ttl_cap(self, rule: Rule | None) -> int:
        cap = self.defaults.max_ttl_seconds
        if rule and rule.max_ttl_seconds:
            cap = min(cap, rule.max_ttl_seconds)
        return cap

    def default_ttl(self, rule: Rule | None) -> int:
        if rule and rule.default_ttl_seconds:
            return rule.default_ttl_seconds
        return self.defaults.ttl_seconds


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome of :func:`decide`: the decision, the rule that made it (None for ``default``), a one-line
    ``reason`` and ``reasons``, the explanation condition by condition (stored with the request, shown on its card).

    ``guard`` names the guard rail that sent an auto-approvable request to people (``auto_approve_limit`` or
    ``first_use``), else None."""

    decision: Decision
    rule: Rule | None
    reason: str
    reasons: tuple[str, ...] = ()
    guard: str | None = None


@dataclass(frozen=True)
class Usage:
    """What the guard rails need from history: automatic approvals of this identity under the deciding rule within
    its ``auto_approve_limit.per_seconds``, and the scopes this identity has been granted before."""

    recent_auto_approvals: int = 0
    known_scopes: frozenset[str] = frozenset()


def _any_glob(value: str, patterns: list[str]) -> bool:
    # Run for every rule on every request: a plain loop, and a pattern equal to the value needs no match.
    for pattern in patterns:
        if pattern == value or fnmatchcase(value, pattern):
            return True
    return False


def _claim_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else None


def why_not(
    rule: Rule,
    caller: Caller,
    environment: str,
    scopes: tuple[str, ...],
    audience: str | None = None,
    at: datetime | None = None,
) -> str | None:
    """The first condition of ``rule`` (``match`` and ``when``) the request fails, as a sentence; None when the
    rule matches. ``at`` (aware) is the time ``when`` is read at; without it ``when`` is not checked."""
    match = rule.match
    if not _any_glob(caller.identity, match.identity):
        return f"identity {caller.identity!r} is not one of {match.identity}"
    if match.environment is not None and not _any_glob(environment, match.environment):
        return f"environment {environment!r} is not one of {match.environment}"
    if match.scopes is not None:
        outside = [s for s in scopes if not _any_glob(s, match.scopes)]
        if rule.decision is Decision.DENY and len(outside) == len(scopes):
            return f"no requested scope matches {match.scopes}"
        if rule.decision is not Decision.DENY and outside:
            return f"scope {outside[0]!r} is not covered by {match.scopes}"
    if match.audiences is not None and (audience is None or not _any_glob(audience, match.audiences)):
        return f"audience {audience!r} is not one of {match.audiences}"
    for claim, pattern in match.claims.items():
        value = _claim_text(caller.claims.get(claim))
        if value is None or not fnmatchcase(value, pattern):
            shown = "missing" if claim not in caller.claims else repr(caller.claims.get(claim))
            return f"claim {claim} is {shown}, not {pattern!r}"
    if rule.when is not None and at is not None and not rule.when.holds(at):
        local = at.astimezone(ZoneInfo(rule.when.timezone))
        return f"it is {local:%a %H:%M} in {rule.when.timezone}, outside {rule.when.describe()}"
    return None


def rule_matches(
    rule: Rule,
    caller: Caller,
    environment: str,
    scopes: tuple[str, ...],
    audience: str | None = None,
    at: datetime | None = None,
) -> bool:
    """True when every condition of ``rule.match`` (and ``rule.when`` at ``at``) holds for the request."""
    return why_not(rule, caller, environment, scopes, audience, at) is None


def _reason_problem(rule: Rule, reason: str | None) -> str | None:
    if not rule.needs_reason():
        return None
    if not reason or not reason.strip():
        wanted = f" matching {rule.reason_pattern!r}" if rule.reason_pattern else ""
        return f"rule {rule.name!r} needs a reason{wanted}; the request gives none"
    if rule.reason_pattern and not re.search(rule.reason_pattern, reason):
        return f"rule {rule.name!r} needs a reason matching {rule.reason_pattern!r} (e.g. a ticket reference)"
    return None


def decide(
    policy: Policy,
    caller: Caller,
    environment: str,
    scopes: tuple[str, ...],
    audience: str | None = None,
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> PolicyDecision:
    """Evaluate the policy for one access request (DESIGN.md "Policy file"): a matching ``deny`` rule wins, then
    the first matching rule, then ``default``. A rule whose ``when`` does not hold at ``at`` does not match; the
    deciding rule's ``require_reason`` / ``reason_pattern`` turn a missing or wrong reason into a denial.
    Guard rails (``auto_approve_limit``, ``first_use``) are applied afterwards by :func:`apply_guard_rails`."""
    at = at or datetime.now(UTC)
    explained = [(rule, why_not(rule, caller, environment, scopes, audience, at)) for rule in policy.rules]
    lines = tuple(
        f"{rule.name} ({rule.decision.value}): " + ("matches" if why is None else f"no: {why}")
        for rule, why in explained
    )
    matching = [rule for rule, why in explained if why is None]
    for rule in matching:
        if rule.decision is Decision.DENY:
            return PolicyDecision(Decision.DENY, rule, f"rule {rule.name!r} denies it", lines)
    if matching:
        rule = matching[0]
        problem = _reason_problem(rule, reason)
        if problem:
            return PolicyDecision(Decision.DENY, rule, problem, lines + (problem,))
        return PolicyDecision(rule.decision, rule, f"first matching rule {rule.name!r}", lines)
    return PolicyDecision(policy.default, None, f"no rule matches; the default is {policy.default.value}",
                          lines + (f"default: {policy.default.value}",))


def unknown_environment(policy: Policy, environment: str) -> str | None:
    """Why a request for ``environment`` is refused before any rule is tried (the API's 422
    ``unknown_environment``), or None when the policy knows it (``Policy.known_environments``). One sentence, for
    the API, ``policy explain`` and ``policy test`` alike."""
    known = policy.known_environments()
    if known is None or environment in known:
        return None
    return f"Environment {environment!r} is not known to the policy; use one of: {', '.join(sorted(known))}."


def granted_ttl(policy: Policy, rule: Rule | None, requested: int | None) -> int:
    """The TTL in seconds a grant under ``rule`` gets: ``requested`` if within the cap (the rule's
    ``max_ttl_seconds`` and ``defaults.max_ttl_seconds``, whichever is lower), else :class:`TTLTooLong`;
    without a request, the rule's ``default_ttl_seconds`` (else ``defaults.ttl_seconds``) held to the cap."""
    cap = policy.ttl_cap(rule)
    if requested is None:
        return min(policy.default_ttl(rule), cap)
    if requested > cap:
        where = f"rule {rule.name!r}" if rule else "the policy"
        raise TTLTooLong(f"ttl_seconds {requested} is above the {cap} s cap of {where}; ask for {cap} or less.")
    return requested


def apply_guard_rails(
    policy: Policy, outcome: PolicyDecision, identity: str, scopes: tuple[str, ...], usage: Usage
) -> PolicyDecision:
    """Send an auto-approvable request to people when the rule's ``auto_approve_limit`` is used up or, under
    ``first_use: require_approval``, when ``identity`` was never granted one of ``scopes``; else ``outcome``."""
    rule = outcome.rule
    if outcome.decision is not Decision.AUTO_APPROVE or rule is None:
        return outcome
    if policy.first_use(rule) == "require_approval":
        new = [scope for scope in scopes if scope not in usage.known_scopes]
        if new:
            why = (f"first use: {identity} has never been granted {', '.join(repr(s) for s in new)}; "
                   "people decide the first time")
            return PolicyDecision(Decision.REQUIRE_APPROVAL, rule, why, outcome.reasons + (why,), "first_use")
    limit = rule.auto_approve_limit
    if limit is not None and usage.recent_auto_approvals >= limit.count:
        why = (f"auto-approve limit reached: {usage.recent_auto_approvals} automatic approvals of {identity} under "
               f"rule {rule.name!r} in the last {limit.per_seconds} s (limit {limit.count}); people decide this one")
        return PolicyDecision(Decision.REQUIRE_APPROVAL, rule, why, outcome.reasons + (why,), "auto_approve_limit")
    return outcome


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


Locate = Callable[[tuple[Any, ...]], int | None]
_RULE_PREFIX = re.compile(r"^rules\[(\d+)\]")


Check = Callable[["Policy"], list[tuple[tuple, str]]]


def validate_policy(data: object, source: str = "<policy>", locate: Locate | None = None,
                    checks: tuple[Check, ...] = ()) -> Policy:
    """Validate a parsed policy document; raise :class:`PolicyError` naming ``source``, the line (when
    ``locate`` maps a key path such as ``("rules", 2, "when", "timezone")`` to a 1-based line), the key and the
    problem. ``checks``: more checks of the valid model, each returning (key path, problem) pairs (e.g. what
    ``bot.providers`` knows of each kind of provider); all their problems are listed together."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping of keys (defaults, identities, rules, ...)")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            loc = tuple(part for part in error["loc"] if not str(part).startswith(("function-", "literal[")))
            if error["type"] == "extra_forbidden":
                message = "unknown key (check its spelling and indentation)"
            if not loc and (found := _RULE_PREFIX.match(message)):  # a whole-file check that names a rule
                loc = ("rules", int(found.group(1)))
            line = locate(loc) if locate else None
            where = f"{source}:{line}" if line else source
            if loc and loc[-1] == "[key]":  # a map's key itself is wrong (e.g. an empty environment name)
                loc, message = loc[:-2], f"name {loc[-2]!r}: {message}"
            problems.append(f"{where}: {_format_location(loc)}: {message}")
        raise PolicyError("invalid policy file:\n  " + "\n  ".join(problems)) from None
    problems = policy.credential_problems()
    for check in checks:
        problems += check(policy)
    raise_problems(problems, source, locate)
    return policy


def raise_problems(problems: list[tuple[tuple, str]], source: str = "<policy>", locate: Locate | None = None) -> None:
    """Raise :class:`PolicyError` listing ``problems`` ((key path, sentence) pairs) as :func:`validate_policy`
    does, with the file and line of each key; nothing when there is none."""
    if not problems:
        return
    lines = []
    for loc, message in problems:
        line = locate(loc) if locate else None
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {_format_location(loc)}: {message}")
    raise PolicyError("invalid policy file:\n  " + "\n  ".join(lines))


# -- explain and check --------------------------------------------------------------------------------------------


def explain(
    policy: Policy,
    caller: Caller,
    environment: str,
    scopes: tuple[str, ...],
    audience: str | None = None,
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> tuple[PolicyDecision, list[tuple[Rule, str | None]]]:
    """The decision and, rule by rule in file order, why each rule matched (None) or not (a sentence)."""
    at = at or datetime.now(UTC)
    return (
        decide(policy, caller, environment, scopes, audience, reason=reason, at=at),
        [(rule, why_not(rule, caller, environment, scopes, audience, at)) for rule in policy.rules],
    )


# -- check --------------------------------------------------------------------------------------------------------


def _covers(wide: list[str] | None, narrow: list[str] | None) -> bool:
    """Every value ``narrow`` admits is admitted by ``wide`` (conservative: a glob is covered only by "*" or itself)."""
    if wide is None:
        return True
    if narrow is None:
        return "*" in wide
    return all(
        "*" in wide or pattern in wide or (not _is_glob(pattern) and _any_glob(pattern, wide)) for pattern in narrow
    )


def _match_covers(wide: Match, narrow: Match) -> bool:
    """Every request ``narrow`` matches, ``wide`` matches too (identity, environment, scopes, audiences, claims)."""
    return (
        _covers(wide.identity, narrow.identity)
        and _covers(wide.environment, narrow.environment)
        and _covers(wide.scopes, narrow.scopes)
        and _covers(wide.audiences, narrow.audiences)
        and all(key in narrow.claims and _covers([pattern], [narrow.claims[key]])
                for key, pattern in wide.claims.items())
    )


def _shadows(earlier: Rule, later: Rule) -> bool:
    # a rule limited in time leaves the other hours to later rules
    return earlier.decision is not Decision.DENY and earlier.when is None and _match_covers(earlier.match, later.match)


def _hides(deny: Rule, rule: Rule) -> bool:
    """``deny`` matches every request ``rule`` matches, so ``rule`` can never decide: a matching deny rule wins
    wherever it stands. A deny rule matches when *any* requested scope is among its ``scopes``, and ``rule`` only
    when *all* are among its own, so covering ``rule``'s scopes is enough."""
    return deny.decision is Decision.DENY and deny.when is None and _match_covers(deny.match, rule.match)


def lint(policy: Policy) -> list[str]:
    """Warnings about a valid policy: rules that can never decide (a rule before them, or a deny rule anywhere,
    matches every request they match), auto-approval without a cap of its own, and auto-approve rules whose tokens
    would pass for ones people approve in another environment (:mod:`bot.domain.cross_environment`)."""
    from bot.domain.cross_environment import cross_environment_warnings  # it reads Policy: imported late

    warnings = []
    for index, rule in enumerate(policy.rules):
        hidden_by = next(((i, deny) for i, deny in enumerate(policy.rules) if i != index and _hides(deny, rule)),
                         None) if rule.decision is not Decision.DENY else None
        if hidden_by is not None:
            deny_index, deny = hidden_by
            where = "comes first and" if deny_index < index else "comes later but, as a deny rule, wins and"
            warnings.append(
                f"rules[{index}] ({rule.name}) can never decide: deny rule rules[{deny_index}] ({deny.name}) "
                f"{where} matches every request it matches"
            )
        elif rule.decision is not Decision.DENY:
            for earlier_index, earlier in enumerate(policy.rules[:index]):
                if _shadows(earlier, rule):
                    warnings.append(
                        f"rules[{index}] ({rule.name}) can never decide: rules[{earlier_index}] ({earlier.name}) "
                        "comes first and matches every request it matches"
                    )
                    break
        if rule.decision is Decision.AUTO_APPROVE and rule.max_ttl_seconds is None:
            warnings.append(
                f"rules[{index}] ({rule.name}) auto-approves with no max_ttl_seconds of its own: only "
                f"defaults.max_ttl_seconds ({policy.defaults.max_ttl_seconds} s) caps it"
            )
    return warnings + cross_environment_warnings(policy)
