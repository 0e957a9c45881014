"""``policy check``: can an auto-approve rule of one environment mint a token that passes for one people must approve
in another?

A resource server trusts a token for its audience and scope. If a staging rule auto-approves ``db:write`` for the
audience production's resource servers accept, the staging token works in production and Slack approval is
bypassed (issue 9). So for every auto-approve rule A and every ``require_approval`` rule B this looks for

- an environment A matches and a *different* one B matches (``environment: "*"`` or none matches every one; with
  an ``environments:`` list or map only those are requested, else any name is);
- a scope both rules' ``scopes`` globs can match (none: every scope);
- an audience A can mint that B guards: A mints the audiences its ``match.audiences`` globs allow, or, without
  them, *any* audience a request names; B guards the audiences its ``match.audiences`` globs allow, or, without
  them, its environment's own (``environments: {name: {audience}}``, else ``defaults.audience``, else the issuer).

Identities, claims and ``when`` are left out on purpose: a resource server does not know which rule minted a
token, so whoever may ask under A can bypass B.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from bot.domain.globs import is_glob, literal, matches_everything, overlap
from bot.domain.models import Decision

if TYPE_CHECKING:
    from bot.domain.policy import Policy, Rule

ISSUER = "the issuer's URL"  # the audience of last resort, unknown until grantbot runs (GRANTBOT_ISSUER)


@dataclass(frozen=True)
class _Where:
    """An environment a rule matches: a name, or a description of many (when any name may be requested)."""

    label: str
    name: str | None  # a single known name, else None


def _common(first: list[str] | None, second: list[str] | None) -> str | None:
    """A value both glob lists (None: anything) can match, shown for a message; None when they share none."""
    if first is None and second is None:
        return "any scope"
    if first is None or second is None:
        return repr((first or second)[0])
    for a in first:
        for b in second:
            if overlap(a, b):
                if not is_glob(a) or not is_glob(b):
                    return repr(b if is_glob(a) else a)  # the plain scope, e.g. 'db:write' for 'db:*'
                return f"{a!r} / {b!r}"
    return None


def _environment_pairs(policy: Policy, a: Rule, b: Rule) -> list[tuple[_Where, _Where]]:
    """Pairs (where A auto-approves, where B asks people) of different environments."""
    known = policy.known_environments()
    if known is not None:
        def names(rule: Rule) -> list[str]:
            globs = rule.match.environment
            return [n for n in sorted(known) if globs is None or any(fnmatchcase(n, g) for g in globs)]
        return [(_Where(repr(x), x), _Where(repr(y), y)) for y in names(b) for x in names(a) if x != y]

    # Any name may be requested (no ``environments:`` list or map), so every environment has the same default
    # audience: one pair of different environments is enough.
    def where(rule: Rule) -> list[_Where]:
        globs = rule.match.environment
        if globs is None:
            return [_Where("any environment", None)]
        return [_Where(f"an environment matching {g!r}", None) if is_glob(g) else _Where(repr(g), g) for g in globs]

    return [(x, y) for y in where(b) for x in where(a) if x.name is None or y.name is None or x.name != y.name][:1]


def _audience(policy: Policy, environment: str | None) -> str:
    """The audience a request for ``environment`` (None: any, all alike) gets when it names none."""
    return (policy.audience_for(environment) if environment is not None else policy.defaults.audience) or ISSUER


def _guarded(policy: Policy, b: Rule, where: _Where) -> list[tuple[str | None, str]]:
    """What B guards as (glob, shown) pairs; glob None: the issuer's URL, unknown until grantbot runs."""
    if b.match.audiences is not None:
        return [(glob, repr(glob)) for glob in b.match.audiences]
    audience = _audience(policy, where.name)
    return [(None, ISSUER)] if audience == ISSUER else [(literal(audience), repr(audience))]


def _mintable(a: Rule, guarded: list[tuple[str | None, str]]) -> str | None:
    """One of the ``guarded`` audiences A can mint, shown for a message; None when there is none."""
    if a.match.audiences is None:
        return guarded[0][1]
    for mine in a.match.audiences:
        for glob, shown in guarded:
            if (matches_everything(mine) if glob is None else overlap(mine, glob)):
                return repr(mine) if glob is not None and not is_glob(mine) else shown
    return None


def cross_environment_warnings(policy: Policy) -> list[str]:
    """One warning per (auto-approve rule, ``require_approval`` rule) pair whose tokens could be confused across
    environments (see the module), naming both rules, the scope, the environments and the audience."""
    warnings = []
    rules = list(enumerate(policy.rules))
    for i, a in rules:
        if a.decision is not Decision.AUTO_APPROVE:
            continue
        for j, b in rules:
            if b.decision is not Decision.REQUIRE_APPROVAL:
                continue
            scope = _common(a.match.scopes, b.match.scopes)
            if scope is None:
                continue
            for a_env, b_env in _environment_pairs(policy, a, b):
                guarded = _guarded(policy, b, b_env)
                audience = _mintable(a, guarded)
                if audience is None:
                    continue
                own = _audience(policy, a_env.name)
                own_shown = own if own == ISSUER else repr(own)
                if a.match.audiences is None and own_shown == audience:
                    how = f"with its audience {audience}"
                    fix = ("give each environment its own audience (environments: {name: {audience: …}}) and "
                           f"limit rules[{i}] with match.audiences")
                elif a.match.audiences is None:
                    how = f"for any audience a request names, {audience} included"
                    fix = f"limit rules[{i}] with match.audiences" + (
                        f" (e.g. to [{own_shown}])" if own != ISSUER else "")
                else:
                    how = f"for audiences matching {a.match.audiences}, {audience} included"
                    fix = f"narrow rules[{i}]'s match.audiences"
                warnings.append(
                    f"rules[{i}] ({a.name}) auto-approves {scope} in {a_env.label} {how}, but rules[{j}] "
                    f"({b.name}) sends it to people in {b_env.label}: those tokens would pass there without "
                    f"approval; {fix}"
                )
                break
    return warnings


__all__ = ["ISSUER", "cross_environment_warnings"]
