"""The policy file: its model (validated with pydantic) and the decision it makes for an access request.

Shape and semantics follow DESIGN.md "Policy file": a matching ``deny`` rule always wins; otherwise the first
matching rule in file order decides; nothing matches -> ``default``. Globs are ``fnmatch`` patterns, matched
case-sensitively. A grant rule's ``scopes`` must cover *every* requested scope; a deny rule's ``scopes`` match
when *any* requested scope matches (so ``db:read db:admin`` cannot slip past a rule denying ``*:admin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from bot.domain.errors import PolicyError
from bot.domain.models import Caller, Decision


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Globs = Annotated[list[str], BeforeValidator(_as_list)]


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


class Defaults(_Strict):
    ttl_seconds: int = Field(default=900, gt=0)
    max_ttl_seconds: int = Field(default=3600, gt=0)
    pending_timeout_seconds: int = Field(default=3600, gt=0)
    channel: str | None = None
    audience: str | None = None
    approvers: Approvers | None = None


class Identity(_Strict):
    """An HMAC caller; its shared secret is read from the environment variable ``secret_env``."""

    name: str = Field(min_length=1)
    secret_env: str = Field(min_length=1)


class Issuer(_Strict):
    """A trusted CI OIDC issuer (verification arrives with the OIDC work; the key is accepted now)."""

    name: str
    issuer: str
    audience: str
    jwks_uri: str | None = None


class Match(_Strict):
    identity: Globs = Field(default_factory=lambda: ["*"])
    environment: Globs | None = None
    scopes: Globs | None = None
    audiences: Globs | None = None
    claims: dict[str, str] = Field(default_factory=dict)


class Rule(_Strict):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    decision: Decision
    approvers: Approvers | None = None
    max_ttl_seconds: int | None = Field(default=None, gt=0)
    default_ttl_seconds: int | None = Field(default=None, gt=0)
    channel: str | None = None


class Policy(_Strict):
    """The whole policy file (DESIGN.md "Policy file", core keys)."""

    defaults: Defaults = Field(default_factory=Defaults)
    environments: list[str] | None = Field(
        default=None, description="the environments requests may name; default: those the rules name"
    )
    identities: list[Identity] = Field(default_factory=list)
    issuers: list[Issuer] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    default: Decision = Decision.DENY
    people: dict[str, str] = Field(
        default_factory=dict, description="CI login (GitHub actor, GitLab user_login) -> Slack user ID"
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
        for index, rule in enumerate(self.rules):
            if rule.decision is Decision.REQUIRE_APPROVAL and (problem := self.approvers_for(rule).problem()):
                raise ValueError(
                    f"rules[{index}] ({rule.name}): decision require_approval {problem} "
                    "(on the rule or in defaults.approvers)"
                )
        if self.default is Decision.REQUIRE_APPROVAL and (problem := self.approvers_for(None).problem()):
            raise ValueError(f"default: require_approval {problem.replace('approvers.', 'defaults.approvers.')}")
        return self

    def approvers_for(self, rule: Rule | None) -> Approvers:
        return (rule.approvers if rule and rule.approvers else None) or self.defaults.approvers or Approvers()

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
    """The outcome of :func:`decide`: the decision, the rule that made it (None for ``default``) and why."""

    decision: Decision
    rule: Rule | None
    reason: str


def _any_glob(value: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def rule_matches(
    rule: Rule, caller: Caller, environment: str, scopes: tuple[str, ...], audience: str | None
) -> bool:
    """True when every condition of ``rule.match`` holds for the request."""
    match = rule.match
    if not _any_glob(caller.identity, match.identity):
        return False
    if match.environment is not None and not _any_glob(environment, match.environment):
        return False
    if match.scopes is not None:
        hits = [_any_glob(scope, match.scopes) for scope in scopes]
        if not (any(hits) if rule.decision is Decision.DENY else all(hits)):
            return False
    if match.audiences is not None and (audience is None or not _any_glob(audience, match.audiences)):
        return False
    for claim, pattern in match.claims.items():
        value = caller.claims.get(claim)
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str) or not fnmatchcase(value, pattern):
            return False
    return True


def decide(
    policy: Policy, caller: Caller, environment: str, scopes: tuple[str, ...], audience: str | None = None
) -> PolicyDecision:
    """Evaluate the policy for one access request: deny wins, then first match, then ``default``."""
    matching = [rule for rule in policy.rules if rule_matches(rule, caller, environment, scopes, audience)]
    for rule in matching:
        if rule.decision is Decision.DENY:
            return PolicyDecision(Decision.DENY, rule, f"rule {rule.name!r} denies it")
    if matching:
        rule = matching[0]
        return PolicyDecision(rule.decision, rule, f"first matching rule {rule.name!r}")
    return PolicyDecision(policy.default, None, f"no rule matches; the default is {policy.default.value}")


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate a parsed policy document; raise :class:`PolicyError` naming ``source``, the key and the problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping of keys (defaults, identities, rules, ...)")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (check its spelling and indentation)"
            problems.append(f"{source}: {_format_location(error['loc'])}: {message}")
        raise PolicyError("invalid policy file:\n  " + "\n  ".join(problems)) from None


# -- explain and check --------------------------------------------------------------------------------------------


def why_not(
    rule: Rule, caller: Caller, environment: str, scopes: tuple[str, ...], audience: str | None = None
) -> str | None:
    """The first condition of ``rule.match`` the request fails, as a sentence; None when the rule matches."""
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
        if not rule_matches(Rule(name="_", match=Match(claims={claim: pattern}), decision=rule.decision),
                            caller, environment, scopes, audience):
            return f"claim {claim}={caller.claims.get(claim)!r} does not match {pattern!r}"
    return None


def explain(
    policy: Policy, caller: Caller, environment: str, scopes: tuple[str, ...], audience: str | None = None
) -> tuple[PolicyDecision, list[tuple[Rule, str | None]]]:
    """The decision and, rule by rule in file order, why each rule matched (None) or not (a sentence)."""
    return (
        decide(policy, caller, environment, scopes, audience),
        [(rule, why_not(rule, caller, environment, scopes, audience)) for rule in policy.rules],
    )


def _covers(wide: list[str] | None, narrow: list[str] | None) -> bool:
    """Every value ``narrow`` admits is admitted by ``wide`` (conservative: a glob is covered only by "*" or itself)."""
    if wide is None:
        return True
    if narrow is None:
        return "*" in wide
    return all(
        "*" in wide or pattern in wide or (not _is_glob(pattern) and _any_glob(pattern, wide)) for pattern in narrow
    )


def _shadows(earlier: Rule, later: Rule) -> bool:
    a, b = earlier.match, later.match
    return (
        earlier.decision is not Decision.DENY
        and _covers(a.identity, b.identity)
        and _covers(a.environment, b.environment)
        and _covers(a.scopes, b.scopes)
        and _covers(a.audiences, b.audiences)
        and all(key in b.claims and _covers([pattern], [b.claims[key]]) for key, pattern in a.claims.items())
    )


def lint(policy: Policy) -> list[str]:
    """Warnings about a valid policy: rules that can never decide, auto-approval without a cap of its own."""
    warnings = []
    for index, rule in enumerate(policy.rules):
        if rule.decision is not Decision.DENY:
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
    return warnings
