"""OpenSSH key revocation lists (KRLs): the binary file ``sshd_config``'s ``RevokedKeys`` reads, listing revoked
certificates by serial under one CA.

Written to OpenSSH's PROTOCOL.krl (format version 1): a header (``SSHKRL\\n\\0``, the format version, the KRL's
version and date, no flags), then a ``KRL_SECTION_CERTIFICATES`` section naming the CA's public key and holding one
``KRL_SECTION_CERT_SERIAL_LIST``. This is what ``ssh-keygen -k -s ca.pub`` makes from ``serial: N`` lines; writing it
here spares grantbot's image an OpenSSH install and a subprocess per request. It is checked against OpenSSH itself
(``ssh-keygen -Q`` and a real ``sshd``) in tests/test_ssh_provider.py. Unsigned: KRL signatures are optional, and
``sshd`` does not check them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

KRL_MAGIC = 0x5353484B524C0A00  # "SSHKRL\n\0"
KRL_FORMAT_VERSION = 1
KRL_SECTION_CERTIFICATES = 1
KRL_SECTION_CERT_SERIAL_LIST = 0x20


def _string(data: bytes) -> bytes:
    """RFC 4251 §5 ``string``: a uint32 length and the bytes."""
    return struct.pack(">I", len(data)) + data


def revocation_list(ca_public_key_blob: bytes, serials: Iterable[int], *, version: int, generated_at: int,
                    comment: str = "") -> bytes:
    """A KRL revoking the certificates with ``serials`` (uint64, not 0) signed by the CA whose public key blob (the
    SSH wire encoding, what ``ca.pub`` base64-encodes) is ``ca_public_key_blob``. ``version`` orders KRLs (a newer
    one has a higher number), ``generated_at`` is Unix seconds. Raises ``ValueError`` for a serial out of range."""
    serials = sorted(set(serials))
    for serial in serials:
        if not 0 < serial < 2**64:
            raise ValueError(f"certificate serial {serial} is not a non-zero uint64")
    header = struct.pack(">QIQQQ", KRL_MAGIC, KRL_FORMAT_VERSION, version, generated_at, 0)
    header += _string(b"") + _string(comment.encode())
    if not serials:
        return header
    serial_list = b"".join(struct.pack(">Q", serial) for serial in serials)
    certificates = _string(ca_public_key_blob) + _string(b"")
    certificates += bytes([KRL_SECTION_CERT_SERIAL_LIST]) + _string(serial_list)
    return header + bytes([KRL_SECTION_CERTIFICATES]) + _string(certificates)
