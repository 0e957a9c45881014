"""``environments:`` as a map giving each environment its own audience (the list form stays valid), its validation
errors (file, line, key), and `policy check`'s warning of tokens that would pass for another environment's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bot.domain.errors import PolicyError
from bot.domain.policy import lint
from bot.policy_file import load_policy, parse_policy
from tests.test_end_to_end import grantbot_command

EXAMPLE = Path(__file__).parents[1] / "bot" / "examples" / "policy.yaml"
APPROVERS = "approvers: {users: [U1]}"

# The issue's example: an auto-approve staging rule for db:write and a require_approval production db:write rule
# sharing one audience.
ISSUE_EXAMPLE = f"""\
defaults: {{audience: https://api.acme.example}}
rules:
  - name: staging-db-write
    match: {{environment: staging, scopes: ["db:write"]}}
    decision: auto_approve
    max_ttl_seconds: 900
  - name: prod-db-write
    match: {{environment: production, scopes: ["db:write"]}}
    decision: require_approval
    {APPROVERS}
"""


def test_the_map_form_gives_each_environment_its_audience_and_the_list_form_stays_valid():
    policy = parse_policy("""
defaults: {audience: https://shared.example}
environments:
  staging: {audience: https://staging.example}
  production:
    audience: https://api.example
  dev:
  qa: {}
rules: []
""", "p.yaml")
    assert policy.known_environments() == {"staging", "production", "dev", "qa"}
    assert [policy.audience_for(env) for env in ("staging", "production", "dev", "qa")] == [
        "https://staging.example", "https://api.example", "https://shared.example", "https://shared.example"]

    listed = parse_policy("environments: [staging, production]\nrules: []\n", "p.yaml")
    assert listed.known_environments() == {"staging", "production"}
    assert listed.audience_for("staging") is None  # no defaults.audience either: the issuer's URL


@pytest.mark.parametrize("text,message", [
    ("environments:\n  staging: https://staging.example\n",
     "p.yaml:2: environments.staging: an environment's entry is a mapping such as {audience: "),
    ("environments:\n  staging: {audiance: https://staging.example}\n",
     "p.yaml:2: environments.staging.audiance: unknown key"),
    ("environments:\n  staging:\n    audience: ''\n",
     "p.yaml:3: environments.staging.audience: String should have at least 1 character"),
    ("environments:\n  staging:\n    audience: [a, b]\n",
     "p.yaml:3: environments.staging.audience: Input should be a valid string"),
    ("rules: []\nenvironments:\n  ok: {}\n  '': {audience: x}\n",
     "p.yaml:4: environments: name '': String should have at least 1 character"),
    ("environments: staging\n", "p.yaml:1: environments: write a list of names ([staging, production]) or a map"),
    ("environments: [staging, 3]\n", "p.yaml:1: environments: item 1 (3) is not an environment name"),
])
def test_a_bad_environment_entry_is_refused_with_file_line_and_key(text, message):
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, "p.yaml")
    assert message in str(refused.value)


def _pair(auto_match: str, approval_match: str, environments: str = "") -> str:
    return f"""{environments}
rules:
  - {{name: auto, match: {auto_match}, decision: auto_approve, max_ttl_seconds: 60}}
  - {{name: people, match: {approval_match}, decision: require_approval, {APPROVERS}}}
"""


OWN_AUDIENCES = """environments:
  staging: {audience: https://staging.api.example}
  production: {audience: https://api.example}"""

CROSS = [
    ("the issue's example: one shared audience", ISSUE_EXAMPLE,
     "rules[0] (staging-db-write) auto-approves 'db:write' in 'staging' with its audience 'https://api.acme.example', "
     "but rules[1] (prod-db-write) sends it to people in 'production'"),
    ("the issuer's URL is shared too when no audience is configured",
     _pair("{environment: staging, scopes: ['db:write']}", "{environment: production, scopes: ['db:write']}"),
     "rules[0] (auto) auto-approves 'db:write' in 'staging' with its audience the issuer's URL"),
    ("own audiences, and the staging rule limited to its own: no warning",
     _pair("{environment: staging, audiences: ['https://staging.*']}",
           "{environment: production, scopes: ['db:write']}", OWN_AUDIENCES), None),
    ("own audiences, but a request may name production's",
     _pair("{environment: staging}", "{environment: production, scopes: ['db:write']}", OWN_AUDIENCES),
     "rules[0] (auto) auto-approves 'db:write' in 'staging' for any audience a request names, "
     "'https://api.example' included, but rules[1] (people) sends it to people in 'production': those tokens would "
     "pass there without approval; limit rules[0] with match.audiences (e.g. to ['https://staging.api.example'])"),
    ("a staging audience glob wide enough for production's",
     _pair("{environment: staging, audiences: ['https://*']}", "{environment: production}", OWN_AUDIENCES),
     "rules[0] (auto) auto-approves any scope in 'staging' for audiences matching ['https://*'], "
     "'https://api.example' included"),
    ("scope globs that overlap",
     _pair("{environment: staging, scopes: ['db:*']}", "{environment: production, scopes: ['db:w*', 'logs:read']}"),
     "rules[0] (auto) auto-approves 'db:*' / 'db:w*' in 'staging'"),
    ("scope globs that do not overlap: no warning",
     _pair("{environment: staging, scopes: ['db:read', 'logs:*']}", "{environment: production, scopes: ['db:w*']}"),
     None),
    ("a rule for every environment",
     _pair("{environment: '*', scopes: ['db:write']}", "{environment: production, scopes: ['db:write']}"),
     "rules[0] (auto) auto-approves 'db:write' in an environment matching '*' with its audience the issuer's URL"),
    ("a rule naming no environment, against a listed one",
     _pair("{scopes: ['db:write']}", "{environment: production, scopes: ['db:*']}",
           "environments: [staging, production]"),
     "rules[0] (auto) auto-approves 'db:write' in 'staging'"),
    ("the same environment is the order of rules' business, not this check",
     _pair("{environment: production, scopes: ['db:read']}", "{environment: production, scopes: ['db:*']}"), None),
    ("an approval rule limited to other audiences than the auto-approve rule's: no warning",
     _pair("{environment: staging, audiences: ['https://staging.*']}",
           "{environment: production, audiences: ['https://api.*', 'https://pay.*']}"), None),
    ("an approval rule's audience glob that the auto-approve rule's audience matches",
     _pair("{environment: staging, audiences: ['https://api.example']}",
           "{environment: production, audiences: ['https://api.*']}"),
     "rules[0] (auto) auto-approves any scope in 'staging' for audiences matching ['https://api.example'], "
     "'https://api.example' included, but rules[1] (people) sends it to people in 'production'"),
    ("an environment outside the list never matches a request: no warning",
     _pair("{environment: staging}", "{environment: production}", "environments: [staging]"), None),
]


@pytest.mark.parametrize("name,text,expected", CROSS, ids=[case[0] for case in CROSS])
def test_policy_check_warns_of_tokens_that_would_pass_in_another_environment(name, text, expected):
    warnings = [w for w in lint(parse_policy(text, "p.yaml")) if "sends it to people" in w]
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(expected), warnings


def test_policy_check_command_on_the_issue_s_example_and_on_the_example_policy(tmp_path: Path):
    issue = tmp_path / "shared-audience.yaml"
    issue.write_text(ISSUE_EXAMPLE)
    checked = subprocess.run([*grantbot_command("policy"), "check", issue.name], capture_output=True, text=True,
                             cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for line in checked.stdout.splitlines():  # README "Check and explain" shows this real output
        assert "    " + line in readme, line
    assert checked.stdout.startswith(
        f"warning: {issue.name}: rules[0] (staging-db-write) auto-approves 'db:write' in 'staging' with its audience "
        "'https://api.acme.example', but rules[1] (prod-db-write) sends it to people in 'production': those tokens "
        "would pass there without approval; give each environment its own audience")
    assert checked.stdout.endswith("1 warning(s)\n")

    example = load_policy(EXAMPLE)  # the bundled example gives staging and production their own audiences
    assert example.audience_for("staging") != example.audience_for("production")
    checked = subprocess.run([*grantbot_command("policy"), "check", str(EXAMPLE)], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.endswith("; 0 warning(s)\n"), checked.stdout
