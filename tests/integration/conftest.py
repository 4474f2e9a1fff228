"""Integration test harness: real intersyncd processes on 127.0.0.1.

Each test gets temporary directories, starts daemons with generated YAML
files, and waits on conditions with deadlines (never fixed sleeps). The
binaries come from the build directory named by $INTERSYNC_BUILD (default:
build/ beside the sources), so the same tests run against the plain and the
sanitizer builds.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

SOURCE_ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("INTERSYNC_BUILD", SOURCE_ROOT / "build"))
INTERSYNCD = BUILD / "core" / "intersyncd"
INTERSYNCCTL = BUILD / "tools" / "intersyncctl"
KMLPRINT = BUILD / "tools" / "kmlprint"

TOKEN = "test-token-0123456789abcdef"
# The http transport's settings for plain HTTP, which it refuses unless the
# configuration says so; tests that want TLS give `http` themselves.
PLAIN_HTTP = "{plain: true}"


def wait_for(condition, timeout=30.0, what="condition", interval=0.02):
    """Polls `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:  # files moving under us
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def tree_snapshot(root):
    """Everything a user would compare: type, mode, mtime, content, link target."""
    root = Path(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".intermezzo" or rel_dir.startswith(".intermezzo/"):
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not (rel_dir == "." and d == ".intermezzo")]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                snap[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, h)
    return snap


def assert_same_tree(a, b):
    sa, sb = tree_snapshot(a), tree_snapshot(b)
    if sa != sb:
        only_a = sorted(set(sa) - set(sb))[:10]
        only_b = sorted(set(sb) - set(sa))[:10]
        differ = sorted(k for k in set(sa) & set(sb) if sa[k] != sb[k])[:10]
        raise AssertionError(f"trees differ: only in {a}: {only_a}; only in {b}: {only_b}; "
                             f"different: {[(k, sa[k], sb[k]) for k in differ]}")


def trees_equal(a, b):
    return tree_snapshot(a) == tree_snapshot(b)


class Daemon:
    """One intersyncd process with its own YAML file and state directory."""

    def __init__(self, workdir, name, filesets, extra=""):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self.dir / "state"
        self.config = self.dir / "intersync.yaml"
        self.log = self.dir / "intersyncd.log"
        self.proc = None
        lines = [f"state_dir: {self.state}", "log_level: debug"]
        if extra:
            lines.append(extra)
        lines.append("filesets:")
        for fs in filesets:
            lines.append(f"  - name: {fs['name']}")
            for key, value in fs.items():
                if key == "name":
                    continue
                if key == "clients":
                    lines.append("    clients:")
                    for c in value:
                        lines.append(f"      - name: {c['name']}")
                        lines.append(f"        token_sha256: {c['token_sha256']}")
                else:
                    lines.append(f"    {key}: {value}")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, wait=True):
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([str(INTERSYNCD), "-c", str(self.config)],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: self.proc.poll() is not None or self.status_or_none(),
                     timeout=20, what=f"{self.dir.name} to answer status")
            if self.proc.poll() is not None:
                raise AssertionError(f"intersyncd {self.dir.name} exited "
                                     f"{self.proc.returncode}:\n{self.log.read_text()}")
        return self

    def ctl(self, *args, check=True):
        r = subprocess.run([str(INTERSYNCCTL), "-c", str(self.config), *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"intersyncctl {args} failed: {r.stderr}")
        return r

    def status_or_none(self):
        r = self.ctl("status", "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def fileset(self, name):
        for f in self.status()["filesets"]:
            if f["name"] == name:
                return f
        raise KeyError(name)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the daemon and insists that it stopped cleanly: exit status
        0 and no sanitizer report in its log (the ASan build runs these
        same tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.dir.name} did not stop on {sig}")
            if getattr(self, "logf", None):
                self.logf.close()
                self.logf = None
            log = self.log_text()
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in log:
                    raise AssertionError(f"{self.dir.name}: sanitizer report:\n"
                                         + log[log.index(marker) - 200:][:6000])
            if self.proc.returncode != 0:
                raise AssertionError(f"{self.dir.name} exited {self.proc.returncode} on "
                                     f"{sig}:\n{log[-3000:]}")
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()
        self.logf = None

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def token_sha256(token=TOKEN):
    return hashlib.sha256(token.encode()).hexdigest()


class Cluster:
    """A server and any number of clients of one fileset on 127.0.0.1."""

    def __init__(self, tmp_path, fset="docs"):
        self.tmp = Path(tmp_path)
        self.fset = fset
        self.server_root = self.tmp / "server-root"
        self.server_root.mkdir(exist_ok=True)
        self.token_file = self.tmp / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.server = None
        self.clients = []

    def start_server(self, **extra):
        fs = {"name": self.fset, "path": self.server_root, "role": "server",
              "listen": "127.0.0.1:0", "http": PLAIN_HTTP,
              "clients": [{"name": "client", "token_sha256": token_sha256()}]}
        fs.update(extra)
        if self.server is not None:
            # A restart keeps its port: the clients are configured with it.
            fs["listen"] = f"127.0.0.1:{self.port}"
        self.server = Daemon(self.tmp, "server", [fs])
        self.server.start()
        self.port = int(self.server.fileset(self.fset)["listen"].rsplit(":", 1)[1])
        return self.server

    def add_client(self, name=None, start=True, **extra):
        name = name or f"client{len(self.clients) + 1}"
        root = self.tmp / f"{name}-root"
        root.mkdir(exist_ok=True)
        fs = {"name": self.fset, "path": root, "role": "client",
              "server": f"127.0.0.1:{self.port}", "token_file": self.token_file}
        fs.update(extra)
        if fs.get("transport", "http") == "http":
            fs.setdefault("http", PLAIN_HTTP)
        d = Daemon(self.tmp, name, [fs])
        d.root = root
        self.clients.append(d)
        if start:
            d.start()
        return d

    def wait_converged(self, timeout=60):
        for c in self.clients:
            if c.proc and c.proc.poll() is None:
                wait_for(lambda: trees_equal(self.server_root, c.root), timeout=timeout,
                         what=f"{c.dir.name} to match the server")
                assert_same_tree(self.server_root, c.root)

    def stop(self):
        problems = []
        for d in self.clients + ([self.server] if self.server else []):
            try:
                d.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError("\n".join(problems))


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA and a server certificate for 127.0.0.1 made with the
    openssl command; `server_tls` and `client_tls` are the http settings."""
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("the openssl command is not installed (Debian package openssl)")
    d = tmp_path / "pki"
    d.mkdir()

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "1",
        "-subj", "/CN=intersync test CA")
    run("req", *ec, "-keyout", d / "server.key", "-out", d / "server.csr", "-subj", "/CN=server")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-out", d / "server.pem", "-days", "1", "-extfile", d / "ext.cnf")
    (d / "server.key").chmod(0o600)
    out = subprocess.run([openssl, "x509", "-in", d / "server.pem", "-noout", "-fingerprint",
                          "-sha256"], check=True, capture_output=True, text=True).stdout
    server_tls = f"{{tls: {{cert: {d / 'server.pem'}, key: {d / 'server.key'}}}}}"
    return SimpleNamespace(dir=d, fingerprint=out.strip().split("=", 1)[1],
                           server_tls=server_tls, client_tls=f"{{tls: {{ca: {d / 'ca.pem'}}}}}")


def raw_request(port, data, timeout=10):
    """Sends raw bytes to the server and returns everything it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
