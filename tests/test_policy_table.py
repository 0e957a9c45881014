"""The policy's decisions, table-driven: identity, claims, environment, scopes, audience, TTL, reasons, time of day
(an injected instant, across the DST changes of two time zones), auto-approve limits and first use."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.domain.errors import TTLTooLong
from bot.domain.models import Caller, Decision
from bot.domain.policy import Usage, apply_guard_rails, decide, granted_ttl
from bot.policy_file import parse_policy

POLICY = parse_policy("""
defaults: {ttl_seconds: 900, max_ttl_seconds: 3600, approvers: {users: [U0APPROVER]}}
environments: [staging, production]
rules:
  - name: no-admin
    match: {scopes: ["*:admin"]}
    decision: deny
  - name: no-partner
    match: {audiences: ["https://partner.*"]}
    decision: deny
  - name: staging-read
    match: {environment: staging, scopes: ["db:read", "logs:*"]}
    decision: auto_approve
    max_ttl_seconds: 1800
    default_ttl_seconds: 600
    auto_approve_limit: {count: 3, per_seconds: 3600}
  - name: ci-deploy
    match:
      identity: "github:*"
      environment: production
      scopes: ["deploy:*"]
      claims: {ref_protected: true, repository: "acme/*"}
    decision: auto_approve
    max_ttl_seconds: 600
    first_use: require_approval
  - name: business-hours-write
    match: {identity: deploy-bot, environment: production, scopes: ["db:write"]}
    when: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00", timezone: Europe/Berlin}
    decision: auto_approve
    max_ttl_seconds: 900
  - name: prod-write
    match: {identity: deploy-bot, environment: production, scopes: ["db:write", "deploy:*"]}
    decision: require_approval
    reason_pattern: "[A-Z]+-[0-9]+"
  - name: night-batch
    match: {identity: "batch-*", environment: production, scopes: ["db:read"]}
    when: {hours: "22:00-06:00", timezone: America/New_York}
    decision: auto_approve
  - name: batch-read
    match: {identity: "batch-*", environment: production, scopes: ["db:read"]}
    decision: require_approval
    require_reason: true
