"""SSH certificates against a real OpenSSH ``sshd`` trusting grantbot's CA (``GET /ssh/{provider}/ca.pub``) and
reading its revocation list (``GET /ssh/{provider}/krl``): a certificate logs in for its principal, is refused after
it expires (``sshd`` checks its validity against its own wall clock: the grant lives 8 real seconds, room for
the first login on a loaded machine) and, after
an early revocation, once the server fetched the list; another grant's certificate keeps working. The request's
``ssh_public_key`` is checked; without one the hand-over carries a fresh private key."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import POLICIES
from tests.provider_targets import policy_with
from tests.ssh_server import start_sshd, write_key_files
from tests.support import eventually
from tests.test_credentials import verified

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="needs openssh-server (.ci/run installs it)")


@pytest.fixture
async def sshd(tmp_path):
    server = await start_sshd(tmp_path / "sshd")
    yield server
    await server.stop()


def ssh_policy(tmp_path: Path, principal: str) -> Path:
    provider = f"  - {{name: deploy-ssh, kind: ssh, ca_key_file: {tmp_path / 'ca' / 'ssh-ca'}}}\n"
    return policy_with(tmp_path, provider, f"{{provider: deploy-ssh, principals: [{principal}]}}",
                       f"{{provider: deploy-ssh, principals: [{principal}], extensions: [permit-pty, "
                       "permit-port-forwarding]}")


async def fetch(grantbot, path: str) -> tuple[int, bytes]:
    async with grantbot.api.http.get(grantbot.base_url + path) as resp:
        return resp.status, await resp.read()


async def server_trusts_grantbot(grantbot, sshd) -> None:
    """What a server's set-up does: TrustedUserCAKeys from ca.pub, RevokedKeys from the KRL."""
    status, ca = await fetch(grantbot, "/ssh/deploy-ssh/ca.pub")
    assert status == 200 and ca.startswith(b"ssh-ed25519 ") and ca.endswith(b" grantbot-deploy-ssh\n"), ca
    sshd.trusted_ca.write_bytes(ca)
    await server_fetches_krl(grantbot, sshd)


async def server_fetches_krl(grantbot, sshd) -> bytes:
    status, krl = await fetch(grantbot, "/ssh/deploy-ssh/krl")
    assert status == 200 and krl.startswith(b"SSHKRL\n\0"), krl[:16]
    sshd.revoked_keys.write_bytes(krl)
    return krl


