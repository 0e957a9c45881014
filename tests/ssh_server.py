"""A real OpenSSH ``sshd`` (Debian's openssh-server) for the SSH certificate tests: started on a spare port of
127.0.0.1 with its own config, host key, ``TrustedUserCAKeys`` and ``RevokedKeys`` files in the test's temporary
folder, accepting certificates only (no password, no authorized_keys); and ``ssh`` to log in with a certificate."""

from __future__ import annotations

import asyncio
import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.ports import spare_port

SSHD = "/usr/sbin/sshd"  # absolute: sshd re-executes itself by its path


@dataclass
class SshServer:
    folder: Path
    port: int
    user: str
    process: asyncio.subprocess.Process | None = None

    @property
    def trusted_ca(self) -> Path:
        return self.folder / "trusted-user-ca.pub"

    @property
    def revoked_keys(self) -> Path:
        return self.folder / "revoked-keys.krl"

    async def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
        host_key = self.folder / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {self.folder}/sshd.pid",
            f"TrustedUserCAKeys {self.trusted_ca}", f"RevokedKeys {self.revoked_keys}",
            "AuthorizedKeysFile none", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "PermitRootLogin prohibit-password", "StrictModes no", "LogLevel VERBOSE",
            "PrintMotd no", "",
        ]))
        self.process = await asyncio.create_subprocess_exec(
            SSHD, "-D", "-e", "-f", str(config), stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.folder / "sshd.log", "wb"))  # noqa: SIM115 - the process owns it
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.folder / 'sshd.log').read_text()}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    def log(self) -> str:
        return (self.folder / "sshd.log").read_text(errors="replace")

    async def login(self, private_key: Path, certificate: Path, command: str = "echo logged-in") -> tuple[int, str]:
        """``ssh`` as :attr:`user` with the key and its certificate; (exit status, output)."""
        process = await asyncio.create_subprocess_exec(
            "ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(private_key), "-o", f"CertificateFile={certificate}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            f"{self.user}@127.0.0.1", command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 20)
        return process.returncode, out.decode(errors="replace")


async def start_sshd(folder: Path) -> SshServer:
    folder.mkdir(parents=True, exist_ok=True)
    server = SshServer(folder, spare_port(), getpass.getuser())
    server.trusted_ca.write_text("")
    server.revoked_keys.write_bytes(b"")
    await server.start()
    return server


def write_key_files(folder: Path, credential: dict, private_key: str | None = None) -> tuple[Path, Path]:
    """The private key (mode 0600, as ssh demands) and the certificate of a credential, as files for ``ssh -i``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "id_ed25519"
    key.write_text(private_key or credential["private_key"])
    os.chmod(key, 0o600)
    certificate = folder / "id_ed25519-cert.pub"
    certificate.write_text(credential["certificate"] + "\n")
    return key, certificate
