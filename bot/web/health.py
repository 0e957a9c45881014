"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text

from bot.web.keys import METRICS, STORE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the database answers, else 503 with ``Retry-After``."""
    try:
        async with request.app[STORE].engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return web.json_response(
            {"status": "unavailable", "detail": "The database does not answer."}, status=503, headers={"Retry-After": "5"}
        )
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format (version 0.0.4)."""
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})
