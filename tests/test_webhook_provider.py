"""The webhook provider against a hook served by this test (aiohttp), standing in for a Kubernetes controller: every
call is signed (HMAC-SHA256 over "v1:{timestamp}:{raw body}", checked here from DESIGN.md, independently of
grantbot's code); the hook's answer to ``issue`` is the credential, handed over once; at expiry and at an early
revoke the hook is asked to revoke, then to verify; a hook that fails is retried, then ``failed`` with one alert;
a hook that is slow to confirm leaves the revocation pending until it does; a bad signature is refused by the
hook and grantbot says so without the secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from tests.provider_targets import policy_with
from tests.support import buttons, cards, eventually, message_text
from tests.test_credentials import revocation, verified

STAGING_READ = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}


class Hook:
    """A hook as a platform team would write one: checks the signature and the timestamp, keeps what it issued."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls: list[dict] = []
        self.issued: dict[str, dict] = {}  # grant id -> what it made
        self.held: dict[str, str] = {}  # account name -> when it was made (RFC 3339), for the list action
        self.failing = False  # answer 503 to everything
        self.slow_to_confirm = 0  # verify answers revoked: false this many times first
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get("X-Grantbot-Timestamp", "")
        expected = "v1=" + hmac.new(self.secret.encode(), f"v1:{timestamp}:".encode() + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Grantbot-Signature", "")) or \
                abs(time.time() - int(timestamp or 0)) > 300:
            self.refused += 1
            return web.json_response({"error": "bad signature"}, status=401)
        call = json.loads(raw)
        self.calls.append(call)
        if self.failing:
            return web.json_response({"error": "the cluster API is not answering"}, status=503)
        if call["action"] == "list":
            return web.json_response({"accounts": [{"account": name, "created_at": at}
                                                   for name, at in self.held.items() if name.startswith(call["prefix"])]})
        grant = call["grant"]
        if call["action"] == "issue":
            token = "k8s-token-" + secrets.token_urlsafe(24)
            self.issued[grant["id"]] = {"service_account": call["account"], "token": token, "revoked": False}
            self.held.setdefault(call["account"], datetime.now(UTC).isoformat().replace("+00:00", "Z"))
            return web.json_response({"token": token, "namespace": call["params"]["namespace"],
                                      "service_account": call["account"], "expires_at": "ignored"})
        if call["action"] == "revoke":
            self.issued.setdefault(grant["id"], {})["revoked"] = True
            self.held.pop(call["account"], None)
            return web.json_response({"summary": f"ServiceAccount {call['account']} and its RoleBinding deleted"})
        if self.slow_to_confirm:
            self.slow_to_confirm -= 1
            return web.json_response({"revoked": False})
        return web.json_response({"revoked": self.issued.get(grant["id"], {}).get("revoked", True)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/grant", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/grant"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def hook(monkeypatch):
    served = Hook(secret="hook-secret-" + secrets.token_hex(16))
    monkeypatch.setenv("GRANTBOT_TEST_HOOK_SECRET", served.secret)
    await served.start()
    yield served
    await served.stop()


def hook_policy(tmp_path, hook: Hook, secret_env: str = "GRANTBOT_TEST_HOOK_SECRET", options: str = ""):
    provider = f"  - {{name: k8s, kind: webhook, url: '{hook.url}', secret_env: {secret_env}{options}}}\n"
    return policy_with(tmp_path, provider, "{provider: k8s, params: {namespace: shop, role: view}}",
                       "{provider: k8s, params: {namespace: shop, role: edit}}")


async def test_the_hooks_answer_is_the_credential_and_it_is_asked_to_revoke_and_verify_at_expiry(
        hook, start_grantbot, tmp_path, clock, sandbox, caplog):
    grantbot = await start_grantbot(policy_file=hook_policy(tmp_path, hook))
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201, created
    grant = created["grant"]
    [credential] = grant["credentials"]
    made = hook.issued[grant["id"]]
    assert credential == {"provider": "k8s", "kind": "webhook", "token": made["token"], "namespace": "shop",
                          "service_account": made["service_account"], "expires_at": grant["expires_at"]}
    [issue] = hook.calls
    assert issue["action"] == "issue" and issue["params"] == {"namespace": "shop", "role": "view"}
    assert issue["grant"] == {"id": grant["id"], "identity": "deploy-bot", "environment": "staging",
                              "scopes": ["db:read"], "expires_at": grant["expires_at"]}

    clock.advance(61)
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert "revoked by the hook: ServiceAccount" in seen["detail"], seen
    assert [c["action"] for c in hook.calls] == ["issue", "revoke", "verify"]
    told = await eventually(lambda: next((m for m in sandbox.messages if "Access removed" in m["text"]), None))
    assert "Checked: the hook confirms it is revoked" in told["text"], told["text"]
    everything = caplog.text + json.dumps(sandbox.messages) + json.dumps(
        await grantbot.app["store"].audit_events() if "store" in grantbot.app else [], default=str)
    assert made["token"] not in everything and hook.secret not in everything


async def test_an_early_revoke_from_the_card_asks_the_hook_and_a_slow_confirmation_stays_pending(
        hook, start_grantbot, tmp_path, clock, sandbox):
    grantbot = await start_grantbot(policy_file=hook_policy(tmp_path, hook))
    status, created = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"],
                                                         "ttl_seconds": 300, "reason": "rollout"})
    assert status == 202
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    await eventually(lambda: buttons(card) == ["revoke_grant"])  # approved (the click is handled after its ack)
    assert hook.calls == []  # nothing is made at approval: the hook issues at the hand-over
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    [credential] = decided["grant"]["credentials"]
    assert credential["token"] == hook.issued[decided["grant"]["id"]]["token"]
    assert hook.calls[0]["params"]["role"] == "edit"

    hook.slow_to_confirm = 1  # the controller has not caught up yet at the first check
    updated = await eventually(lambda: buttons(card) == ["revoke_grant"] and card)
    assert await grantbot.api.click(updated, "revoke_grant", "U0APPROVER") == 200
    pending = await eventually(lambda: _pending_with_error(grantbot, clock, created["id"]), timeout=10)
    assert "the hook says" in pending["detail"] and "not revoked" in pending["detail"], pending
    clock.advance(6)  # the first retry
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert seen["status"] == "verified"
    reply = await eventually(lambda: next((m for m in sandbox.messages if m.get("thread_ts") == card["ts"]
                                           and "Access removed" in m["text"]), None))
    assert "RoleBinding deleted" in reply["text"]


async def _pending_with_error(grantbot, clock, request_id):
    seen = await revocation(grantbot, clock, request_id)
    return seen if seen and seen["status"] == "pending" and "failed" in (seen["detail"] or "") else None


async def test_a_failing_hook_is_retried_then_failed_with_one_alert(hook, start_grantbot, tmp_path, clock, sandbox):
    grantbot = await start_grantbot(policy_file=hook_policy(tmp_path, hook), revocation_retry_seconds="2,4")
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201
    hook.failing = True
    clock.advance(61)

    async def failed():
        seen = await revocation(grantbot, clock, created["id"])
        if seen and seen["status"] == "failed":
            return seen
        clock.advance(2)
        return None

    seen = await eventually(failed, timeout=30, interval=0.3)
    assert "HTTP 503: the cluster API is not answering" in seen["detail"], seen
    assert [c["action"] for c in hook.calls] == ["issue", "revoke", "revoke", "revoke"]
    await eventually(lambda: [m for m in sandbox.messages if "Revocation failed" in m["text"]])
    await asyncio.sleep(0.3)
    assert len([m for m in sandbox.messages if "Revocation failed" in m["text"]]) == 1


async def test_a_hook_refusing_the_signature_is_a_503_that_names_the_provider(hook, start_grantbot, tmp_path):
    grantbot = await start_grantbot(policy_file=hook_policy(tmp_path, hook))
    hook.secret = "rotated-" + secrets.token_hex(8)  # the hook rotated its secret and grantbot was not told
    status, answer = await grantbot.api.request_access(STAGING_READ)
    assert status == 503 and answer["error"] == "credentials_unavailable", answer
    assert "provider k8s" in answer["detail"] and "HTTP 401: bad signature" in answer["detail"], answer
    # Refused twice: the issue, and the revoke of whatever it might have made (nothing is left behind).
    assert hook.refused == 2 and await grantbot.count("access_requests") == 0


async def test_a_listable_hooks_account_left_by_a_crash_is_revoked_and_a_live_grants_is_kept(
        hook, start_grantbot, tmp_path, clock, sandbox):
    """``options: {list: true}``: reconciliation asks the hook what it holds; an account whose grant grantbot never
    recorded (the hook made it, grantbot died before committing) is revoked once past the grace, one whose grant is
    active is left alone, and a name that is not grantbot's is not touched."""
    orphan_grant = str(uuid.uuid4())
    orphan = "gb_" + orphan_grant.replace("-", "")
    made_at = (clock.now() - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    hook.held[orphan] = made_at
    hook.held["gb_someone-elses-account"] = made_at
    grantbot = await start_grantbot(policy_file=hook_policy(tmp_path, hook, options=", options: {list: true}"),
                                    reconcile_interval_seconds=0.2)
    status, created = await grantbot.api.request_access(STAGING_READ)
    assert status == 201, created
    live = hook.issued[created["grant"]["id"]]["service_account"]

    await eventually(lambda: orphan not in hook.held, timeout=10)
    assert [c["action"] for c in hook.calls if c.get("account") == orphan][:1] == ["revoke"]
    await eventually(lambda: any(c["action"] == "verify" and c["account"] == orphan for c in hook.calls))
    await asyncio.sleep(1)  # several reconciliations more
    assert live in hook.held and "gb_someone-elses-account" in hook.held
    assert not [c for c in hook.calls if c.get("account") in (live, "gb_someone-elses-account")
                and c["action"] == "revoke"]
    assert not [m for m in sandbox.messages if "Access removed" in m["text"]]  # nobody asked for it in Slack


async def test_a_hook_not_said_to_be_listable_is_never_asked_to_list(hook, start_grantbot, tmp_path, clock):
    await start_grantbot(policy_file=hook_policy(tmp_path, hook), reconcile_interval_seconds=0.1)
    await asyncio.sleep(1)
    assert not [c for c in hook.calls if c["action"] == "list"]
