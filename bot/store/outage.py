"""Telling a database outage (retrying later helps: 503, a warning) from a statement the database refused (a bug:
500, a logged traceback)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be used now, whatever the statement:

    - ``OSError``: a refused or reset connection (``ConnectionError``), and ``TimeoutError``, which asyncpg raises
      when the database does not answer within the connect or command timeout (``bot.store.engine``);
    - ``sqlalchemy.exc.TimeoutError``: no free connection in the pool within its timeout;
    - a ``DBAPIError`` for a connection SQLAlchemy found lost (``connection_invalidated``), an ``OperationalError``
      or ``InterfaceError`` (asyncpg: "connection is closed"; SQLite: "database is locked"), or a driver error
      about the connection.
    """
    if isinstance(exc, (OSError, PoolTimeout)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)) or isinstance(
        exc.orig, OSError
    ) or "connection" in str(exc.orig).lower()
