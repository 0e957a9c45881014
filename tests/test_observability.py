"""What an operator reads: `grantbot serve` logs JSON lines, an access log line per HTTP request with its request
id (answered in X-Request-Id), and that id in every line and audit event of the request."""

from __future__ import annotations

import json
import subprocess
import uuid

from tests.test_end_to_end import api, grantbot_command, process  # noqa: F401 (fixtures)


def log_lines(process) -> list[dict]:
    lines = process.log_path.read_text().splitlines()
    parsed = []
    for line in lines:
        if line.strip():
            parsed.append(json.loads(line))  # every line is one JSON object, tracebacks included
    return parsed


async def test_every_line_is_json_and_each_request_has_its_access_line_and_id(process, api):
    approved_id, refused_id = f"pipeline-{uuid.uuid4().hex[:8]}", f"attacker-{uuid.uuid4().hex[:8]}"
    status, headers, created = await api.exchange(
        "POST", "/v1/access-requests", {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60},
        headers={"X-Request-Id": approved_id})
    assert status == 201 and headers["X-Request-Id"] == approved_id
    status, headers, _ = await api.exchange("POST", "/v1/access-requests", {"environment": "staging"},
                                            sign=False, headers={"X-Request-Id": refused_id})
    assert status == 401 and headers["X-Request-Id"] == refused_id
    status, headers, _ = await api.exchange("GET", "/healthz", sign=False,
                                            headers={"X-Request-Id": "not a plausible id; made up\tby a client"})
    assert status == 200 and len(headers["X-Request-Id"]) == 32  # replaced by one of its own

    lines = log_lines(process)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "bot.web.access"}
    created_line, refused_line = access[approved_id], access[refused_id]
    assert created_line["status"] == 201 and created_line["route"] == "/v1/access-requests"
    assert created_line["method"] == "POST" and created_line["identity"] == "deploy-bot"
    assert created_line["duration_ms"] >= 0
    assert refused_line["status"] == 401 and "identity" not in refused_line
    # The request's life: its decision, and the refusal of the unsigned one, each once, with the request's id.
    decided = [line for line in lines if line["logger"] == "bot.domain.usecases.request_access"]
    assert [line["request_id"] for line in decided] == [approved_id]
    assert decided[0]["access_request"] == created["id"] and decided[0]["status"] == "approved"
    refusals = [line for line in lines if line.get("refusal") == "auth.refused"]
    assert [line["request_id"] for line in refusals] == [refused_id]

    exported = subprocess.run(grantbot_command("audit") + ["export"], env=process.env, capture_output=True,
                              text=True, timeout=60)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    of_request = [e for e in events if e.get("request_id") == created["id"]]
    assert of_request and all(e["data"]["http_request_id"] == approved_id for e in of_request)


async def test_text_format_on_request(tmp_path, database_url, sandbox):
    from tests.test_end_to_end import Process, at_head

    proc = Process(tmp_path, database_url, sandbox)
    proc.env["GRANTBOT_LOG_FORMAT"] = "text"
    await at_head(proc)
    await proc.start()
    try:
        first = proc.log_path.read_text().splitlines()[0]
        assert not first.startswith("{") and " INFO bot.app: policy " in first
    finally:
        await proc.kill(15)


async def test_metrics_count_refused_callers_by_scheme_and_reason(grantbot):
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]}, sign=False)
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]}, secret="wrong")
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]}, identity="nobody",
                                      secret="wrong")
    await grantbot.api.introspect("x", client=("rs", "wrong"))
    async with grantbot.api.http.get(grantbot.base_url + "/metrics") as resp:
        text = await resp.text()
    for scheme, reason in (("hmac", "unsigned"), ("hmac", "bad_signature"), ("hmac", "unknown_identity"),
                           ("basic", "bad_client")):
        assert f'grantbot_auth_failures_total{{reason="{reason}",scheme="{scheme}"}} 1.0' in text, text


async def test_metrics_count_decisions_by_rule_and_who_and_grants_issued_and_revoked(grantbot, sandbox, clock,
                                                                                      caplog):
    from tests.support import cards, eventually, message_text

    status, auto = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert status == 201
    status, _ = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:write"]})
    assert status == 403
    status, pending = await grantbot.api.request_access(
        {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60})
    assert status == 202
    card = await eventually(lambda: next((c for c in cards(sandbox) if pending["id"] in message_text(c)), None))
    clock.advance(90)  # people take a minute and a half to decide
    assert await grantbot.api.click(card, "approve", "U0OTHER") == 200  # not an approver: refused
    await eventually(lambda: any(e["user"] == "U0OTHER" for e in sandbox.ephemerals))
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    _, decided = await grantbot.api.get_request(pending["id"], wait=10)
    assert decided["status"] == "approved"
    status, _ = await grantbot.api.call("POST", f"/v1/grants/{auto['grant']['id']}/revoke")
    assert status == 200

    # Each decision, verdict, refusal and revocation is one INFO line with its ids as fields.
    def lines(**fields) -> list:
        return [r for r in caplog.records if r.levelname == "INFO"
                and all(getattr(r, k, None) == v for k, v in fields.items())]

    assert len(lines(access_request=auto["id"], status="approved", rule="staging-read")) == 1
    assert len(lines(access_request=pending["id"], status="pending")) == 1
    assert len(lines(access_request=pending["id"], approver="U0APPROVER", status="approved")) == 1
    assert len(lines(refusal="approval.refused", who="U0OTHER")) == 1
    assert len(lines(grant=auto["grant"]["id"], via="api:holder", by="deploy-bot")) == 1
    async with grantbot.api.http.get(grantbot.base_url + "/metrics") as resp:
        text = await resp.text()
    for line in ('grantbot_decisions_total{by="policy",decision="approved",rule="staging-read"} 1.0',
                 'grantbot_decisions_total{by="policy",decision="denied",rule="default"} 1.0',
                 'grantbot_decisions_total{by="people",decision="approved",rule="prod-write"} 1.0',
                 'grantbot_decision_seconds_bucket{decision="approved",le="60.0"} 0.0',
                 'grantbot_decision_seconds_bucket{decision="approved",le="120.0"} 1.0',
                 "grantbot_grants_issued_total 2.0", "grantbot_grants_revoked_total 1.0"):
        assert line in text, line