def key_pair(folder: Path) -> tuple[str, str]:
    """A pipeline's own Ed25519 key pair (private in OpenSSH format, public line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode() + " pipeline@ci"
    return private, public


def certificate_text(path: Path) -> str:
    return subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True).stdout


async def test_a_certificate_for_the_pipelines_key_logs_in_and_is_refused_after_it_expires(
        sshd, start_grantbot, tmp_path, clock):
    grantbot = await start_grantbot(policy_file=ssh_policy(tmp_path, sshd.user))
    await server_trusts_grantbot(grantbot, sshd)
    ca_file = tmp_path / "ca" / "ssh-ca"  # made when first needed, readable by grantbot alone
    assert stat.S_IMODE(os.stat(ca_file).st_mode) == 0o600
    assert ca_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    private, public = key_pair(tmp_path)

    status, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"],
                                                         "ttl_seconds": 8, "ssh_public_key": public})
    assert status == 201, created
    grant = created["grant"]
    [credential] = grant["credentials"]
    assert credential["kind"] == "ssh" and credential["principals"] == [sshd.user]
    assert "private_key" not in credential  # it signed the pipeline's own key
    assert credential["certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    key, certificate = write_key_files(tmp_path / "pipeline", credential, private)
    described = certificate_text(certificate)
    assert f"grant={grant['id']} identity=deploy-bot provider=deploy-ssh" in described, described
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in described
    assert f"Principals: \n                {sshd.user}" in described and "permit-pty" in described
    valid_before = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00")).timestamp()

    code, out = await sshd.login(key, certificate)
    assert code == 0 and "logged-in" in out, (out, sshd.log())
    code, out = await sshd.login(key, certificate.with_name("missing-cert.pub"))  # the key alone is nothing
    assert code != 0

    await asyncio.sleep(max(0.0, valid_before - time.time()) + 1.1)  # sshd's own clock passes valid_before
    code, out = await sshd.login(key, certificate)
    assert code != 0 and "logged-in" not in out
    assert "expired" in sshd.log() or "not yet valid" in sshd.log() or "invalid" in sshd.log().lower()

    clock.advance(9)  # and grantbot's clock: the grant expires; the certificate is said to have expired by itself
    seen = await eventually(lambda: verified(grantbot, clock, created["id"]), timeout=15)
    assert "expired at" in seen["detail"], seen


async def test_an_early_revocation_is_refused_once_the_server_fetched_the_krl(sshd, start_grantbot, tmp_path, clock,
                                                                             sandbox):
    grantbot = await start_grantbot(policy_file=ssh_policy(tmp_path, sshd.user))
    await server_trusts_grantbot(grantbot, sshd)
    issued = []
    for _ in range(2):  # two grants, no public key sent: each hand-over carries a fresh private key
        status, created = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"],
                                                             "ttl_seconds": 600})
        assert status == 201, created
        [credential] = created["grant"]["credentials"]
        assert credential["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        issued.append((created, write_key_files(tmp_path / created["id"], credential)))
        clock.advance(1)
    (revoked, (key, certificate)), (kept, (other_key, other_certificate)) = issued
    for k, c in ((key, certificate), (other_key, other_certificate)):
        code, out = await sshd.login(k, c)
        assert code == 0, (out, sshd.log())

    status, _ = await grantbot.api.call("POST", f"/v1/grants/{revoked['grant']['id']}/revoke")
    assert status == 200
    seen = await eventually(lambda: verified(grantbot, clock, revoked["id"]), timeout=15)
    assert "revocation list at /ssh/deploy-ssh/krl" in seen["detail"], seen
    told = await eventually(lambda: next((m for m in sandbox.messages if "Access removed" in m["text"]), None))
    assert "Checked: the revocation list at /ssh/deploy-ssh/krl lists serial" in told["text"], told["text"]
    # Until the server fetches the list, it does not know (what "once the KRL is fetched" means).
    code, _ = await sshd.login(key, certificate)
    assert code == 0
    krl = await server_fetches_krl(grantbot, sshd)
    code, out = await sshd.login(key, certificate)
    assert code != 0 and "logged-in" not in out
    assert "revoked" in sshd.log().lower(), sshd.log()[-2000:]
    code, out = await sshd.login(other_key, other_certificate)  # the other grant's certificate is not listed
    assert code == 0, out
    # OpenSSH's own reader agrees: ssh-keygen -Q tests keys against a KRL.
    (tmp_path / "krl").write_bytes(krl)
    checked = subprocess.run(["ssh-keygen", "-Q", "-f", str(tmp_path / "krl"), str(certificate), str(other_certificate)],
                             capture_output=True, text=True)
    said = {line.split(" ", 1)[0]: line.rsplit(": ", 1)[1] for line in checked.stdout.splitlines()}
    assert said == {str(certificate): "REVOKED", str(other_certificate): "ok"}, checked


@pytest.mark.parametrize("key, expected", [
    ("ssh-ed25519 not-base64", "ssh_public_key is not an OpenSSH public key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "ssh_public_key is not an OpenSSH public key"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh_public_key is not an OpenSSH public key"),
])
async def test_a_bad_ssh_public_key_is_refused_with_what_to_send(start_grantbot, tmp_path, key, expected):
    grantbot = await start_grantbot(policy_file=ssh_policy(tmp_path, "deploy"))
    status, answer = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"],
                                                        "ssh_public_key": key})
    assert status == 422 and expected in answer["detail"], answer
    assert await grantbot.count("access_requests") == 0


async def test_the_ca_and_krl_routes_answer_404_for_a_name_that_is_no_ssh_provider(start_grantbot, tmp_path):
    grantbot = await start_grantbot(policy_file=POLICIES / "basic.yaml")
    for path in ("/ssh/deploy-ssh/ca.pub", "/ssh/deploy-ssh/krl"):
        async with grantbot.api.http.get(grantbot.base_url + path) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