default: deny
""", "table-policy")

AUTO, ASK, DENY = Decision.AUTO_APPROVE, Decision.REQUIRE_APPROVAL, Decision.DENY
# Berlin leaves winter time on Sun 2026-03-29 01:00 UTC and returns on Sun 2026-10-25 01:00 UTC;
# New York on Sun 2026-03-08 07:00 UTC. 07:30 UTC is 08:30 in Berlin before the change and 09:30 after.
FRI_BEFORE_SPRING = datetime(2026, 3, 27, 7, 30, tzinfo=UTC)  # Fri 08:30 CET: before business hours
MON_AFTER_SPRING = datetime(2026, 3, 30, 7, 30, tzinfo=UTC)  # Mon 09:30 CEST: within
WEEKDAY_NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)  # Wed 12:00 CEST
KNOWN = frozenset({"deploy:api"})

# id, identity, claims, environment, scopes, audience, reason, at, usage, ttl asked,
#     -> decision, rule, words in the reason, ttl granted (or TTLTooLong)
CASES = [
    # identity and environment
    ("staging read", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON, None, None,
     AUTO, "staging-read", "first matching rule 'staging-read'", 600),
    ("staging read, any identity", "other-bot", {}, "staging", ("logs:app",), None, None, WEEKDAY_NOON, None, None,
     AUTO, "staging-read", "staging-read", 600),
    ("unknown identity in production", "other-bot", {}, "production", ("db:write",), None, "OPS-1", WEEKDAY_NOON,
     None, None, DENY, None, "no rule matches; the default is deny", None),
    ("staging write matches nothing", "deploy-bot", {}, "staging", ("db:write",), None, None, WEEKDAY_NOON, None,
     None, DENY, None, "no rule matches", None),
    # scopes: a grant rule must cover all; a deny rule catches any
    ("two staging scopes", "deploy-bot", {}, "staging", ("db:read", "logs:app"), None, None, WEEKDAY_NOON, None,
     None, AUTO, "staging-read", "staging-read", 600),
    ("admin smuggled in", "deploy-bot", {}, "staging", ("db:read", "db:admin"), None, None, WEEKDAY_NOON, None,
     None, DENY, "no-admin", "rule 'no-admin' denies it", None),
    ("admin alone", "github:repo:acme/api", {"ref_protected": True, "repository": "acme/api"}, "production",
     ("deploy:admin",), None, None, WEEKDAY_NOON, None, None, DENY, "no-admin", "no-admin", None),
    ("scope outside the rule", "deploy-bot", {}, "staging", ("db:read", "db:write"), None, None, WEEKDAY_NOON, None,
     None, DENY, None, "no rule matches", None),
    # audiences
    ("partner audience", "deploy-bot", {}, "staging", ("db:read",), "https://partner.example", None, WEEKDAY_NOON,
     None, None, DENY, "no-partner", "no-partner", None),
    ("own audience", "deploy-bot", {}, "staging", ("db:read",), "https://api.acme.example", None, WEEKDAY_NOON, None,
     None, AUTO, "staging-read", "staging-read", 600),
    # claims (OIDC callers): strings, booleans, globs, missing
    ("ci deploy, known scope", "github:repo:acme/api", {"ref_protected": True, "repository": "acme/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, Usage(known_scopes=KNOWN), None,
     AUTO, "ci-deploy", "ci-deploy", 600),
    ("ci deploy, claim as text", "github:repo:acme/api", {"ref_protected": "true", "repository": "acme/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, Usage(known_scopes=KNOWN), None,
     AUTO, "ci-deploy", "ci-deploy", 600),
    ("ci deploy, unprotected ref", "github:repo:acme/api", {"ref_protected": False, "repository": "acme/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, None, None, DENY, None, "no rule matches", None),
    ("ci deploy, other repository", "github:repo:evil/api", {"ref_protected": True, "repository": "evil/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, None, None, DENY, None, "no rule matches", None),
    ("ci deploy, claim missing", "github:repo:acme/api", {"repository": "acme/api"}, "production", ("deploy:api",),
     None, None, WEEKDAY_NOON, None, None, DENY, None, "no rule matches", None),
    ("ci deploy, claim a number", "github:repo:acme/api", {"ref_protected": 1, "repository": "acme/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, None, None, DENY, None, "no rule matches", None),
    # first use
    ("ci deploy, first use", "github:repo:acme/api", {"ref_protected": True, "repository": "acme/api"},
     "production", ("deploy:api",), None, None, WEEKDAY_NOON, Usage(), None,
     ASK, "ci-deploy", "first use: github:repo:acme/api has never been granted 'deploy:api'", 600),
    ("ci deploy, one new scope", "github:repo:acme/api", {"ref_protected": True, "repository": "acme/api"},
     "production", ("deploy:api", "deploy:web"), None, None, WEEKDAY_NOON, Usage(known_scopes=KNOWN), None,
     ASK, "ci-deploy", "never been granted 'deploy:web'", 600),
    ("first use does not apply without first_use", "deploy-bot", {}, "staging", ("logs:new",), None, None,
     WEEKDAY_NOON, Usage(), None, AUTO, "staging-read", "staging-read", 600),
    # auto-approve limit
    ("limit: 2 of 3 used", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON,
     Usage(recent_auto_approvals=2), None, AUTO, "staging-read", "staging-read", 600),
    ("limit: 3 of 3 used", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON,
     Usage(recent_auto_approvals=3), None, ASK, "staging-read", "auto-approve limit reached: 3 automatic", 600),
    ("limit: well past", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON,
     Usage(recent_auto_approvals=40), None, ASK, "staging-read", "(limit 3)", 600),
    ("limit never turns a denial into a question", "deploy-bot", {}, "staging", ("db:admin",), None, None,
     WEEKDAY_NOON, Usage(recent_auto_approvals=40), None, DENY, "no-admin", "no-admin", None),
    # TTL: the rule's default, the cap, the policy's cap
    ("ttl within the rule's cap", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON, None, 1800,
     AUTO, "staging-read", "staging-read", 1800),
    ("ttl above the rule's cap", "deploy-bot", {}, "staging", ("db:read",), None, None, WEEKDAY_NOON, None, 1801,
     AUTO, "staging-read", "staging-read", TTLTooLong),
    ("ttl above the policy's cap", "deploy-bot", {}, "production", ("db:write",), None, "OPS-7",
     FRI_BEFORE_SPRING, None, 3601, ASK, "prod-write", "prod-write", TTLTooLong),
    ("ttl default held to the rule's cap", "github:repo:acme/api",
     {"ref_protected": True, "repository": "acme/api"}, "production", ("deploy:api",), None, None, WEEKDAY_NOON,
     Usage(known_scopes=KNOWN), None, AUTO, "ci-deploy", "ci-deploy", 600),
    ("ttl from the policy's default", "deploy-bot", {}, "production", ("deploy:api",), None, "OPS-7",
     WEEKDAY_NOON, None, None, ASK, "prod-write", "prod-write", 900),
    # reasons
    ("ticket given", "deploy-bot", {}, "production", ("deploy:api",), None, "OPS-42 hotfix", WEEKDAY_NOON, None,
     600, ASK, "prod-write", "first matching rule 'prod-write'", 600),
    ("no ticket", "deploy-bot", {}, "production", ("deploy:api",), None, "hotfix", WEEKDAY_NOON, None, 600,
     DENY, "prod-write", "needs a reason matching '[A-Z]+-[0-9]+'", None),
    ("no reason at all", "deploy-bot", {}, "production", ("deploy:api",), None, None, WEEKDAY_NOON, None, 600,
     DENY, "prod-write", "the request gives none", None),
    ("blank reason", "batch-7", {}, "production", ("db:read",), None, "   ", datetime(2026, 6, 10, 16, 0, tzinfo=UTC),
     None, None, DENY, "batch-read", "needs a reason; the request gives none", None),
    ("reason given", "batch-7", {}, "production", ("db:read",), None, "monthly report",
     datetime(2026, 6, 10, 16, 0, tzinfo=UTC), None, None, ASK, "batch-read", "batch-read", 900),
    # time of day, Europe/Berlin, across the spring and autumn changes
    ("Fri 08:30 CET, before hours", "deploy-bot", {}, "production", ("db:write",), None, "OPS-1",
     FRI_BEFORE_SPRING, None, None, ASK, "prod-write", "prod-write", 900),
    ("Mon 09:30 CEST, same UTC time, within", "deploy-bot", {}, "production", ("db:write",), None, None,
     MON_AFTER_SPRING, None, None, AUTO, "business-hours-write", "business-hours-write", 900),
    ("Fri 16:30 CET, within", "deploy-bot", {}, "production", ("db:write",), None, None,
     datetime(2026, 3, 27, 15, 30, tzinfo=UTC), None, None, AUTO, "business-hours-write", "business-hours", 900),
    ("Mon 17:30 CEST, same UTC time, after hours", "deploy-bot", {}, "production", ("db:write",), None, "OPS-1",
     datetime(2026, 3, 30, 15, 30, tzinfo=UTC), None, None, ASK, "prod-write", "prod-write", 900),
    ("Fri 09:30 CEST before autumn, within", "deploy-bot", {}, "production", ("db:write",), None, None,
     datetime(2026, 10, 23, 7, 30, tzinfo=UTC), None, None, AUTO, "business-hours-write", "business-hours", 900),
    ("Mon 08:30 CET after autumn, before hours", "deploy-bot", {}, "production", ("db:write",), None, "OPS-1",
     datetime(2026, 10, 26, 7, 30, tzinfo=UTC), None, None, ASK, "prod-write", "prod-write", 900),
    ("Saturday noon, not a weekday", "deploy-bot", {}, "production", ("db:write",), None, "OPS-1",
     datetime(2026, 3, 28, 11, 0, tzinfo=UTC), None, None, ASK, "prod-write", "prod-write", 900),
    ("outside hours, no ticket: denied", "deploy-bot", {}, "production", ("db:write",), None, None,
     FRI_BEFORE_SPRING, None, None, DENY, "prod-write", "needs a reason", None),
    # time of day, America/New_York, a window across midnight and the spring change
    ("Fri 22:30 EST, night window", "batch-7", {}, "production", ("db:read",), None, None,
     datetime(2026, 3, 7, 3, 30, tzinfo=UTC), None, None, AUTO, "night-batch", "night-batch", 900),
    ("Sat 05:30 EST, night window", "batch-7", {}, "production", ("db:read",), None, None,
     datetime(2026, 3, 7, 10, 30, tzinfo=UTC), None, None, AUTO, "night-batch", "night-batch", 900),
    ("Mon 06:30 EDT, same UTC time, after the window", "batch-7", {}, "production", ("db:read",), None, "report",
     datetime(2026, 3, 9, 10, 30, tzinfo=UTC), None, None, ASK, "batch-read", "batch-read", 900),
    ("Sun 22:30 EDT, night window", "batch-7", {}, "production", ("db:read",), None, None,
     datetime(2026, 3, 9, 2, 30, tzinfo=UTC), None, None, AUTO, "night-batch", "night-batch", 900),
    ("Wed 12:00 EDT, day", "batch-7", {}, "production", ("db:read",), None, None,
     datetime(2026, 6, 10, 16, 0, tzinfo=UTC), None, None, DENY, "batch-read", "needs a reason", None),
]


@pytest.mark.parametrize(
    "identity,claims,environment,scopes,audience,reason,at,usage,ttl,decision,rule,words,granted",
    [case[1:] for case in CASES], ids=[case[0] for case in CASES],
)
def test_policy_decides(identity, claims, environment, scopes, audience, reason, at, usage, ttl, decision, rule,
                        words, granted):
    outcome = decide(POLICY, Caller(identity, claims), environment, scopes, audience, reason=reason, at=at)
    outcome = apply_guard_rails(POLICY, outcome, identity, scopes, usage or Usage(known_scopes=frozenset(scopes)))
    assert (outcome.decision, outcome.rule.name if outcome.rule else None) == (decision, rule)
    assert words in outcome.reason
    # the stored explanation names every rule, in file order, and ends with why
    assert [line.split(" ", 1)[0] for line in outcome.reasons[: len(POLICY.rules)]] == [r.name for r in POLICY.rules]
    if outcome.guard or "reason" in words:
        assert outcome.reasons[-1] == outcome.reason
    if decision is not Decision.DENY:
        if granted is TTLTooLong:
            with pytest.raises(TTLTooLong, match="cap of"):
                granted_ttl(POLICY, outcome.rule, ttl)
        else:
            assert granted_ttl(POLICY, outcome.rule, ttl) == granted


def test_the_table_is_wide_enough():
    assert len(CASES) >= 40
