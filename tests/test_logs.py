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

    exported = subprocess.run(grantbot_command("audit") + ["export"], env=process.env, capture_output=True,
                              text=True, timeout=60)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    of_request = [e for e in events if e.get("request_id") == created["id"]]
    assert of_request and all(e["data"]["http_request_id"] == approved_id for e in of_request)


async def test_text_format_on_request(tmp_path, database_url, sandbox):
    from tests.test_end_to_end import Process, migrate

    proc = Process(tmp_path, database_url, sandbox)
    proc.env["GRANTBOT_LOG_FORMAT"] = "text"
    migrate(proc)
    await proc.start()
    try:
        first = proc.log_path.read_text().splitlines()[0]
        assert not first.startswith("{") and " INFO bot.app: policy " in first
    finally:
        await proc.kill(15)
