"""An OpenSSH server for tests: the Debian openssh-server sshd binary bound to 127.0.0.1 on a free high
port, with its own config, host key and authorized_keys under tmp_path, stopped by its process id."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")

needs_sshd = pytest.mark.skipif(
    not SSHD.exists() or not Path("/run/sshd").is_dir() or shutil.which("ssh-keygen") is None,
    reason="sshd missing: run 'make ssh-server' (apt-get install openssh-server; mkdir -p /run/sshd)",
)


@dataclass
class SshServer:
    port: int
    user: str
    key: Path
    known_hosts: Path
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


@pytest.fixture(name="ssh_server")
def ssh_server_fixture(tmp_path: Path) -> Iterator[SshServer]:
    folder = tmp_path / "sshd"
    folder.mkdir()
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", "",
    ]))
    host_pub = (folder / "host_key.pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "sshd.log", "w"))  # noqa: SIM115 - closed with the process
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(folder / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.1)
        yield SshServer(port, getpass.getuser(), folder / "client_key", known, proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
