"""SSH provider: a grant becomes an OpenSSH user certificate signed by grantbot's SSH certificate authority (kind
``ssh``); an early revocation puts it in the key revocation list servers fetch.

The CA key (Ed25519, OpenSSH format) is the file ``ca_key_file`` names, created with mode 0600 when missing (every
replica must be given the same file). Servers trust it with ``TrustedUserCAKeys`` (the public key is served at
``GET /ssh/{provider}/ca.pub``) and read revocations with ``RevokedKeys`` (``GET /ssh/{provider}/krl``, fetched by a
timer on each server).

At the hand-over the pipeline's public key (``ssh_public_key`` in its request) is signed, or, when it sent none, a
fresh Ed25519 key pair is made and its private key handed over with the certificate, once. The certificate is a user
certificate for the rule's ``principals``, valid from the approval (less ``not_before_seconds``, for servers whose
clock is a little behind) until the grant's ``expires_at``, with the serial made of the grant's id (every
certificate of a grant shares it, so revoking the grant revokes each) and a key id naming the grant, the identity and
the provider (``sshd`` logs it at each login).

Revocation: a certificate ends by itself at ``valid_before``, checked by every server against its own clock, even
while grantbot is down. A grant ended early is listed by serial in the revocation list from then on (until an hour
after its certificate expired); servers refuse it once they have fetched that list. Open sessions are not ended:
``sshd`` checks certificates at login only. The check after a revocation: the list grantbot serves lists the serial
(or the certificate has expired).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_private_key,
    load_ssh_public_key,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.domain.credentials import (
    Account,
    Credential,
    MadeAccount,
    ProviderSpec,
    RevocationCheck,
    RevocationReport,
)
from bot.domain.errors import CredentialsUnavailable
from bot.providers.common import model_problems, spec_problems, utc_stamp
from bot.providers.ssh_krl import revocation_list

log = logging.getLogger(__name__)

KIND = "ssh"
# An ended grant's certificate stays in the revocation list this long after it expired (servers with a slow clock).
KRL_SLACK = timedelta(hours=1)
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
_PRINCIPAL = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}")
_EXTENSIONS = {"permit-pty", "permit-port-forwarding", "permit-agent-forwarding", "permit-X11-forwarding",
               "permit-user-rc", "no-touch-required"}
MAX_PUBLIC_KEY = 16_384


def check_public_key(text: str) -> str:
    """An OpenSSH public key line a certificate may be made for (Ed25519, ECDSA, or RSA of 2048 bits or more; not
    a certificate). Returns it stripped; raises ``ValueError`` saying what is wrong."""
    text = text.strip()
    if len(text) > MAX_PUBLIC_KEY or "\n" in text:
        raise ValueError("ssh_public_key must be one OpenSSH public key line, e.g. the content of id_ed25519.pub")
    try:
        key = load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"ssh_public_key is not an OpenSSH public key (like 'ssh-ed25519 AAAA… comment'): {exc}"
                         ) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("ssh_public_key: an RSA key needs at least 2048 bits; Ed25519 is best")
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("ssh_public_key: use an Ed25519, ECDSA or RSA key")
    return text


class Options(BaseModel):
    """The provider's ``options:``: ``not_before_seconds``, how long before the approval a certificate is valid
    from (servers whose clock is behind grantbot's would refuse it at first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    not_before_seconds: int = Field(default=30, ge=0, le=3600)


class Params(BaseModel):
    """A rule's ``credentials:`` entry: the ``principals`` (login names) the certificate is for, its
    ``extensions`` (default ``permit-pty``), and the critical options ``force_command`` and ``source_address``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    principals: list[str] = Field(min_length=1, max_length=32)
    extensions: list[str] = Field(default_factory=lambda: ["permit-pty"])
    force_command: str | None = Field(default=None, min_length=1, max_length=1000)
    source_address: str | None = Field(default=None, min_length=1, max_length=1000,
                                       pattern=r"^[0-9A-Fa-f.:/,*]+$")

    @field_validator("principals")
    @classmethod
    def _principals(cls, value: list[str]) -> list[str]:
        for principal in value:
            if not _PRINCIPAL.fullmatch(principal):
                raise ValueError(f"{principal!r} is not a login name (letters, digits, '.', '_', '-', '@')")
        return value

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        for extension in value:
            if extension not in _EXTENSIONS:
                raise ValueError(f"unknown certificate extension {extension!r}; use {', '.join(sorted(_EXTENSIONS))}")
        return value


def check_spec(spec: ProviderSpec) -> list[tuple[tuple, str]]:
    problems = spec_problems(spec, KIND, ("ca_key_file",), url_env=False, options=Options)
    ca_key_file = spec.extras().get("ca_key_file")
    if not isinstance(ca_key_file, str) or not ca_key_file:
        problems.append((("ca_key_file",), "an ssh provider needs ca_key_file: the path of its certificate "
                         "authority's private key (created with mode 0600 when missing)"))
    if not _PREFIX.fullmatch(spec.username_prefix) or len(spec.username_prefix) > 64:
        problems.append((("username_prefix",), f"{spec.username_prefix!r} must be lower-case letters, digits and "
                         "'_' (starting with a letter or '_'), at most 64 characters"))
    return problems


def check_params(params: dict) -> list[tuple[tuple, str]]:
    return model_problems(Params, params)


def describe(spec: ProviderSpec, params: dict) -> str:
    """``an SSH certificate for deploy (permit-pty) until the grant's expiry; …``"""
    principals = ", ".join(params.get("principals") or [])
    extensions = ", ".join(params.get("extensions") or ["permit-pty"]) or "no extension"
    extra = "".join(f", {name.replace('_', '-')} {params[name]}" for name in ("force_command", "source_address")
                    if params.get(name))
    return (f"an SSH certificate for {principals} ({extensions}{extra}) valid until the grant's expiry; an early "
            f"revocation lists it at /ssh/{spec.name}/krl (open sessions stay)")


def load_or_create_ca_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    """The CA private key at ``path`` (OpenSSH format, unencrypted; Ed25519 or ECDSA); a new Ed25519 key is written
    there (mode 0600, atomically: two replicas starting at once end up with the same key) when it is missing.
    Raises ``ValueError`` naming the path when the file is not such a key."""
    path = Path(path)
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            os.link(temporary, path)  # fails if another process put its key there first: that one is used
            log.info("created a new SSH certificate authority key at %s", path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable unencrypted OpenSSH private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: the SSH certificate authority key must be Ed25519 or ECDSA")
    return key


def serial_of(grant_id: str) -> int:
    """The certificate serial of a grant: its id's first 64 bits (never 0: a UUID4 carries its version there)."""
    return uuid.UUID(grant_id).int >> 64


class SSHProvider:
    """An ``ssh`` provider (``bot.domain.ports.CredentialProvider`` and ``CertificateAuthority``)."""

    def __init__(self, spec: ProviderSpec, ca_key, revoked=None, clock=None) -> None:
        self.spec = spec
        self.options = Options.model_validate(spec.options)
        self._ca = ca_key
        self._revoked = revoked
        self._clock = clock
        line = ca_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self._ca_line = f"{line.decode()} grantbot-{spec.name}"
        self._ca_blob = base64.b64decode(line.split()[1])

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    async def close(self) -> None:
        return None

    def username(self, grant_id: str) -> str:
        return self.spec.username_prefix + grant_id.replace("-", "").lower()

    def key_id(self, account: Account) -> str:
        return f"grantbot grant={account.grant_id} identity={account.identity or '?'} provider={self.spec.name}"

    # -- the certificate authority --------------------------------------------------------------------------

    def ca_public_key(self) -> str:
        """The CA's public key line, for ``TrustedUserCAKeys``."""
        return self._ca_line

    async def _revoked_serials(self, now: datetime) -> list[int]:
        if self._revoked is None:
            raise CredentialsUnavailable(f"provider {self.spec.name}: no revocation list is wired in", self.spec.name)
        return [serial_of(c.grant_id) for c in await self._revoked.revoked_certificates(self.spec.name,
                                                                                        now - KRL_SLACK)]

    async def revocation_list(self) -> bytes:
        """The KRL to serve now: every certificate whose grant ended, until an hour after it expired."""
        now = self._now()
        serials = await self._revoked_serials(now)
        return revocation_list(self._ca_blob, serials, version=int(now.timestamp()), generated_at=int(now.timestamp()),
                               comment=f"grantbot {self.spec.name} {utc_stamp(now)}")

    # -- the port -------------------------------------------------------------------------------------------

    async def create(self, account: Account, now: datetime) -> None:
        """Nothing to make before the hand-over: a certificate is signed then, for the key it is for."""

    async def issue(self, account: Account, now: datetime) -> Credential:
        params = Params.model_validate({"provider": self.spec.name, **account.params})
        private_pem = None
        if account.public_key:
            public_key = load_ssh_public_key(check_public_key(account.public_key).encode())
        else:
            private_key = ed25519.Ed25519PrivateKey.generate()
            public_key = private_key.public_key()
            private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()).decode()
        valid_from = (account.valid_from or now) - timedelta(seconds=self.options.not_before_seconds)
        builder = (SSHCertificateBuilder().public_key(public_key).serial(serial_of(account.grant_id))
                   .type(SSHCertificateType.USER).key_id(self.key_id(account).encode())
                   .valid_principals([p.encode() for p in params.principals])
                   .valid_after(int(valid_from.timestamp())).valid_before(int(account.expires_at.timestamp())))
        if params.force_command:
            builder = builder.add_critical_option(b"force-command", params.force_command.encode())
        if params.source_address:
            builder = builder.add_critical_option(b"source-address", params.source_address.encode())
        for extension in sorted(params.extensions):  # OpenSSH wants them in lexical order
            builder = builder.add_extension(extension.encode(), b"")
        certificate = builder.sign(self._ca).public_bytes().decode()
        fields: dict[str, Any] = {"certificate": certificate, "principals": params.principals,
                                  "serial": serial_of(account.grant_id), "key_id": self.key_id(account)}
        if private_pem is not None:
            fields["private_key"] = private_pem
        return Credential(self.spec.name, KIND, account.expires_at, fields)

    async def revoke(self, account: Account) -> RevocationReport:
        serial = serial_of(account.grant_id)
        expires = utc_stamp(account.expires_at)
        if account.expires_at <= self._now():
            summary = f"certificate serial {serial} expired at {expires}"
        else:
            summary = (f"certificate serial {serial} listed in the revocation list at /ssh/{self.spec.name}/krl "
                       f"(servers refuse it once they fetch it; it expires at {expires})")
        return RevocationReport(summary, {"serial": serial, "expires_at": expires, "key_id": self.key_id(account)})

    async def verify_revoked(self, account: Account, report: RevocationReport | None = None) -> RevocationCheck:
        serial = serial_of(account.grant_id)
        now = self._now()
        if account.expires_at <= now:
            return RevocationCheck(True, {"serial": serial, "expired": True},
                                   checked=f"the certificate expired at {utc_stamp(account.expires_at)}")
        listed = serial in await self._revoked_serials(now)
        facts = {"serial": serial, "expired": False, "listed": listed}
        if not listed:
            return RevocationCheck(False, facts, f"certificate serial {serial} is not in the revocation list")
        return RevocationCheck(True, facts, checked=f"the revocation list at /ssh/{self.spec.name}/krl lists serial "
                                                    f"{serial}")

    async def accounts(self) -> list[MadeAccount]:
        """None: a certificate leaves nothing in a server to find (and one never handed over was never seen)."""
        return []


def build(spec: ProviderSpec, environ: Any, services: Any = None) -> SSHProvider:
    """The provider for ``spec``, its CA key loaded (or made) from ``ca_key_file``; raises
    ``CredentialsUnavailable`` when the file is not a usable key."""
    try:
        key = load_or_create_ca_key(spec.extras()["ca_key_file"])
    except (KeyError, OSError, ValueError) as exc:
        raise CredentialsUnavailable(f"provider {spec.name}: the SSH CA key cannot be used: {exc}", spec.name) from None
    return SSHProvider(spec, key, getattr(services, "revoked_certificates", None), getattr(services, "clock", None))
