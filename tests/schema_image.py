"""The schema at the code's head, made once per test process by the real migrations and copied into each test's
empty database: a SQLite file (sqlite3's backup API), or a PostgreSQL script (``pg_dump`` of a scratch database
the migrations ran on). Running Alembic for every test cost a quarter of the suite's time; the migrations
themselves are tested on their own (``test_migrations``, ``grantbot migrate`` in the end-to-end tests).

Without ``pg_dump`` on the PATH, a PostgreSQL database is left empty and the test's start migrates it as before.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bot.store.engine import create_engine
from bot.store.schema import upgrade


class SchemaImage:
    """Copies of the head schema into empty test databases; built on first use, kept for the test process."""

    def __init__(self, workdir: Path, admin_url: str) -> None:
        self._workdir = workdir
        self._admin_url = admin_url
        self._sqlite: Path | None = None
        self._postgres: str | None = None

    async def apply(self, database_url: str) -> bool:
        """Bring the database at ``database_url`` to the head schema if it is empty (no file; no tables). Returns
        whether it did; a database that has a schema is left alone (the start's migration handles it)."""
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            target = Path(url.database or "")
            if not url.database or url.database == ":memory:" or (target.exists() and target.stat().st_size):
                return False
            shutil.copyfile(await self._sqlite_file(), target)
            return True
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            if await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"):
                return False
            script = await self._postgres_script()
            if script is None:
                return False
            await conn.execute(script)
            return True
        finally:
            await conn.close()

    # Tests run one at a time in a test process: no lock (two starts in one test at worst build it twice).

    async def _sqlite_file(self) -> Path:
        if self._sqlite is None:
            name = uuid.uuid4().hex[:8]
            migrated, image = self._workdir / f"migrated-{name}.db", self._workdir / f"head-{name}.db"
            engine = create_engine(f"sqlite+aiosqlite:///{migrated}")
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
            source, copy = sqlite3.connect(migrated), sqlite3.connect(image)
            try:
                source.backup(copy)  # one self-contained file, whatever the WAL still held
            finally:
                source.close()
                copy.close()
            self._sqlite = image
        return self._sqlite

    async def _postgres_script(self) -> str | None:
        if self._postgres is None:
            if shutil.which("pg_dump") is None:
                return None
            name = f"grantbot_image_{uuid.uuid4().hex[:8]}"
            url = self._admin_url.rsplit("/", 1)[0] + "/" + name
            admin = await asyncpg.connect(self._admin_url)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
                engine = create_engine(url)
                try:
                    await upgrade(engine)
                finally:
                    await engine.dispose()
                dumped = await asyncio.to_thread(subprocess.run, [
                    "pg_dump", "--no-owner", "--no-privileges", "--inserts", "--schema=public", "-d", url,
                ], capture_output=True, text=True, check=True)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
            # psql's meta-commands (\restrict) are not SQL; the test's public schema exists already, empty.
            lines = [line for line in dumped.stdout.splitlines() if not line.startswith("\\")]
            self._postgres = "DROP SCHEMA public CASCADE;\n" + "\n".join(lines)
        return self._postgres


_shared: SchemaImage | None = None


def shared_image() -> SchemaImage:
    """This test process's :class:`SchemaImage` (its files in a temporary directory removed at exit)."""
    global _shared
    if _shared is None:
        workdir = Path(tempfile.mkdtemp(prefix="grantbot-schema-"))
        atexit.register(shutil.rmtree, workdir, True)
        _shared = SchemaImage(workdir, os.environ.get("GRANTBOT_TEST_POSTGRES_URL",
                                                      "postgresql://postgres@127.0.0.1:5432/postgres"))
    return _shared


async def at_head(database_url: str) -> None:
    """Give an empty test database the head schema (a copy of what the migrations made)."""
    await shared_image().apply(database_url)
