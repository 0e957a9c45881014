"""The providers in use (``bot.domain.ports.CredentialProviders``): built on first use from a spec (the policy's,
or the one a revocation kept) and reused while the process runs, so a policy reload that changes or removes a
provider leaves the grants issued under the old one revocable."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bot.domain.credentials import ProviderSpec
from bot.domain.errors import CredentialsUnavailable
from bot.domain.ports import Clock, RevokedCertificates
from bot.providers.kinds import KINDS

log = logging.getLogger(__name__)


# (kind, operation, result "ok" or "error", seconds): what a provider did, for metrics
Observe = Callable[[str, str, str, float], None]
MEASURED = ("create", "issue", "revoke", "verify_revoked", "accounts")


class _Measured:
    """A provider whose port operations (``MEASURED``) are timed and counted by kind and result; anything else is
    the provider's own."""

    def __init__(self, provider, kind: str, observe: Observe) -> None:
        self._provider, self._kind, self._observe = provider, kind, observe

    def __getattr__(self, name: str):
        attribute = getattr(self._provider, name)
        if name not in MEASURED:
            return attribute

        async def measured(*args, **kwargs):
            started, result = time.perf_counter(), "error"
            try:
                value = await attribute(*args, **kwargs)
                result = "ok"
                return value
            finally:
                self._observe(self._kind, name, result, time.perf_counter() - started)

        return measured


@dataclass(frozen=True)
class ProviderServices:
    """What some kinds need from the rest of grantbot (wired in ``bot.app``): an ``ssh`` provider's revocation list
    is made of the certificates whose grant ended, which the store knows, as of the clock's now."""

    revoked_certificates: RevokedCertificates | None = None
    clock: Clock | None = None


class ProviderPool:
    """Providers keyed by their whole spec: the same spec gives the same provider (and its connections).
    ``observe`` is told of every operation of theirs (kind, operation, result, seconds)."""

    def __init__(self, environ: Mapping[str, str] = os.environ, services: ProviderServices = ProviderServices(),
                 observe: Observe | None = None) -> None:
        self._environ = environ
        self._services = services
        self._observe = observe
        self._providers: dict[str, object] = {}

    def provider(self, spec: ProviderSpec):
        key = json.dumps(spec.target(), sort_keys=True)
        provider = self._providers.get(key)
        if provider is None:
            kind = KINDS.get(spec.kind)
            if kind is None:
                raise CredentialsUnavailable(
                    f"provider {spec.name}: kind {spec.kind!r} is unknown to this grantbot version", spec.name)
            provider = kind.build(spec, self._environ, self._services)
            if self._observe is not None:
                provider = _Measured(provider, spec.kind, self._observe)
            self._providers[key] = provider
        return provider

    async def close(self) -> None:
        """Close every provider's connections (at shutdown)."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            try:
                await provider.close()
            except Exception as exc:  # shutting down: nothing more to do about it
                log.warning("closing a credential provider failed: %s", type(exc).__name__)
