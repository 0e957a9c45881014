"""What the kinds of provider share: checking a ``providers:`` entry and a rule's parameters against a pydantic model
(problems as key path and sentence, for the policy file's file:line:key errors), account names that carry the
grant's id, fresh passwords, and counting things in a sentence."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from bot.domain.credentials import ProviderSpec

PASSWORD_BYTES = 32
GRANT_TOKEN_CHARS = 26  # a UUID's 128 bits in base32, without padding
_GRANT_TOKEN = re.compile(r"[a-z2-7]{26}")


def model_problems(model: type[BaseModel], data: dict) -> list[tuple[tuple, str]]:
    """Problems of ``data`` against ``model`` as (key path, sentence); an unknown key says to check its spelling."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [(tuple(e["loc"]), "unknown key (check its spelling and indentation)" if e["type"] == "extra_forbidden"
                 else e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    return []


def spec_problems(spec: ProviderSpec, kind: str, allowed: Iterable[str] = (), *, url_env: bool = True,
                  options: type[BaseModel] | None = None) -> list[tuple[tuple, str]]:
    """Problems every kind checks the same way: keys of other kinds (``allowed``: this kind's own extra keys),
    ``url_env`` (needed or not taken), ``owner_role`` (PostgreSQL's alone) and the kind's ``options``."""
    allowed = set(allowed)
    problems = [((key,), f"unknown key for a {kind} provider (check its spelling and indentation)")
                for key in spec.extras() if key not in allowed]
    if url_env and not spec.url_env:
        problems.append((("url_env",), f"a {kind} provider needs url_env: the variable holding its admin URL"))
    if not url_env and spec.url_env:
        problems.append((("url_env",), f"a {kind} provider takes no url_env"))
    if spec.owner_role is not None:
        problems.append((("owner_role",), f"a {kind} provider takes no owner_role (PostgreSQL's alone)"))
    if options is not None:
        problems += [(("options", *loc), message) for loc, message in model_problems(options, spec.options)]
    elif spec.options:
        problems.append((("options",), f"a {kind} provider takes no options"))
    return problems


def grant_token(grant_id: str) -> str:
    """A grant's id in 26 characters (base32 of its 128 bits, lower case): short enough for MySQL's 32-character
    user names with a prefix of up to 6, and turned back into the id by :func:`grant_of_token`."""
    return base64.b32encode(uuid.UUID(grant_id).bytes).decode().rstrip("=").lower()


def grant_of_token(token: str) -> str | None:
    """The grant id a :func:`grant_token` encodes, or None when ``token`` is not one."""
    if not _GRANT_TOKEN.fullmatch(token):
        return None
    try:
        return str(uuid.UUID(bytes=base64.b32decode(token.upper() + "======")))
    except ValueError:
        return None


def new_password() -> str:
    """32 random bytes, URL-safe base64 (43 characters): no quote, backslash or space to escape anywhere."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith(("x", "s", "sh")) else f"{count} {noun}s"


def utc_stamp(moment: datetime) -> str:
    """``2026-12-01T10:15:00Z``: the form markers carry."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
