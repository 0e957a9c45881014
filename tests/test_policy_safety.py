"""A platform team's safety nets around the policy file: `serve` refuses to run without one (no silent fallback to
the bundled example, which makes example people admins), says which one it loaded, `policy check` finds the
configured file and rules that a deny rule hides, and `policy test` checks a policy against expected decisions."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from bot.domain.policy import lint
from bot.policy_file import parse_policy
from tests.conftest import POLICIES
from tests.support import SECRETS
from tests.ports import spare_port
from tests.test_end_to_end import grantbot_command

EXAMPLE = Path(__file__).parents[1] / "bot" / "examples" / "policy.yaml"


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "GRANTBOT_POLICY_FILE"} | env
    return subprocess.run([*grantbot_command(args[0]), *args[1:]], env=environment, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_serve_without_its_policy_file_refuses_to_start_naming_the_file(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    for env, missing in (({}, tmp_path / "policy.yaml"),
                         ({"GRANTBOT_POLICY_FILE": str(tmp_path / "elsewhere" / "policy.yml")},
                          tmp_path / "elsewhere" / "policy.yml")):
        refused = run("serve", cwd=tmp_path, PORT=str(spare_port()), GRANTBOT_DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                      GRANTBOT_SIGNING_KEY_FILE=str(tmp_path / "k.pem"), **env)
        assert refused.returncode == 2, refused.stderr
        assert str(missing) in refused.stderr and "does not exist" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_signing_key_path_whose_folder_is_missing_stops_serve_instead_of_making_a_key_of_its_own(tmp_path):
    # A typo in one replica's path would give it a key the others do not publish: refuse, create nothing.
    key = tmp_path / "no-such-folder" / "key.pem"
    refused = run("serve", cwd=tmp_path, PORT=str(spare_port()), GRANTBOT_DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                  GRANTBOT_POLICY_FILE=str(POLICIES / "basic.yaml"), GRANTBOT_SIGNING_KEY_FILE=str(key),
                  **{"TEST_SECRET_" + k.upper().replace("-", "_"): v for k, v in SECRETS.items()})
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"grantbot: cannot create the signing key {key}: the folder {key.parent} does not exist; create it, or set "
        "GRANTBOT_SIGNING_KEY_FILE to the key file every replica shares")
    assert not key.parent.exists() and "Traceback" not in refused.stderr


def test_serve_logs_the_path_and_hash_of_the_policy_it_loaded(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text((POLICIES / "basic.yaml").read_text())
    # Start on a database that is behind, so that serve stops right after loading the policy.
    started = run("serve", cwd=tmp_path, PORT=str(spare_port()), GRANTBOT_DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                  GRANTBOT_SIGNING_KEY_FILE=str(tmp_path / "k.pem"),
                  **{"TEST_SECRET_" + k.upper().replace("-", "_"): v for k, v in SECRETS.items()})
    digest = hashlib.sha256(policy.read_bytes()).hexdigest()
    assert f"policy {policy} loaded (sha256 {digest[:16]})" in started.stderr, started.stderr


def test_policy_check_without_a_file_checks_the_configured_one(tmp_path):
    configured = tmp_path / "team-policy.yaml"
    configured.write_text(EXAMPLE.read_text())
    checked = run("policy", "check", cwd=tmp_path, GRANTBOT_POLICY_FILE=str(configured))
    assert checked.returncode == 0 and f"{configured}: valid; 4 rules" in checked.stdout
    (tmp_path / "policy.yaml").write_text("rules: [{name: r, decison: deny}]")
    refused = run("policy", "check", cwd=tmp_path)  # no setting: policy.yaml in the working folder
    assert refused.returncode == 2 and "policy.yaml:1: rules[0].decison: unknown key" in refused.stderr
    (tmp_path / "policy.yaml").unlink()
    missing = run("policy", "check", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


HIDDEN = [
    ("an earlier deny rule hides a narrower rule",
     "rules:\n - {name: no-admin, match: {scopes: ['*:admin']}, decision: deny}\n"
     " - {name: db-admin, match: {environment: staging, scopes: ['db:admin']}, decision: auto_approve,"
     " max_ttl_seconds: 60}\n",
     ["rules[1] (db-admin) can never decide: deny rule rules[0] (no-admin) comes first"]),
    ("a later deny rule wins too",
     "rules:\n - {name: db-admin, match: {scopes: ['db:admin']}, decision: require_approval,"
     " approvers: {users: [U1]}}\n - {name: no-admin, match: {scopes: ['*:admin']}, decision: deny}\n",
     ["rules[0] (db-admin) can never decide: deny rule rules[1] (no-admin) comes later but, as a deny rule, wins"]),
    ("a deny rule on one scope of several hides a rule that always asks for it",
     "rules:\n - {name: no-prod, match: {environment: production}, decision: deny}\n"
     " - {name: prod-read, match: {environment: production, scopes: ['db:read']}, decision: auto_approve,"
     " max_ttl_seconds: 60}\n", ["rules[1] (prod-read) can never decide: deny rule rules[0] (no-prod)"]),
    ("a narrower deny rule hides nothing",
     "rules:\n - {name: no-db-admin, match: {scopes: ['db:admin']}, decision: deny}\n"
     " - {name: admin, match: {scopes: ['*:admin']}, decision: require_approval, approvers: {users: [U1]}}\n", []),
    ("a deny rule limited in time hides nothing",
     "rules:\n - {name: night, match: {}, when: {hours: '22:00-06:00'}, decision: deny}\n"
     " - {name: all, match: {}, decision: require_approval, approvers: {users: [U1]}}\n", []),
    ("a deny rule for another identity hides nothing",
     "rules:\n - {name: no-ci, match: {identity: 'github:*'}, decision: deny}\n"
     " - {name: bot, match: {identity: deploy-bot}, decision: require_approval, approvers: {users: [U1]}}\n", []),
]


@pytest.mark.parametrize("name,text,expected", HIDDEN, ids=[case[0] for case in HIDDEN])
def test_check_warns_of_rules_a_deny_rule_hides(name, text, expected):
    warnings = [w for w in lint(parse_policy(text, "p.yaml")) if "can never decide" in w]
    assert len(warnings) == len(expected), warnings
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start), warning


CASES = """\
- {identity: deploy-bot, environment: staging, scopes: [db:read], expect: auto_approve, rule: staging-anything}
- {identity: deploy-bot, environment: production, scopes: [db:write], reason: "INC-42", expect: require_approval,
   rule: prod-write}
