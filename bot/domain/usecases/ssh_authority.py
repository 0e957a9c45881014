"""Use case: what SSH servers fetch from an ``ssh`` provider — the certificate authority's public key they trust and
the key revocation list of certificates whose grant ended early (DESIGN.md "Other kinds": ``GET /ssh/{provider}/
ca.pub`` and ``GET /ssh/{provider}/krl``, public and unauthenticated: neither holds a secret)."""

from __future__ import annotations

from bot.domain.errors import NotFound
from bot.domain.ports import CertificateAuthority
from bot.domain.usecases.deps import Deps

SSH_KIND = "ssh"


def _authority(deps: Deps, provider: str) -> CertificateAuthority:
    spec = deps.policy.provider_named(provider)
    if spec is None or spec.kind != SSH_KIND or deps.credentials is None:
        raise NotFound(f"There is no ssh provider named {provider!r} in the policy.")
    return deps.credentials.provider(spec)  # an ssh provider is a CertificateAuthority too


def ssh_ca_public_key(deps: Deps, provider: str) -> str:
    """The OpenSSH public key line of ``provider``'s CA. Raises :class:`NotFound` (no such ssh provider) and
    ``CredentialsUnavailable`` (its key file cannot be used)."""
    return _authority(deps, provider).ca_public_key()


async def ssh_revocation_list(deps: Deps, provider: str) -> bytes:
    """``provider``'s key revocation list (OpenSSH's binary KRL format) as of now. Raises :class:`NotFound` and
    ``CredentialsUnavailable`` (the database cannot be read)."""
    return await _authority(deps, provider).revocation_list()
