"""The ES256 signing key, loaded once from a PEM file (created with mode 0600 when missing), and retired keys
that still verify the tokens they signed (key rotation)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SigningKey:
    """A P-256 private key and its ``kid`` (the RFC 7638 JWK thumbprint of the public half)."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    @property
    def public(self) -> VerificationKey:
        return VerificationKey(self.private_key.public_key(), self.kid)

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 7517) with ``kid``, ``alg: ES256`` and ``use: sig``."""
        return self.public.public_jwk


@dataclass(frozen=True)
class VerificationKey:
    """A retired signing key's public half and ``kid``: it verifies tokens it signed, and signs nothing new."""

    public_key: ec.EllipticCurvePublicKey
    kid: str

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 7517) with ``kid``, ``alg: ES256`` and ``use: sig``."""
        jwk = ECAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"], "kid": self.kid,
                "alg": "ES256", "use": "sig"}


def load_verification_key(path: str | os.PathLike[str]) -> VerificationKey:
    """A retired key from a PEM file holding the private key (as it was used) or only its public half.

    Raises ``ValueError`` with the path when the file is missing or not an EC P-256 key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the previous signing key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a PEM private or public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: a previous signing key must be an EC P-256 key (ES256)")
    return VerificationKey(key, thumbprint(key))


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members in lexicographic order, base64url without padding."""
    jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _create_signing_key(path: Path) -> None:
    """Write a new key to ``path`` unless another process got there first; the name never shows a partial file.

    The key is written and flushed to disk under a temporary name in the same directory, then given its name with
    ``link(2)``, which fails when the name exists: of several replicas (or ``serve`` and ``dev`` started at once)
    exactly one key wins, and none reads a file that is still being written, or empty because its writer was
    killed between creating and writing it (each would sign with a key the others do not publish)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Its folder is not made: a typo in the path would otherwise give this replica a key of its own, whose tokens
    # the others refuse (every replica must be given the one file).
    if not path.parent.is_dir():
        raise ValueError(f"cannot create the signing key {path}: the folder {path.parent} does not exist; create "
                         "it, or set GRANTBOT_SIGNING_KEY_FILE to the key file every replica shares")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise ValueError(f"cannot create the signing key {path}: {exc.strerror} in {path.parent}; set "
                         "GRANTBOT_SIGNING_KEY_FILE to a writable path, or create the key there") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process's key won: it is whole, since it was written before it was named
        except OSError:  # a filesystem without hard links: create the name exclusively and write it
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        log.info("created a new signing key at %s", path)
    finally:
        os.unlink(temporary)


def load_or_create_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load the PEM (PKCS#8) private key at ``path``; create one (mode 0600) if the file does not exist.

    Raises ``ValueError`` with the path when the file is not an EC P-256 private key, or when it is missing and
    cannot be created (its folder does not exist or is not writable).
    """
    path = Path(path)
    if not path.exists():
        _create_signing_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: the signing key must be an EC P-256 key (ES256)")
    return SigningKey(key, thumbprint(key.public_key()))
