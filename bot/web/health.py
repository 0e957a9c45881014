"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from bot.web.keys import DEPS, METRICS, SETTINGS, STORE

log = logging.getLogger(__name__)
SCRAPE_DATABASE_SECONDS = 2.0  # well inside Prometheus' default 10 s scrape timeout

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the database answers within ``GRANTBOT_READINESS_TIMEOUT_SECONDS``, else 503 with
    ``Retry-After`` (after at most that time)."""
    if not await request.app[STORE].answers(request.app[SETTINGS].readiness_timeout_seconds):
        return web.json_response(
            {"status": "unavailable", "detail": "The database does not answer."}, status=503, headers={"Retry-After": "5"}
        )
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format (version 0.0.4). The database gauges are read now, within
    ``SCRAPE_DATABASE_SECONDS``; a database that does not answer sets ``grantbot_database_up`` to 0."""
    deps = request.app[DEPS]
    now = deps.clock.now()
    try:
        backlog = await asyncio.wait_for(request.app[STORE].backlog(now), SCRAPE_DATABASE_SECONDS)
    except Exception as exc:  # the scrape still answers: counters and the last gauges
        log.warning("metrics: the database did not answer: %s", type(exc).__name__)
        backlog = None
    request.app[METRICS].observe_backlog(backlog, now)
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})
