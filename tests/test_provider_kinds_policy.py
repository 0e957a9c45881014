"""The policy keys of every kind of provider (DESIGN.md "Other kinds"): what ``grantbot policy explain`` and the
approval card say a rule hands out, and a bad entry refused with the file, the line and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.domain.errors import PolicyError
from tests.conftest import POLICIES
from tests.support import cards, eventually, message_text
from tests.test_end_to_end import grantbot_command

PROVIDERS = """
providers:
  - {name: shop-db, kind: mysql, url_env: TEST_SHOP_DB_URL}
  - {name: cache, kind: redis, url_env: TEST_CACHE_URL}
  - {name: events, kind: rabbitmq, url_env: TEST_EVENTS_MQ_URL}
  - {name: deploy-ssh, kind: ssh, ca_key_file: CA_KEY_FILE}
  - {name: k8s, kind: webhook, url: "https://hooks.internal/grant", secret_env: TEST_K8S_HOOK_SECRET}
"""
RULE = """
rules:
  - name: prod-read
    match: {environment: production, scopes: ["shop:read"]}
    decision: require_approval
    approvers: {users: [U0APPROVER]}
    credentials:
      - {provider: shop-db, roles: [shop_read], privileges: ["SELECT ON shop.orders"]}
      - {provider: cache, acl: "~orders:* +get"}
      - {provider: events, vhost: shop, read: "^orders$"}
      - {provider: deploy-ssh, principals: [deploy]}
      - {provider: k8s, params: {namespace: shop, role: view}}
"""
EXPLAINED = [
    "  credentials: shop-db (mysql): a MySQL/MariaDB user gb_<grant> with role shop_read and SELECT ON shop.orders; "
    "at the end it is locked, its connections are killed and it is dropped",
    "  credentials: cache (redis): a Redis ACL user gb_<grant id> with ~orders:* +get; at the end it is turned off, "
    "its connections are killed and it is deleted",
    "  credentials: events (rabbitmq): a RabbitMQ user gb_<grant id> in vhost shop (configure ^$, write ^$, read "
    "^orders$); at the end its connections are closed and it is deleted",
    "  credentials: deploy-ssh (ssh): an SSH certificate for deploy (permit-pty) valid until the grant's expiry; an "
    "early revocation lists it at /ssh/deploy-ssh/krl (open sessions stay)",
    '  credentials: k8s (webhook): what the hook https://hooks.internal/grant issues for {"namespace": "shop", '
    '"role": "view"}; at the end the hook is asked to revoke it and to confirm',
]


def test_each_kind_is_its_modules_kind_and_its_driver_loads_only_when_a_policy_names_it():
    from bot.providers.kinds import KINDS

    assert sorted(KINDS) == ["mysql", "postgresql", "rabbitmq", "redis", "ssh", "webhook"]
    assert all(KINDS[name].KIND == name for name in KINDS) and KINDS.get("oracle") is None
    # A fresh process: checking a policy without a Redis provider imports no Redis client.
    script = ("import sys; from bot.policy_file import load_policy; load_policy(sys.argv[1]); "
              "print(sorted(m for m in ('redis', 'pymysql', 'asyncpg') if m in sys.modules))")
    ran = subprocess.run([sys.executable, "-c", script, str(POLICIES / "basic.yaml")], capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip() == "[]", ran.stderr


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace("CA_KEY_FILE", str(tmp_path / "ssh-ca")))
    return path


def test_policy_explain_says_what_each_kind_hands_out(tmp_path):
    path = policy_file(tmp_path, PROVIDERS + RULE)
    done = subprocess.run([*grantbot_command("policy"), "explain", str(path), "--identity", "deploy-bot",
                           "--environment", "production", "--scope", "shop:read"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-5:] == EXPLAINED, done.stdout


async def test_the_approval_card_says_what_the_grant_hands_out(start_grantbot, tmp_path, sandbox, monkeypatch):
    for name in ("TEST_SHOP_DB_URL", "TEST_CACHE_URL", "TEST_EVENTS_MQ_URL", "TEST_K8S_HOOK_SECRET"):
        monkeypatch.setenv(name, "mysql://nobody@127.0.0.1:1/none")  # nothing is made before an approval
    identities = (POLICIES / "basic.yaml").read_text().split("rules:")[0]
    grantbot = await start_grantbot(policy_file=policy_file(tmp_path, identities + PROVIDERS + RULE))
    status, created = await grantbot.api.request_access({"environment": "production", "scopes": ["shop:read"]})
    assert status == 202, created
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    text = message_text(card)
    assert "*Hands out*" in text
    for line in EXPLAINED:
        assert "• " + line.removeprefix("  credentials: ").replace("<", "&lt;").replace(">", "&gt;") in text, text


@pytest.mark.parametrize("change, expected", [
    (("kind: mysql, url_env: TEST_SHOP_DB_URL}", "kind: mysql, url_env: TEST_SHOP_DB_URL, username_prefix: grantbot_}"),
     "policy.yaml:3: providers[0].username_prefix: 'grantbot_' must be lower-case letters, digits and '_' "
     "(starting with a letter or '_'), at most 6 characters"),
    (("privileges: [\"SELECT ON shop.orders\"]", "privileges: [\"GRANT OPTION ON shop.orders\"]"),
     "policy.yaml:15: rules[0].credentials[0].privileges: 'GRANT OPTION' is not a privilege grantbot hands out"),
    (('acl: "~orders:* +get"', 'acl: "~orders:* +get >hunter2"'),
     "policy.yaml:16: rules[0].credentials[1].acl: ACL rule '>hunter2' is not handed out by grantbot"),
    (('read: "^orders$"', 'read: "^(orders$"'),
     "policy.yaml:17: rules[0].credentials[2].read: bad regular expression '^(orders$'"),
    (("principals: [deploy]", "principal: [deploy]"),
     "policy.yaml:18: rules[0].credentials[3].principal: unknown key (check its spelling and indentation)"),
    ((", ca_key_file: CA_KEY_FILE", ""),
     "policy.yaml:6: providers[3].ca_key_file: an ssh provider needs ca_key_file"),
    ((', secret_env: TEST_K8S_HOOK_SECRET', ''),
     "policy.yaml:7: providers[4].secret_env: a webhook provider needs secret_env"),
    (("kind: redis, url_env: TEST_CACHE_URL}", "kind: redis, url_env: TEST_CACHE_URL, owner_role: x}"),
     "policy.yaml:4: providers[1].owner_role: a redis provider takes no owner_role (PostgreSQL's alone)"),
])
def test_a_bad_entry_of_each_kind_is_refused_with_file_line_and_key(tmp_path, change, expected):
    path = policy_file(tmp_path, (PROVIDERS + RULE).replace(*change))
    done = subprocess.run([*grantbot_command("policy"), "check", str(path)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and expected in done.stderr, done.stderr


async def test_grantbot_does_not_start_when_a_hooks_secret_is_unset(start_grantbot, tmp_path, monkeypatch):
    for name in ("TEST_SHOP_DB_URL", "TEST_CACHE_URL", "TEST_EVENTS_MQ_URL"):
        monkeypatch.setenv(name, "set")
    monkeypatch.delenv("TEST_K8S_HOOK_SECRET", raising=False)
    path = policy_file(tmp_path, PROVIDERS + RULE)
    with pytest.raises(PolicyError) as refused:
        await start_grantbot(policy_file=path)
    assert (f"{path}:7: providers[4].secret_env: the environment variable TEST_K8S_HOOK_SECRET (provider k8s's "
            "secret) is not set") in str(refused.value)
