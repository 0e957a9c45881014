"""The house's rules (README "How it is built"), checked on the import statements: each room imports only what it
may, so a newcomer finds behaviour where the folder names say and no layer reaches past its ports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).parents[1] / "bot"

# room -> modules it must not import (by prefix)
FORBIDDEN = {
    "domain": ("aiohttp", "slack_bolt", "slack_sdk", "sqlalchemy", "sqlmodel", "asyncpg", "apscheduler", "jwt",
               "bot.store", "bot.web", "bot.slack", "bot.tokens", "bot.identity", "bot.providers", "bot.app"),
    "web": ("bot.store", "sqlalchemy", "sqlmodel", "asyncpg"),
    "slack": ("bot.store", "sqlalchemy", "sqlmodel", "asyncpg", "aiohttp.web"),
    "client": ("bot.store", "bot.domain", "bot.web", "bot.app", "bot.slack", "bot.identity", "bot.providers",
               "sqlalchemy"),
    "sandbox": ("bot.store", "bot.domain", "bot.web", "bot.app", "bot.slack"),
    "providers": ("bot.store", "bot.web", "bot.slack", "sqlalchemy"),
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_each_room_imports_only_what_it_may(room):
    assert (BOT / room).is_dir(), room
    crossings = sorted(
        f"{path.relative_to(BOT.parent)} imports {name}"
        for path in (BOT / room).rglob("*.py")
        for name in imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[room])
    )
    assert crossings == []


def test_the_readmes_layout_names_every_room_and_every_store_module():
    readme = (BOT.parent / "README.md").read_text()
    layout = readme.split("### Layout", 1)[1].split("\n### ", 1)[0]
    rooms = sorted(p.name for p in BOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert [room for room in rooms if f"`bot/{room}/`" not in layout] == []
    store = sorted(p.name for p in (BOT / "store").glob("*.py") if p.name not in ("__init__.py", "schema.py",
                                                                                "engine.py", "outage.py"))
    assert [module for module in store if f"`{module}`" not in layout] == []
