"""``/ssh/{provider}/…``: what SSH servers fetch from an ``ssh`` provider, public and unauthenticated (DESIGN.md
"Other kinds"): the certificate authority's public key for ``TrustedUserCAKeys`` and the key revocation list for
``RevokedKeys``."""

from __future__ import annotations

from aiohttp import web

from bot.domain import usecases
from bot.web.keys import DEPS

routes = web.RouteTableDef()


@routes.get("/ssh/{provider}/ca.pub")
async def ca_public_key(request: web.Request) -> web.Response:
    """The CA's OpenSSH public key line (``text/plain``); 404 for a name that is not an ssh provider."""
    line = usecases.ssh_ca_public_key(request.app[DEPS], request.match_info["provider"])
    return web.Response(text=line + "\n", content_type="text/plain", headers={"Cache-Control": "public, max-age=300"})


@routes.get("/ssh/{provider}/krl")
async def revocation_list(request: web.Request) -> web.Response:
    """The key revocation list in OpenSSH's binary KRL format (``application/octet-stream``), built now from the
    certificates whose grant ended; servers fetch it often, so it is never cached on the way."""
    data = await usecases.ssh_revocation_list(request.app[DEPS], request.match_info["provider"])
    return web.Response(body=data, content_type="application/octet-stream", headers={"Cache-Control": "no-store"})
