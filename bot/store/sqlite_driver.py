"""SQLAlchemy's aiosqlite adapter with one trip to SQLite's thread per statement instead of three or four.

aiosqlite runs every call on a thread of its own; SQLAlchemy's cursor adapter makes one call to open a cursor, one
to execute, one to fetch the rows and one to close it, each a queue put, a thread wake-up and a
``call_soon_threadsafe`` back to the event loop, which then has to come round (under load, after every other ready
callback). Here one function does all four on the thread (benchmarks/README.md measured the trips as most of the
request path's cost on SQLite). Given to SQLAlchemy as its DBAPI module (``create_async_engine(module=…)``), so the
dialect, the URLs and the SQL are SQLAlchemy's own.

It reaches into aiosqlite's ``Connection._execute`` (run a function on the connection's thread) and ``_conn`` (the
sqlite3 connection), as SQLAlchemy's own adapter does for its isolation level; aiosqlite ≥ 0.20.

:func:`run_in_one_trip` goes one step further for the request path's grouped commits (``bot.store.group_commit``):
a whole write transaction, its statements built and run by SQLAlchemy's synchronous Core over the same sqlite3
connection, in one trip.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from threading import Thread
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_


def _run(connection, operation: str, parameters, many: bool):
    """On SQLite's thread: execute, fetch what it returns, close; the cursor's description, rows, row count and
    last row id."""
    cursor = connection._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else ()
        # Read after the fetch: for UPDATE … RETURNING sqlite3 counts the rows as they are stepped through.
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor with no aiosqlite cursor behind it: each execute is one trip that leaves the results here."""

    __slots__ = ("_description", "_rowcount", "_lastrowid")
    _awaitable_cursor_close = False  # nothing to close on the thread: ``_run`` closed it

    def __init__(self, adapt_connection) -> None:
        self._description = None
        self._rowcount = -1
        self._lastrowid = None
        super().__init__(adapt_connection)

    def _make_new_cursor(self, connection) -> None:
        return None

    def _aenter_cursor(self, cursor) -> None:
        return None

    @property
    def description(self):
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self):
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._trip(operation, seq_of_parameters, many=True)

    async def _trip(self, operation: Any, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            self._description, rows, self._rowcount, self._lastrowid = await self._connection._execute(
                _run, self._connection, operation, parameters, many)
        self._rows = collections.deque(rows)

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module for ``create_async_engine(module=OneTripDBAPI.load())``."""

    @classmethod
    def load(cls) -> OneTripDBAPI:
        return cls(__import__("aiosqlite"), __import__("sqlite3"))

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        creator = kw.pop("async_creator_fn", None)
        connection = creator(*arg, **kw) if creator else self.aiosqlite.connect(*arg, **kw)
        # As SQLAlchemy's adapter: a connection's thread never holds up the process's exit.
        thread = connection if isinstance(connection, Thread) else getattr(connection, "_thread", None)
        if thread is not None:
            thread.daemon = True
        return OneTripConnection(self, await_(connection))


# The SQLAlchemy series the shim was written and tested against (requirements.lock): it subclasses the adapter's
# internals, which may change between minor versions.
TESTED_SERIES = ("2.1.",)


def one_trip_dbapi() -> OneTripDBAPI | None:
    """The one-trip DBAPI module, or None (use SQLAlchemy's own adapter) on a SQLAlchemy outside ``TESTED_SERIES``."""
    if not sqlalchemy.__version__.startswith(TESTED_SERIES):
        return None
    return OneTripDBAPI.load()


T = TypeVar("T")

# A synchronous engine over each aiosqlite connection's sqlite3 connection, made on first use, on its thread (keyed
# by the aiosqlite connection: a sqlite3 connection takes no weak reference).
_sync_engines: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()


def runs_in_one_trip(engine: AsyncEngine) -> bool:
    """Whether ``engine`` uses this module's DBAPI (so :func:`run_in_one_trip` may be used on its connections)."""
    return isinstance(engine.dialect.loaded_dbapi, OneTripDBAPI)


async def run_in_one_trip(conn: AsyncConnection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(connection, *args)`` in one write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK``
    when it raises) on the thread of ``conn``'s SQLite connection, in one trip: ``connection`` is a synchronous
    SQLAlchemy ``Connection`` over the same sqlite3 connection (the same dialect, types and SQL as the async
    engine's). ``conn`` must not be in a transaction. Raises what ``fn`` or SQLite raised (SQLAlchemy's
    exceptions, e.g. ``IntegrityError``)."""
    fairy = await conn.get_raw_connection()
    adapter = fairy.dbapi_connection
    async with adapter._execute_mutex:
        return await adapter._connection._execute(_in_transaction, adapter._connection, fn, args)


def _in_transaction(aiosqlite_connection, fn: Callable[..., T], args: tuple) -> T:
    engine = _sync_engines.get(aiosqlite_connection)
    if engine is None:
        sqlite_connection = aiosqlite_connection._conn
        # StaticPool: this one connection, never closed by the pool (the async engine owns it); no reset on
        # return, since every use below ends with COMMIT or ROLLBACK.
        engine = sqlalchemy.create_engine("sqlite://", creator=lambda: sqlite_connection, poolclass=StaticPool,
                                          pool_reset_on_return=None)
        _sync_engines[aiosqlite_connection] = engine
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # as the async engine's writes (bot.store.engine)
        try:
            result = fn(connection, *args)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return result
