"""Telling a database outage (retrying later helps: 503, a warning) from a statement the database refused (a bug:
500, a logged traceback); asking whether the database answers at all, in bounded time; closing the pool of one
that does not."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# SQLSTATEs of a database that is away or overloaded rather than of a wrong statement
# (postgresql.org/docs/current/errcodes-appendix.html): class 08 connection exception, class 53 insufficient
# resources (too many connections, out of memory, disk full), and from class 57 admin_shutdown, crash_shutdown,
# cannot_connect_now (starting up) and idle_session_timeout.
OUTAGE_SQLSTATE_CLASSES = ("08", "53")
OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P05"})


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be used now, whatever the statement:

    - ``OSError``: a refused or reset connection (``ConnectionError``), and ``TimeoutError``, which asyncpg raises
      when the database does not answer within the connect or command timeout (``bot.store.engine``);
    - ``sqlalchemy.exc.TimeoutError``: no free connection in the pool within its timeout;
    - a ``DBAPIError`` for a connection SQLAlchemy found lost (``connection_invalidated``), an ``OperationalError``
      or ``InterfaceError`` (asyncpg: "connection is closed"; SQLite: "database is locked"), or a PostgreSQL
      error whose SQLSTATE is in ``OUTAGE_SQLSTATE_CLASSES`` or ``OUTAGE_SQLSTATES``.
    """
    if isinstance(exc, (OSError, PoolTimeout)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc.orig, OSError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES or sqlstate in OUTAGE_SQLSTATES


def translate_outages(cls):
    """Class decorator for the store's classes: every public coroutine method raises
    :class:`~bot.domain.errors.DatabaseUnavailable` (chained to the driver's error) where the database cannot be
    used now (:func:`is_outage`), so the layers above the store see a domain error, never SQLAlchemy's or a
    driver's. Errors that are not outages (a refused statement: a bug) pass unchanged."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(method):
            continue
        setattr(cls, name, _translating(method))
    return cls


def _translating(method):
    @functools.wraps(method)
    async def translated(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailable(cause=type(exc).__name__) from exc
            raise

    return translated


# Probes past their deadline that are still closing their connection (kept referenced until they end).
_closing: set[asyncio.Task] = set()


async def database_answers(engine: AsyncEngine, timeout: float) -> bool:
    """True when the database answers ``SELECT 1`` within ``timeout`` seconds, else False, at the latest after
    ``timeout``. The probe runs in a task of its own: cut off at its deadline, it goes on closing the connection
    that stopped answering in the background (SQLAlchemy gives that up to 2 s), and the answer does not wait."""
    probe = asyncio.create_task(_select_one(engine, timeout), name="database probe")
    _closing.add(probe)
    probe.add_done_callback(_closing.discard)
    done, _ = await asyncio.wait({probe}, timeout=timeout)
    return probe in done and probe.result()


async def _select_one(engine: AsyncEngine, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception:  # TimeoutError, refused or reset connections, a pool without a free connection
        return False
    return True


async def close_pool(engine: AsyncEngine, timeout: float) -> None:
    """Close the engine's connections at shutdown. When the database does not answer within ``timeout`` seconds
    (a failover, a network partition), its connections are dropped with the process instead: closing them
    politely waits on the database for each in turn (about the statement limit each, logged as an error), which
    could outlast the orchestrator's grace period. At most ``timeout`` plus SQLAlchemy's 2 s for the probe's own
    connection."""
    if engine.dialect.name == "postgresql" and not await database_answers(engine, timeout):
        log.warning("the database does not answer: its connections are left to close with the process")
        for probe in list(_closing):
            await asyncio.wait({probe})  # the probe's connection closes (terminated) before the pool is dropped
        await engine.dispose(close=False)
        return
    await engine.dispose()
