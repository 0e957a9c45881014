"""Reading the policy file: YAML (PyYAML ``safe_load``) in, a validated ``Policy`` out (DESIGN.md "Policy file")."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.domain.errors import PolicyError
from bot.domain.policy import Policy, validate_policy


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document; :class:`PolicyError` names ``source``, the line, the key and the
    problem (e.g. ``policy.yaml:14: rules[2].when.timezone: unknown timezone 'Europe/Berln'``)."""
    if not text.strip():
        raise PolicyError(f"{source}: the policy file is empty; it needs at least rules (or a default)")
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if data is None:  # only comments: as good as empty
        raise PolicyError(f"{source}: the policy file is empty; it needs at least rules (or a default)")
    return validate_policy(data, source, locator(tree))


def locator(tree: yaml.Node | None):
    """Map a key path to the 1-based line of the deepest node of it that exists in the YAML document."""

    def locate(path: tuple) -> int | None:
        node, line = tree, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if found is None:
                    break
                line, node = found[0].start_mark.line + 1, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    return locate if tree is not None else None


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``; raises :class:`PolicyError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PolicyError(
            f"{path}: the policy file does not exist (looked for {path.resolve()}); set GRANTBOT_POLICY_FILE to your "
            "policy file "
            "(bot/examples/policy.yaml is one to start from; `grantbot dev` runs with it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PolicyError(f"{path}: cannot read the policy file: {reason}") from None
    return parse_policy(text, str(path))
