"""The database going away: 503 with Retry-After (never a traceback), /readyz says not ready, and grantbot recovers
by itself when the database comes back. PostgreSQL behind a TCP relay that the test cuts."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.support import TcpProxy


# A network outage needs a database over the network: PostgreSQL only.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_outage_answers_503_and_recovers_without_a_restart(database_url, start_grantbot):
    url = urlsplit(database_url)
    proxy = TcpProxy(url.hostname, url.port or 5432)
    await proxy.start()
    try:
        proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
        grantbot = await start_grantbot(database_url=proxied)
        body = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}
        assert (await grantbot.api.request_access(body))[0] == 201
        body["ttl_seconds"] = 61  # every call below is a new request, signed anew
        async with grantbot.api.http.get(grantbot.base_url + "/readyz") as resp:
            assert resp.status == 200

        proxy.cut()
        status, headers, answer = await grantbot.api.exchange("POST", "/v1/access-requests", body)
        assert status == 503 and answer["error"] == "unavailable" and "retry" in answer["detail"]
        assert int(headers["Retry-After"]) > 0
        async with grantbot.api.http.post(grantbot.base_url + "/v1/access-requests", json=body) as resp:
            assert resp.status in (401, 503)  # unsigned: refused before or because of the database
        async with grantbot.api.http.get(grantbot.base_url + "/readyz") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
        async with grantbot.api.http.get(grantbot.base_url + "/healthz") as resp:
            assert resp.status == 200  # alive: restarting would not help

        proxy.restore()
        status, answer = await grantbot.api.request_access({**body, "ttl_seconds": 62})
        assert status == 201, answer
        async with grantbot.api.http.get(grantbot.base_url + "/readyz") as resp:
            assert resp.status == 200
    finally:
        await proxy.stop()
