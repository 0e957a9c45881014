"""Telling a database outage (retrying later helps: 503, a warning) from a statement the database refused (a bug:
500, a logged traceback)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

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
