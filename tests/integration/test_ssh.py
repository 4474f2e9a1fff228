"""The ssh transport against a real sshd on 127.0.0.1.

The test starts its own sshd (`/usr/sbin/sshd -D -e -f CONFIG`) on a free
port, with a throw-away host key and user key in the test's temporary
directory; a server daemon of the usual Cluster; and a client with
`transport: ssh` whose connections are ssh children running the built
`intersyncd --serve-stdio`, which relays to the server daemon's relay
socket (whatever its listener speaks, TLS included). The client still
presents its token: the daemon behind the relay checks it.

sshd runs as root (it must, to change to the logged-in user) and needs its
privilege separation directory /run/sshd, which the test creates when
missing. It is skipped, saying why, only when sshd or ssh is not installed
(Debian: openssh-server, openssh-client) or the test does not run as root.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import INTERSYNCD, wait_for

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen")


def require_sshd():
    missing = [name for name, path in (("sshd", SSHD.exists() and str(SSHD)),
                                       ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", SSH_KEYGEN)) if not path]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages openssh-server and "
                    "openssh-client)")
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log a user in")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid):
    """Every process below `pid`, from /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Sshd:
    """A throw-away sshd that lets root in with one key."""

    def __init__(self, tmp):
        self.dir = Path(tmp) / "sshd"
        self.dir.mkdir()
        self.port = free_port()
        for key in ("host_key", "user_key"):
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", key,
                            "-f", str(self.dir / key)], check=True)
        self.identity = self.dir / "user_key"
        (self.dir / "authorized_keys").write_text((self.dir / "user_key.pub").read_text())
        host_key = (self.dir / "host_key.pub").read_text().split()
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]) + "\n")
        self.log = self.dir / "sshd.log"
        self.proc = None
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def start(self):
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                     stdout=self.logf, stderr=subprocess.STDOUT)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    return s.recv(64).startswith(b"SSH-2.0-")
            except OSError:
                return False

        wait_for(answers, timeout=20, what="sshd to answer")
        return self

    def kill(self):
        """sshd and every session it started: the connections die with it."""
        victims = descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logf.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def sshd(tmp_path):
    require_sshd()
    d = Sshd(tmp_path)
    d.start()
    yield d
    d.stop()


def ssh_client(cluster, sshd):
    settings = ", ".join([
        f"identity_file: {sshd.identity}",
        f"known_hosts: {sshd.known_hosts}",
        f"remote_config: {cluster.server.config}",
        f"remote_command: {INTERSYNCD.resolve()}",
    ])
    return cluster.add_client(transport="ssh", server=f"root@127.0.0.1:{sshd.port}",
                              ssh="{" + settings + "}")


def test_replication_over_ssh_survives_sshd_restarts(cluster, sshd):
    root = cluster.server_root
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("over ssh\n")
    (root / "big.bin").write_bytes(os.urandom(5 << 20))
    (root / "link").symlink_to("docs/readme.txt")
    cluster.start_server()
    client = ssh_client(cluster, sshd)
    cluster.wait_converged()
    st = client.fileset("docs")
    assert st["state"] == "connected", st
    assert st["last_error"] == ""
    # The connections are ssh children relayed to the daemon's relay socket.
    assert "ssh" in client.log_text()
    wait_for(lambda: any(p["address"] == "relay socket"
                         for p in cluster.server.fileset("docs")["peers"]),
             what="the peer listed")

    # Live changes arrive through the long-poll over ssh.
    (root / "docs" / "live.txt").write_text("pushed\n")
    (root / "docs" / "readme.txt").write_text("changed\n")
    cluster.wait_converged()

    # sshd and its sessions die: the client sees the server gone.
    sshd.kill()
    wait_for(lambda: client.fileset("docs")["state"] == "disconnected", timeout=60,
             what="the client to notice that ssh is gone")
    assert "ssh" in client.fileset("docs")["last_error"]
    (root / "while-away.txt").write_text("written while ssh was down\n")

    # sshd is back: the client reconnects with its backoff and catches up.
    sshd.start()
    wait_for(lambda: client.fileset("docs")["state"] == "connected", timeout=60,
             what="the client to reconnect over ssh")
    cluster.wait_converged()
    assert (client.root / "while-away.txt").read_text() == "written while ssh was down\n"


def test_replication_over_ssh_to_a_tls_only_server(cluster, sshd, pki):
    # The server's only listener speaks TLS; --serve-stdio reaches the
    # daemon through its relay socket, without TLS of its own.
    root = cluster.server_root
    (root / "secret.txt").write_text("behind a TLS-only listener\n")
    cluster.start_server(http=pki.server_tls)
    assert "(TLS)" in cluster.server.log_text()
    assert "(plain HTTP)" not in cluster.server.log_text()
    client = ssh_client(cluster, sshd)
    cluster.wait_converged()
    assert client.fileset("docs")["state"] == "connected"
    (root / "live.txt").write_text("pushed over ssh\n")
    cluster.wait_converged()
    # And the listener itself still refuses plain HTTP.
    port = cluster.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /cgi-bin/intersync/docs/info HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(4096)
    assert b"secret" not in answer and not answer.startswith(b"HTTP/1.1 200")


def test_an_unknown_host_key_is_refused(cluster, sshd):
    cluster.start_server()
    sshd.known_hosts.write_text("")
    client = ssh_client(cluster, sshd)
    wait_for(lambda: "Host key verification failed" in client.fileset("docs")["last_error"],
             timeout=30, what="the client to refuse the unknown host key")
    assert client.fileset("docs")["state"] != "connected"


def test_serve_stdio_without_a_daemon_says_so(tmp_path):
    config = tmp_path / "intersync.yaml"
    (tmp_path / "root").mkdir()
    config.write_text(f"state_dir: {tmp_path / 'state'}\nfilesets:\n"
                      f"  - name: docs\n    path: {tmp_path / 'root'}\n    role: server\n"
                      f"    listen: 127.0.0.1:{free_port()}\n    auth: none\n"
                      f"    http: {{plain: true}}\n")
    r = subprocess.run([str(INTERSYNCD), "-c", str(config), "--serve-stdio", "--fset", "docs"],
                       input=b"", capture_output=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == b""
    assert str(tmp_path / "state" / "relay.sock") in r.stderr.decode()
    assert "is intersyncd running?" in r.stderr.decode()

    r = subprocess.run([str(INTERSYNCD), "-c", str(config), "--serve-stdio", "--fset", "nope"],
                       input=b"", capture_output=True, timeout=30)
    assert r.returncode == 1
    assert "no fileset 'nope'" in r.stderr.decode()
