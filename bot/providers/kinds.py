"""The kinds of provider grantbot knows, and the policy checks that need them (DESIGN.md "Real credentials").

A kind is a module with ``KIND`` (its name in the policy), ``build(spec, environ, services)``, ``check_spec(spec)``
and ``check_params(params)`` (problems as (key path, sentence), for the policy file's file:line:key errors) and
``describe(spec, params)`` (a sentence for ``grantbot policy explain`` and the approval card). A new kind is one
module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

from bot.domain.policy import Policy, Rule

_MODULES = {kind: f"bot.providers.{kind}" for kind in ("postgresql", "mysql", "redis", "rabbitmq", "ssh", "webhook")}


class _Kinds(Mapping[str, ModuleType]):
    """The kind's name (its module's ``KIND``) -> its module, imported on first use: a kind's driver (asyncpg,
    redis, PyMySQL) is loaded only when a policy names the kind. All of them at every start cost 0.25 s of CPU
    (``python -X importtime``), in every ``grantbot`` command that reads a policy."""

    def __getitem__(self, kind: str) -> ModuleType:
        return importlib.import_module(_MODULES[kind])

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


KINDS: Mapping[str, ModuleType] = _Kinds()


def provider_problems(policy: Policy, environ: Mapping[str, str] | None = None) -> list[tuple[tuple, str]]:
    """Problems of the policy's providers and of the rules' ``credentials:`` that only the kinds can see: an unknown
    kind, a key a kind does not take, a bad parameter; with ``environ``, also an admin URL variable that is unset
    (``grantbot serve`` and a reload check it; ``grantbot policy check`` may run where the variables are not set)."""
    problems: list[tuple[tuple, str]] = []
    for index, spec in enumerate(policy.providers):
        kind = KINDS.get(spec.kind)
        if kind is None:
            problems.append((("providers", index, "kind"),
                             f"unknown kind {spec.kind!r}; grantbot knows {', '.join(sorted(KINDS))}"))
            continue
        problems += [(("providers", index, *loc), message) for loc, message in kind.check_spec(spec)]
        if environ is not None and spec.url_env and not environ.get(spec.url_env):
            problems.append((("providers", index, "url_env"),
                             f"the environment variable {spec.url_env} (provider {spec.name}'s admin URL) is not set"))
        for key, variable in getattr(kind, "secret_variables", lambda _: [])(spec) if environ is not None else ():
            if not environ.get(variable):
                problems.append((("providers", index, key),
                                 f"the environment variable {variable} (provider {spec.name}'s secret) is not set"))
    for index, rule in enumerate(policy.rules):
        for position, credential in enumerate(rule.credentials):
            spec = policy.provider_named(credential.provider)
            kind = KINDS.get(spec.kind) if spec else None
            if kind is None:
                continue  # an unknown provider or kind is said above
            problems += [(("rules", index, "credentials", position, *loc), message)
                         for loc, message in kind.check_params(credential.model_dump())]
    return problems


def explain_credentials(policy: Policy, rule: Rule | None) -> list[str]:
    """One line per credential a grant under ``rule`` gets: ``orders-db (postgresql): a temporary role …``."""
    lines = []
    for credential in rule.credentials if rule else []:
        spec = policy.provider_named(credential.provider)
        kind = KINDS.get(spec.kind) if spec else None
        if spec is not None and kind is not None:
            lines.append(f"{spec.name} ({spec.kind}): {kind.describe(spec, credential.params())}")
    return lines
