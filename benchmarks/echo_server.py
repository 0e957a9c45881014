"""The yardstick: a bare aiohttp server that parses an access-request body and echoes it back as JSON.

DESIGN.md "Performance to design for" states grantbot's goals as a share of what this serves on the same machine
in the same run. It answers every POST path (``/v1/access-requests``, ``/oauth/introspect``) the same way, so the
load generator's requests need no change between the two servers.

    python benchmarks/echo_server.py PORT
"""

from __future__ import annotations

import json
import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {"form": raw.decode(errors="replace")}
    return web.json_response({"echo": body}, status=201)


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
