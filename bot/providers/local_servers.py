"""Which servers a provider could hand out access to on this machine, for ``grantbot dev``: each is asked in its own
protocol's first words (PostgreSQL's SSLRequest, MySQL's handshake, Redis' PING, AMQP's protocol header, the
RabbitMQ management API's overview), so a port taken by something else is not mistaken for it. Probes are short
and run together: ``grantbot dev`` starts at once whatever is missing."""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass

import aiohttp

PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class LocalServer:
    """A server looked for: its ``name``, the ``kind`` of provider for it, where, whether it answered (and its
    ``version`` when it says), and ``hint``: what to do with it (or about it)."""

    name: str
    kind: str
    address: str
    found: bool
    version: str = ""
    hint: str = ""


async def _exchange(host: str, port: int, send: bytes, read: int) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_SECONDS)
    try:
        if send:
            writer.write(send)
            await writer.drain()
        return await asyncio.wait_for(reader.read(read), PROBE_SECONDS)
    finally:
        writer.close()


async def _postgres(host: str) -> LocalServer:
    answer = await _exchange(host, 5432, struct.pack(">ii", 8, 80877103), 1)  # SSLRequest: 'S' or 'N'
    found = answer in (b"S", b"N")
    return LocalServer("PostgreSQL", "postgresql", f"{host}:5432", found, hint=(
        f"grantbot dev --postgres postgresql://postgres@{host}:5432/postgres" if found else ""))


async def _mysql(host: str) -> LocalServer:
    greeting = await _exchange(host, 3306, b"", 256)  # 4-byte header, protocol 10, the version, NUL
    found = len(greeting) > 6 and greeting[4] == 10
    version = greeting[5:].split(b"\0", 1)[0].decode(errors="replace") if found else ""
    version = version.removeprefix("5.5.5-")  # MariaDB's prefix for clients that parse the major version
    return LocalServer("MariaDB" if "mariadb" in version.lower() else "MySQL", "mysql", f"{host}:3306", found,
                       version, f"kind: mysql, url_env holding mysql://root@{host}:3306/DATABASE" if found else "")


async def _redis(host: str) -> LocalServer:
    answer = await _exchange(host, 6379, b"PING\r\n", 64)
    found = answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))
    return LocalServer("Redis", "redis", f"{host}:6379", found, hint=(
        f"kind: redis, url_env holding redis://{host}:6379/0 (Redis 7+)" if found else ""))


async def _rabbitmq(host: str) -> LocalServer:
    answer = await _exchange(host, 5672, b"AMQP\x00\x00\x09\x01", 1)  # a Connection.Start method frame follows
    if answer != b"\x01":
        return LocalServer("RabbitMQ", "rabbitmq", f"{host}:5672", False)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)) as http:
            async with http.get(f"http://{host}:15672/api/overview") as resp:
                management = resp.status in (200, 401)
    except (aiohttp.ClientError, TimeoutError, OSError):
        management = False
    hint = (f"kind: rabbitmq, url_env holding http://USER:PASSWORD@{host}:15672 (the management API)" if management
            else "its management API (15672) is off: rabbitmq-plugins enable rabbitmq_management")
    return LocalServer("RabbitMQ", "rabbitmq", f"{host}:5672", True, hint=hint)


async def find_local_servers(host: str = "127.0.0.1") -> list[LocalServer]:
    """Every server looked for, found or not, in a fixed order; each probe takes at most about a second."""
    probes = [("PostgreSQL", "postgresql", 5432, _postgres), ("MariaDB/MySQL", "mysql", 3306, _mysql),
              ("Redis", "redis", 6379, _redis), ("RabbitMQ", "rabbitmq", 5672, _rabbitmq)]

    async def one(name: str, kind: str, port: int, probe) -> LocalServer:
        try:
            return await probe(host)
        except (OSError, TimeoutError, IndexError):
            return LocalServer(name, kind, f"{host}:{port}", False)

    return list(await asyncio.gather(*(one(*probe) for probe in probes)))


def servers_text(servers: list[LocalServer]) -> str:
    """``grantbot dev``'s lines about them, e.g. ``  MariaDB 10.11.19   127.0.0.1:3306  found: kind: mysql, …``."""
    lines = ["Servers on this machine that real credentials can be handed out in (README \"Real credentials\"):"]
    for server in servers:
        name = f"{server.name} {re.split(r'[-+]', server.version)[0]}".strip()
        said = f"found: {server.hint}" if server.found else "not found"
        lines.append(f"  {name:<20} {server.address:<16} {said}")
    lines.append("  (ssh certificates need no server here; a webhook calls your own hook)")
    return "\n".join(lines)
