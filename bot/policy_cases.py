"""Policy tests for a platform team's CI: a YAML list of access requests and the decision each must get
(``grantbot policy test POLICY CASES.yaml``; DESIGN.md "Policy file", policy tests).

A case names the request (``identity``, ``environment``, ``scopes``, and optionally ``claims``, ``audience``,
``reason``, ``at``) and what the policy must decide (``expect``: auto_approve, require_approval or deny) and, when
given, by which rule (``rule``; ``default`` when no rule may match). The guard rails that depend on history
(``auto_approve_limit``, ``first_use``) are not applied: a case tests the policy's rules, not a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bot.domain.errors import PolicyError
from bot.domain.models import Caller, Decision
from bot.domain.policy import Policy, decide, unknown_environment
from bot.policy_file import locator


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _claim_text(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


class Case(BaseModel):
    """One request and the decision the policy must give it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    identity: str = Field(min_length=1)
    environment: str = Field(min_length=1)
    scopes: Annotated[list[str], BeforeValidator(_as_list)] = Field(min_length=1)
    claims: dict[str, Annotated[str, BeforeValidator(_claim_text)]] = Field(default_factory=dict)
    audience: str | None = None
    reason: str | None = None
    at: datetime | None = None  # ISO 8601; a time without a zone is UTC; default: now
    expect: Decision
    rule: str | None = None  # the deciding rule's name, or "default"; not checked when absent

    def label(self) -> str:
        return self.name or f"{self.identity} {self.environment} {' '.join(self.scopes)}"


@dataclass(frozen=True)
class Mismatch:
    """A case whose decision differs from the expected one: ``expected`` and ``got`` as one line each."""

    line: int | None
    index: int
    case: Case
    expected: str
    got: str


def load_cases(text: str, source: str) -> list[tuple[int | None, Case]]:
    """The cases of a cases file with their 1-based lines; raises :class:`PolicyError` naming ``source``, the line
    and the key of the first problems (as for policy files)."""
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, list) or not data:
        raise PolicyError(f"{source}: a cases file is a YAML list of cases, e.g. "
                          "- {identity: deploy-bot, environment: staging, scopes: [db:read], expect: auto_approve}")
    locate = locator(tree)
    cases, problems = [], []
    for index, item in enumerate(data):
        line = locate((index,)) if locate else None
        try:
            cases.append((line, Case.model_validate(item)))
        except ValidationError as exc:
            for error in exc.errors()[:3]:
                key = ".".join(str(part) for part in error["loc"]) or "(case)"
                message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                key_line = (locate((index, *error["loc"][:1])) if locate else None) or line
                problems.append(f"{source}:{key_line}: [{index}].{key}: {message}")
    if problems:
        raise PolicyError("invalid cases file:\n  " + "\n  ".join(problems))
    return cases


def _outcome(decision: Decision, rule: str | None) -> str:
    """e.g. "deny by rule no-admin", "deny by the default", or "deny" (``rule`` None: any rule)."""
    if rule is None:
        return decision.value
    return f"{decision.value} by the default" if rule == "default" else f"{decision.value} by rule {rule}"


def run_cases(policy: Policy, cases: list[tuple[int | None, Case]]) -> list[Mismatch]:
    """Decide every case with ``policy`` (``bot.domain.policy.decide``); the cases whose decision, or deciding rule
    when the case names one, differs."""
    mismatches = []
    for index, (line, case) in enumerate(cases):
        if (unknown := unknown_environment(policy, case.environment)) is not None:
            mismatches.append(Mismatch(line, index, case, _outcome(case.expect, case.rule),
                                       f"refused before any rule (422): {unknown}"))
            continue
        at = case.at or datetime.now(UTC)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        # As a request that names none gets its environment's audience, and rules see that one.
        audience = case.audience or policy.audience_for(case.environment)
        outcome = decide(policy, Caller(case.identity, dict(case.claims)), case.environment, tuple(case.scopes),
                         audience, reason=case.reason, at=at)
        got_rule = outcome.rule.name if outcome.rule else "default"
        if outcome.decision is not case.expect or (case.rule is not None and case.rule != got_rule):
            mismatches.append(Mismatch(line, index, case, _outcome(case.expect, case.rule),
                                       f"{_outcome(outcome.decision, got_rule)} ({outcome.reason})"))
    return mismatches
