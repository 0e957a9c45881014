"""Reading the policy file: YAML (PyYAML ``safe_load``) in, a validated ``Policy`` out (DESIGN.md "Policy file")."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.domain.errors import PolicyError
from bot.domain.policy import Policy, validate_policy


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document; :class:`PolicyError` names ``source``, the key and the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    return validate_policy(data, source)


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``; raises :class:`PolicyError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PolicyError(f"{path}: cannot read the policy file: {reason}") from None
    return parse_policy(text, str(path))
