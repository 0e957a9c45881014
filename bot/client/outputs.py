"""``--output json|token|env|github``: where an approved request's token and credentials go.

- ``json`` (default): the request as grantbot answered it, the grant's ``access_token`` and ``credentials``
  included, on stdout;
- ``token``: the access token alone on stdout (``TOKEN=$(grantbot request … --output token)``);
- ``env``: ``export NAME='value'`` lines on stdout, for ``eval`` or ``.``: ``GRANTBOT_TOKEN``,
  ``GRANTBOT_GRANT_ID``, ``GRANTBOT_EXPIRES_AT``, ``GRANTBOT_REQUEST_ID``, and each credential's fields as
  ``GRANTBOT_<PROVIDER>_<FIELD>``; a PostgreSQL credential (the first one) also as libpq's ``PGHOST``,
  ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, and a MySQL one as ``MYSQL_HOST``, ``MYSQL_TCP_PORT``,
  ``MYSQL_PWD``;
- ``github``: ``::add-mask::`` for every secret on stdout first (GitHub Actions' workflow command that hides a
  value in the job's log), then the same variables appended to ``$GITHUB_ENV`` (for the job's later steps) and
  the outputs ``token``, ``grant-id``, ``expires-at``, ``request-id`` to ``$GITHUB_OUTPUT``.

A secret is written to no other place than the channel of the chosen output.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from bot.client.exits import ExitCode, Stop

OUTPUTS = ("json", "token", "env", "github")
# Credential fields that are not secret; every other field (password, dsn, private_key, certificate, unknown
# ones a provider adds) is masked.
PUBLIC_FIELDS = frozenset({"provider", "kind", "username", "host", "port", "database", "expires_at", "principals",
                           "vhost"})
LIBPQ = {"host": "PGHOST", "port": "PGPORT", "database": "PGDATABASE", "username": "PGUSER", "password": "PGPASSWORD"}
MYSQL = {"host": "MYSQL_HOST", "port": "MYSQL_TCP_PORT", "password": "MYSQL_PWD"}
CONVENTIONAL = {"postgresql": LIBPQ, "mysql": MYSQL}


def check_ready(output: str, environ: Mapping[str, str]) -> None:
    """Refuse (exit 2) before asking anything when the output has nowhere to go."""
    if output == "github":
        missing = [name for name in ("GITHUB_OUTPUT", "GITHUB_ENV") if not environ.get(name)]
        if missing:
            raise Stop(ExitCode.USAGE, f"--output github writes to $GITHUB_OUTPUT and $GITHUB_ENV, and {' and '.join(missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not set: use it in a GitHub Actions step, or choose "
                       "--output json|token|env.")


def credentials(view: dict) -> list[dict]:
    found = view.get("grant", {}).get("credentials") or []
    return [c for c in found if isinstance(c, dict)]


def secret_values(view: dict) -> list[str]:
    """Every secret of an approved request: the access token and the credentials' secret fields."""
    values = [view["grant"]["access_token"]]
    for credential in credentials(view):
        values += [str(v) for k, v in credential.items() if k not in PUBLIC_FIELDS and v not in (None, "")]
    return values


def _name(text: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def variables(view: dict) -> dict[str, str]:
    """The environment variables ``env`` and ``github`` set (see the module)."""
    grant = view["grant"]
    found = {"GRANTBOT_TOKEN": grant["access_token"], "GRANTBOT_GRANT_ID": str(grant.get("id", "")),
             "GRANTBOT_EXPIRES_AT": str(grant.get("expires_at", "")), "GRANTBOT_REQUEST_ID": str(view.get("id", ""))}
    conventional_done: set[str] = set()
    for credential in credentials(view):
        provider = _name(str(credential.get("provider") or credential.get("kind") or "credential"))
        for key, value in credential.items():
            if key not in ("provider", "kind") and value is not None:
                found[f"GRANTBOT_{provider}_{_name(key)}"] = _text(value)
        kind = credential.get("kind")
        if kind in CONVENTIONAL and kind not in conventional_done:
            conventional_done.add(kind)
            for key, name in CONVENTIONAL[kind].items():
                if credential.get(key) is not None:
                    found[name] = _text(credential[key])
    return found


def write(output: str, view: dict, stdout: TextIO, environ: Mapping[str, str] = os.environ) -> None:
    """Write an approved request to ``output`` (one of :data:`OUTPUTS`)."""
    if output == "json":
        stdout.write(json.dumps(view, indent=2) + "\n")
    elif output == "token":
        stdout.write(view["grant"]["access_token"] + "\n")
    elif output == "env":
        stdout.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in variables(view).items())
    elif output == "github":
        _github(view, stdout, environ)
    stdout.flush()


def _github(view: dict, stdout: TextIO, environ: Mapping[str, str]) -> None:
    for value in secret_values(view):
        # A mask covers one line of the log: a multi-line secret (a private key) is masked line by line.
        for line in value.splitlines() or [value]:
            if line.strip():
                stdout.write(f"::add-mask::{line}\n")
    stdout.flush()  # masks reach the runner before anything else could show a secret
    grant = view["grant"]
    _append(Path(environ["GITHUB_ENV"]), variables(view))
    _append(Path(environ["GITHUB_OUTPUT"]), {"token": grant["access_token"], "grant-id": str(grant.get("id", "")),
                                             "expires-at": str(grant.get("expires_at", "")),
                                             "request-id": str(view.get("id", ""))})


def _append(path: Path, values: dict[str, str]) -> None:
    """Append ``name=value`` lines, or GitHub's ``name<<DELIMITER`` form for a value with a line break (GitHub
    docs, "Workflow commands": multiline strings)."""
    lines = []
    for name, value in values.items():
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
            lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            lines.append(f"{name}={value}\n")
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(lines)