- {identity: deploy-bot, environment: production, scopes: ["db:admin"], expect: deny, rule: no-admin}
- {identity: other-bot, environment: production, scopes: [db:read], expect: deny, rule: default}
- name: a time given with its zone
  identity: deploy-bot
  environment: production
  scopes: [db:read, logs:read]
  at: "2026-12-07T10:00:00+01:00"
  expect: auto_approve
"""


def test_policy_test_passes_when_every_case_gets_its_decision(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    passed = run("policy", "test", str(EXAMPLE), str(cases))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.strip().endswith("5 of 5 case(s) passed")


def test_policy_test_fails_with_a_diff_naming_the_case_and_its_line(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES + "- {identity: deploy-bot, environment: production, scopes: [db:write], expect: "
                             "auto_approve}\n- {identity: deploy-bot, environment: staging, scopes: [db:read], "
                             "expect: auto_approve, rule: prod-read}\n")
    failed = run("policy", "test", str(EXAMPLE), str(cases))
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert f"{cases}:12: case [5] deploy-bot production db:write" in lines
    assert "- expected: auto_approve" in lines
    assert "+ got:      require_approval by rule prod-write (first matching rule 'prod-write')" in lines
    assert f"{cases}:13: case [6] deploy-bot staging db:read" in lines
    assert "- expected: auto_approve by rule prod-read" in lines
    assert lines[-1].endswith("5 of 7 case(s) passed, 2 failed")


def test_a_case_naming_an_environment_the_policy_does_not_know_fails_as_the_api_refuses_it(tmp_path):
    # The API answers such a request 422 before any rule; "deny by the default" would hide a typo in the cases.
    cases = tmp_path / "cases.yaml"
    cases.write_text("- {identity: deploy-bot, environment: prodution, scopes: [db:write], expect: deny}\n")
    failed = run("policy", "test", str(EXAMPLE), str(cases))
    assert failed.returncode == 1
    assert ("+ got:      refused before any rule (422): Environment 'prodution' is not known to the policy; use one "
            "of: production, staging.") in failed.stdout.splitlines(), failed.stdout


def test_policy_explain_says_an_unknown_environment_is_refused_as_the_api_does(tmp_path):
    explained = run("policy", "explain", str(EXAMPLE), "--identity", "deploy-bot", "--environment", "prodution",
                    "--scope", "db:write")
    assert explained.returncode == 1
    assert explained.stdout.splitlines() == [
        "refused before any rule: Environment 'prodution' is not known to the policy; use one of: production, "
        "staging. (grantbot answers such a request 422)"]
    default_file = run("policy", "explain", "--identity", "deploy-bot", "--environment", "staging", "--scope",
                       "db:read", GRANTBOT_POLICY_FILE=str(EXAMPLE))
    assert default_file.returncode == 0 and default_file.stdout.startswith("decision: auto_approve"), \
        default_file.stdout + default_file.stderr


@pytest.mark.parametrize("text,message", [
    ("- {identity: deploy-bot, environment: staging, scopes: [db:read], expect: maybe}\n",
     "cases.yaml:1: [0].expect: Input should be 'auto_approve'"),
    ("- {identity: deploy-bot, environment: staging, scopes: [db:read], expect: deny}\n"
     "- identity: deploy-bot\n  environment: staging\n  scope: [db:read]\n  expect: deny\n",
     "cases.yaml:4: [1].scope: unknown key"),
    ("{identity: deploy-bot}\n", "a cases file is a YAML list of cases"),
    ("- [\n", "not valid YAML"),
])
def test_policy_test_refuses_a_bad_cases_file_with_line_and_key(tmp_path, text, message):
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    refused = run("policy", "test", str(EXAMPLE), str(cases))
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_version():
    shown = run("--version")
    assert shown.returncode == 0 and shown.stdout.startswith("grantbot ")


@pytest.mark.parametrize("variable,value,message", [
    ("PORT", "notaport", "grantbot: invalid settings: PORT or GRANTBOT_PORT: Input should be a valid integer"),
    ("GRANTBOT_PORT", "99999", "grantbot: invalid settings: PORT or GRANTBOT_PORT: Input should be less than or equal "
                               "to 65535"),
    ("GRANTBOT_LOG_LEVEL", "LOUD", "grantbot: invalid settings: GRANTBOT_LOG_LEVEL: Value error, 'LOUD' is not a log "
                                   "level; use DEBUG, INFO, WARNING, ERROR or CRITICAL"),
])
def test_a_bad_setting_stops_serve_in_one_line_naming_the_variable(tmp_path, variable, value, message):
    refused = run("serve", cwd=tmp_path, **{variable: value})
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and refused.stderr.startswith(message), \
        refused.stderr
    # The parser of every command no longer reads PORT: other commands still run.
    assert run("policy", "check", str(EXAMPLE), **{variable: value}).returncode == 0
