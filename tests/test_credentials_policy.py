"""The policy's ``providers:`` and rules' ``credentials:``: a bad entry is refused with the file, the line and the key
(an unknown provider or kind, a key a kind does not take, an admin URL variable that is not set), at start and on
reload; ``policy check`` counts providers and ``policy explain`` says what a rule's grants get."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bot.domain.errors import PolicyError
from bot.web.keys import DEPS, RELOADER
from tests.conftest import POLICIES
from tests.test_end_to_end import grantbot_command

PROVIDERS = """
providers:
  - name: orders-db
    kind: postgresql
    url_env: TEST_ORDERS_DB_URL
    owner_role: orders_owner
"""
RULE = """
rules:
  - name: prod-db-read
    match: {environment: production, scopes: ["orders-db:read"]}
    decision: auto_approve
    max_ttl_seconds: 900
    credentials:
      - provider: orders-db
        roles: [orders_read]
"""


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*grantbot_command("policy"), "check", str(path)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("text, expected", [
    (PROVIDERS + RULE.replace("- provider: orders-db", "- provider: orders_db"),
     "policy.yaml:14: rules[0].credentials[0].provider: unknown provider 'orders_db' (known: orders-db)"),
    (PROVIDERS.replace("kind: postgresql", "kind: postgress") + RULE,
     "policy.yaml:4: providers[0].kind: unknown kind 'postgress'; grantbot knows mysql, postgresql, rabbitmq, redis, "
     "ssh, webhook"),
    (PROVIDERS.replace("    owner_role", "    ownr_role") + RULE,
     "policy.yaml:6: providers[0].ownr_role: unknown key for a postgresql provider (check its spelling and "
     "indentation)"),
    (PROVIDERS + RULE.replace("roles: [orders_read]", "role: [orders_read]"),
     "policy.yaml:15: rules[0].credentials[0].role: unknown key (check its spelling and indentation)"),
    (PROVIDERS.replace("    url_env: TEST_ORDERS_DB_URL\n", "") + RULE,
     "policy.yaml:3: providers[0].url_env: a postgresql provider needs url_env"),
    (PROVIDERS + "    username_prefix: Grantbot-\n" + RULE,
     "policy.yaml:7: providers[0].username_prefix: 'Grantbot-' must be lower-case letters"),
    (PROVIDERS + "    options: {connection_limit: 0}\n" + RULE,
     "policy.yaml:7: providers[0].options.connection_limit: Input should be greater than or equal to 1"),
    (PROVIDERS + PROVIDERS.replace("providers:\n", "") + RULE,
     "policy.yaml:8: providers[1].name: provider 'orders-db' is listed more than once"),
])
def test_a_bad_provider_or_credential_is_refused_with_file_line_and_key(tmp_path, text, expected):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    done = check(path)
    assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_policy_check_counts_providers_and_needs_no_admin_url(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(PROVIDERS + RULE)
    done = check(path)  # the variable is not set where the policy is checked (CI): not an error here
    assert done.returncode == 0, done.stderr
    assert f"{path}: valid; 1 rules, 0 identities, 1 providers, default deny" in done.stdout


def test_policy_explain_says_what_a_rules_grants_get(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(PROVIDERS + RULE)
    done = subprocess.run([*grantbot_command("policy"), "explain", str(path), "--identity", "deploy-bot",
                           "--environment", "production", "--scope", "orders-db:read"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "  credentials: orders-db (postgresql): a temporary PostgreSQL role gb_<grant id> (LOGIN, VALID UNTIL the "
        "grant's expiry, member of orders_read); at the end its sessions are ended, what it owns goes to "
        "orders_owner, and it is dropped")


async def test_grantbot_does_not_start_when_a_providers_admin_url_is_unset(start_grantbot, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_ORDERS_DB_URL", raising=False)
    path = tmp_path / "policy.yaml"
    path.write_text(PROVIDERS + RULE)
    with pytest.raises(PolicyError) as refused:
        await start_grantbot(policy_file=path)
    assert (f"{path}:5: providers[0].url_env: the environment variable TEST_ORDERS_DB_URL (provider orders-db's "
            "admin URL) is not set") in str(refused.value)


async def test_a_reload_naming_an_unset_admin_url_is_refused_and_the_policy_stays(start_grantbot, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.delenv("TEST_ORDERS_DB_URL", raising=False)
    path = tmp_path / "policy.yaml"
    path.write_text((POLICIES / "basic.yaml").read_text())
    grantbot = await start_grantbot(policy_file=path, policy_watch_seconds=0)
    before = grantbot.app[DEPS].policy
    path.write_text((POLICIES / "basic.yaml").read_text() + PROVIDERS)
    assert await grantbot.app[RELOADER].check() == "refused"
    assert grantbot.app[DEPS].policy is before

    monkeypatch.setenv("TEST_ORDERS_DB_URL", "postgresql://grantbot_admin:pw@db.internal:5432/orders")
    path.write_text((POLICIES / "basic.yaml").read_text() + PROVIDERS + "\n")
    assert await grantbot.app[RELOADER].check() == "reloaded"
    assert [p.name for p in grantbot.app[DEPS].policy.providers] == ["orders-db"]
