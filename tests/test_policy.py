"""The policy's decision, its explanation and its warnings (table-driven), and `grantbot policy check/explain`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bot.domain.errors import PolicyError
from bot.domain.models import Caller, Decision
from bot.domain.policy import decide, explain, lint
from bot.policy_file import load_policy, parse_policy
from tests.test_end_to_end import grantbot_command

POLICY = parse_policy("""
defaults: {max_ttl_seconds: 3600}
environments: [staging, production]
rules:
  - name: no-admin
    match: {scopes: ["*:admin"]}
    decision: deny
  - name: staging-read
    match: {environment: staging, scopes: ["db:read", "logs:*"]}
    decision: auto_approve
    max_ttl_seconds: 1800
  - name: ci-deploy
    match: {identity: "github:*", environment: production, scopes: ["deploy:*"], claims: {ref_protected: "true"}}
    decision: auto_approve
    max_ttl_seconds: 600
  - name: prod-write
    match: {identity: deploy-bot, environment: production, scopes: ["db:write", "deploy:*"]}
    decision: require_approval
    approvers: {users: [U0APPROVER]}
  - name: partner-api
    match: {audiences: ["https://partner.*"]}
    decision: deny
default: deny
""", "test-policy")

CASES = [
    # identity, claims, environment, scopes, audience, decision, rule
    ("deploy-bot", {}, "staging", ("db:read",), None, Decision.AUTO_APPROVE, "staging-read"),
    ("deploy-bot", {}, "staging", ("logs:app", "db:read"), None, Decision.AUTO_APPROVE, "staging-read"),
    ("deploy-bot", {}, "staging", ("db:read", "db:admin"), None, Decision.DENY, "no-admin"),
    ("deploy-bot", {}, "staging", ("db:write",), None, Decision.DENY, None),
    ("deploy-bot", {}, "production", ("db:write",), None, Decision.REQUIRE_APPROVAL, "prod-write"),
    ("deploy-bot", {}, "production", ("db:write", "deploy:api"), None, Decision.REQUIRE_APPROVAL, "prod-write"),
    ("deploy-bot", {}, "production", ("db:write", "db:read"), None, Decision.DENY, None),
    ("other-bot", {}, "production", ("db:write",), None, Decision.DENY, None),
    ("github:repo:acme/api", {"ref_protected": "true"}, "production", ("deploy:api",), None,
     Decision.AUTO_APPROVE, "ci-deploy"),
    ("github:repo:acme/api", {"ref_protected": True}, "production", ("deploy:api",), None,
     Decision.AUTO_APPROVE, "ci-deploy"),
    ("github:repo:acme/api", {"ref_protected": "false"}, "production", ("deploy:api",), None, Decision.DENY, None),
    ("github:repo:acme/api", {}, "production", ("deploy:api",), None, Decision.DENY, None),
    ("deploy-bot", {}, "staging", ("db:read",), "https://partner.example", Decision.DENY, "partner-api"),
    ("deploy-bot", {}, "staging", ("db:read",), "https://api.acme.example", Decision.AUTO_APPROVE, "staging-read"),
]


@pytest.mark.parametrize("identity,claims,environment,scopes,audience,decision,rule", CASES)
def test_decision_table(identity, claims, environment, scopes, audience, decision, rule):
    outcome = decide(POLICY, Caller(identity, claims), environment, scopes, audience)
    assert (outcome.decision, outcome.rule.name if outcome.rule else None) == (decision, rule)
    explained, rules = explain(POLICY, Caller(identity, claims), environment, scopes, audience)
    assert explained == outcome
    matching = [r.name for r, why in rules if why is None]
    if rule is not None:
        assert rule in matching  # the explanation agrees with the decision
    else:
        assert matching == []


def test_explain_says_why_each_rule_did_not_match():
    _, rules = explain(POLICY, Caller("deploy-bot"), "production", ("db:write", "db:read"))
    reasons = {rule.name: why for rule, why in rules}
    assert reasons["no-admin"] == "no requested scope matches ['*:admin']"
    assert reasons["staging-read"] == "environment 'production' is not one of ['staging']"
    assert reasons["ci-deploy"] == "identity 'deploy-bot' is not one of ['github:*']"
    assert reasons["prod-write"] == "scope 'db:read' is not covered by ['db:write', 'deploy:*']"


LINT = [
    ("shadowed by a wider earlier rule",
     "rules:\n - {name: all-staging, match: {environment: staging}, decision: auto_approve, max_ttl_seconds: 60}\n"
     " - {name: staging-db, match: {environment: staging, scopes: ['db:*']}, decision: require_approval,"
     " approvers: {users: [U1]}}\n", ["rules[1] (staging-db) can never decide: rules[0] (all-staging)"]),
    ("a narrower earlier rule shadows nothing",
     "rules:\n - {name: staging-db, match: {environment: staging, scopes: ['db:*']}, decision: auto_approve,"
     " max_ttl_seconds: 60}\n - {name: all-staging, match: {environment: staging}, decision: require_approval,"
     " approvers: {users: [U1]}}\n", []),
    ("deny rules are never shadowed (deny wins)",
     "rules:\n - {name: all, match: {}, decision: require_approval, approvers: {users: [U1]}}\n"
     " - {name: no-admin, match: {scopes: ['*:admin']}, decision: deny}\n", []),
    ("auto-approve without a cap of its own",
     "rules:\n - {name: easy, match: {environment: staging}, decision: auto_approve}\n",
     ["rules[0] (easy) auto-approves with no max_ttl_seconds of its own"]),
]


@pytest.mark.parametrize("name,text,expected", LINT, ids=[case[0] for case in LINT])
def test_lint(name, text, expected):
    warnings = lint(parse_policy(text, "p.yaml"))
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)


@pytest.mark.parametrize("text,message", [
    ("rules: [{name: r, decison: deny}]", "p.yaml:1: rules[0].decison: unknown key"),
    ("rules: [{name: r, decision: maybe}]", "p.yaml:1: rules[0].decision: Input should be 'auto_approve'"),
    ("rules: [{name: r, decision: require_approval}]", "needs approvers.users"),
    ("rules: [{name: r, decision: deny}, {name: r, decision: deny}]", "rule name 'r' is used more than once"),
    ("defaults: {ttl_seconds: -1}", "p.yaml:1: defaults.ttl_seconds: Input should be greater than 0"),
    ("rules:\n  - name: a\n    decision: deny\n  - name: b\n    decision: deny\n    colour: blue\n",
     "p.yaml:6: rules[1].colour: unknown key"),
    ("rules:\n  - name: a\n    match:\n      scopes: ['db:[']\n    decision: deny\n",
     "p.yaml:4: rules[0].match.scopes[0]: bad glob 'db:['"),
    ("rules:\n  - name: a\n    match: {identity: 'deploy bot'}\n    decision: deny\n",
     "p.yaml:3: rules[0].match.identity[0]: bad glob 'deploy bot'"),
    ("rules:\n  - name: a\n    decision: deny\n    reason_pattern: '(OPS-'\n",
     "p.yaml:4: rules[0].reason_pattern: bad regular expression '(OPS-'"),
    ("rules:\n  - name: a\n    decision: deny\n    when:\n      timezone: Europe/Berln\n",
     "p.yaml:5: rules[0].when.timezone: unknown timezone 'Europe/Berln'"),
    ("rules:\n  - name: a\n    decision: deny\n    when: {hours: '9-5'}\n",
     "p.yaml:4: rules[0].when.hours: bad hours '9-5'"),
    ("rules:\n  - name: a\n    decision: deny\n    when: {days: [monday]}\n",
     "p.yaml:4: rules[0].when.days[0]: Input should be 'mon'"),
    ("rules:\n  - name: a\n    decision: deny\n  - name: b\n    decision: require_approval\n",
     "p.yaml:4: rules[1]: rules[1] (b): decision require_approval needs approvers"),
    ("rules:\n  - name: a\n    decision: deny\n    first_use: require_approval\n",
     "only apply to auto_approve rules"),
    ("rules:\n  - {name: a, decision: auto_approve, auto_approve_limit: {count: 5, per_seconds: 60}}\n",
     "needs approvers.users"),
    ("[1, 2]", "the top level must be a mapping"),
    ("rules: [", "not valid YAML"),
    ("", "the policy file is empty"),
    ("# all rules moved elsewhere\n", "the policy file is empty"),
])
def test_a_bad_policy_is_refused_with_the_key_and_the_problem(text, message):
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, "p.yaml")
    assert message in str(refused.value)


def test_policy_check_and_explain_commands(tmp_path: Path):
    example = Path(__file__).parents[1] / "bot" / "examples" / "policy.yaml"
    checked = subprocess.run([*grantbot_command("policy"), "check", str(example)], capture_output=True, text=True)
    assert checked.returncode == 0 and "valid; 4 rules" in checked.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: r, decison: deny}]")
    refused = subprocess.run([*grantbot_command("policy"), "check", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2 and "decison: unknown key" in refused.stderr
    explained = subprocess.run(
        [*grantbot_command("policy"), "explain", str(example), "--identity", "deploy-bot", "--environment",
         "production", "--scope", "db:write"], capture_output=True, text=True)
    assert explained.returncode == 0
    assert explained.stdout.splitlines()[0] == "decision: require_approval (first matching rule 'prod-write')"
    assert "  rules[3] prod-write (require_approval): matches" in explained.stdout
    assert "  at " not in explained.stdout  # no rule has a `when`: the time decides nothing, so it is not shown
    assert load_policy(example).rules[3].name == "prod-write"
    platform = example.with_name("policy-platform.yaml")  # the README's example, with its real output
    checked = subprocess.run([*grantbot_command("policy"), "check", str(platform)], capture_output=True, text=True)
    assert checked.returncode == 0 and "valid; 5 rules, 2 identities, default deny; 0 warning(s)" in checked.stdout
    explained = subprocess.run(
        [*grantbot_command("policy"), "explain", str(platform), "--identity", "deploy-bot", "--environment",
         "production", "--scope", "db:write", "--reason", "OPS-1234 migrate orders",
         "--at", "2026-12-01T20:30:00+01:00"], capture_output=True, text=True)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for line in explained.stdout.splitlines():
        assert line in readme, line
