"""CGI mode: intersync.cgi behind a real lighttpd on 127.0.0.1.

The client daemon's `server:` is lighttpd; lighttpd runs intersync.cgi for
/cgi-bin/intersync/...; the CGI relays each request to the server daemon's
relay socket, also when the daemon's only listener speaks TLS. These tests check replication end to end through that chain
(initial sync, a live change over the long-poll, a daemon stop and restart)
and the CGI's own edges, run directly with a made-up CGI environment: odd
environments, early refusals of uploads, and that bodies stream through a
fixed buffer rather than being held in memory.

Needs the Debian package lighttpd; the tests are skipped without it.
"""

import hashlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BUILD, TOKEN, wait_for

INTERSYNC_CGI = BUILD / "tools" / "intersync.cgi"
LIGHTTPD = shutil.which("lighttpd") or "/usr/sbin/lighttpd"

pytestmark = pytest.mark.skipif(not os.access(LIGHTTPD, os.X_OK),
                                reason="lighttpd is not installed (Debian package lighttpd)")

LARGE = 32 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lighttpd:
    """A lighttpd in the foreground (-D) that runs intersync.cgi for
    /cgi-bin/intersync/<fset>/<endpoint> with that as PATH_INFO."""

    def __init__(self, workdir, intersync_config):
        self.dir = Path(workdir) / "lighttpd"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "htdocs").mkdir(exist_ok=True)
        self.conf = self.dir / "lighttpd.conf"
        self.log = self.dir / "lighttpd.out"
        self.intersync_config = intersync_config
        self.proc = None
        self.port = None

    def write_config(self):
        d = self.dir
        self.conf.write_text(f"""
server.modules = ("mod_alias", "mod_setenv", "mod_cgi", "mod_accesslog")
server.document-root = "{d}/htdocs"
server.bind = "127.0.0.1"
server.port = {self.port}
server.pid-file = "{d}/lighttpd.pid"
server.errorlog = "{d}/error.log"
accesslog.filename = "{d}/access.log"
server.upload-dirs = ("{d}")
# Pass bodies through as they come instead of spooling them whole: a 32 MiB
# download starts reaching the client at once and a long-poll is not held.
server.stream-request-body = 2
server.stream-response-body = 2
alias.url = ("/cgi-bin/intersync" => "{INTERSYNC_CGI}")
$HTTP["url"] =~ "^/cgi-bin/intersync(/|$)" {{
  cgi.assign = ("" => "")
}}
setenv.add-environment = ("INTERSYNC_CONFIG" => "{self.intersync_config}")
""")

    def start(self):
        # The free port may be taken between the probe and lighttpd's bind;
        # lighttpd then exits and another port is tried.
        for _ in range(5):
            self.port = free_port()
            self.write_config()
            self.logf = open(self.log, "ab")
            self.proc = subprocess.Popen([LIGHTTPD, "-D", "-f", str(self.conf)],
                                         stdout=self.logf, stderr=subprocess.STDOUT)
            if wait_for(lambda: self.proc.poll() is not None or self.accepting(), timeout=20,
                        what="lighttpd to listen") and self.proc.poll() is None:
                return self
            self.logf.close()
        raise AssertionError(f"lighttpd did not start:\n{self.log.read_text()}\n"
                             f"{self.error_log()}")

    def accepting(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def error_log(self):
        p = self.dir / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()
            self.logf = None

    def request(self, method, path, headers=None, body=None, timeout=30):
        """One request to lighttpd; returns (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def web(cluster):
    """The server daemon, listening on a port chosen at its start (the CGI
    does not need it: it relays to the daemon's relay socket), and a
    lighttpd in front of it."""
    cluster.start_server()
    w = Lighttpd(cluster.tmp, cluster.server.config)
    w.start()
    yield w
    w.stop()


def make_tree(root, files=3000, dirs=40, seed=7):
    """Many small files in nested directories and one large file."""
    rnd = random.Random(seed)
    dir_paths = [root]
    for i in range(dirs):
        d = rnd.choice(dir_paths) / f"d{i:02d}"
        d.mkdir()
        dir_paths.append(d)
    for i in range(files):
        (rnd.choice(dir_paths) / f"f{i:05d}.txt").write_bytes(rnd.randbytes(rnd.randint(0, 4096)))
    # Names the URL has to carry: a space, a percent sign, non-ASCII.
    (root / "with space %41 é.txt").write_text("odd name\n")
    large = rnd.randbytes(LARGE)
    (root / "large.bin").write_bytes(large)
    return large


# Runs the CGI from a small forked Python and reports its exit status and
# peak memory. The CGI is not started from pytest directly because a
# process's ru_maxrss counts the memory of the process it was forked from
# (exec keeps the high-water mark), and pytest holds large test data.
_SPAWN = r"""
import os, sys
report = int(sys.argv[2])
os.set_inheritable(report, False)
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1]])
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}".encode())
"""


def run_cgi(env, stdin=subprocess.DEVNULL, timeout=30):
    """Runs intersync.cgi as a web server would; returns (status, headers,
    body, peak memory of the CGI in KiB)."""
    base = {"GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    base.update(env)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _SPAWN, str(INTERSYNC_CGI), str(w)],
                                env=base, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(w,), start_new_session=True)
        os.close(w)
        w = -1
        try:
            data, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"intersync.cgi did not finish within {timeout} s")
        report = os.read(r, 100).decode().split()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert report, f"the spawn helper failed: {err!r}"
    exit_code, maxrss = int(report[0]), int(report[1])
    assert b"\r\n\r\n" in data, f"no CGI head in {data[:300]!r}; stderr {err!r}"
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("Status: "), lines
    status_code = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    assert exit_code == 0, f"intersync.cgi exited {exit_code}: {err!r}"
    return status_code, headers, body, maxrss


def cgi_env(cluster, path_info, method="GET", **extra):
    env = {"REQUEST_METHOD": method, "PATH_INFO": path_info,
           "INTERSYNC_CONFIG": str(cluster.server.config),
           "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    env.update(extra)
    return env


def sha(data):
    return hashlib.sha256(data).hexdigest()


def wait_served(cluster, rel, data, timeout=60):
    """Waits until the daemon serves `rel` with this content: journaled,
    hashed and indexed, not merely created."""
    def served():
        status, _, body, _ = run_cgi(cgi_env(cluster, f"/docs/file/{rel}"), timeout=timeout)
        return status == 200 and sha(body) == sha(data)
    wait_for(served, timeout=timeout, interval=0.2, what=f"the daemon to serve {rel}")


def test_replication_through_lighttpd(cluster, web):
    large = make_tree(cluster.server_root)
    # The tree was written after the server started: its rescan journals it.
    wait_for(lambda: cluster.server.fileset("docs")["head"] > 3000
             and cluster.server.fileset("docs")["pending_changes"] == 0,
             timeout=120, what="the server to journal the tree")
    client = cluster.add_client(server=f"127.0.0.1:{web.port}")
    cluster.wait_converged(timeout=180)
    st = client.fileset("docs")
    assert st["state"] == "connected"
    assert st["last_rcvd"] == cluster.server.fileset("docs")["head"]
    assert st["server"] == f"127.0.0.1:{web.port}"
    # Everything went through lighttpd: the bulk POSTs and the large file.
    # (lighttpd writes its access log in batches.)
    wait_for(lambda: all(s in (web.dir / "access.log").read_text() for s in (
        "POST /cgi-bin/intersync/docs/contents", "GET /cgi-bin/intersync/docs/content/")),
        timeout=60, what="the fetches in lighttpd's access log")

    # A live change arrives over the long-poll held open through the CGI.
    (cluster.server_root / "d00" / "live.txt").write_text("pushed through CGI\n")
    wait_for(lambda: (client.root / "d00" / "live.txt").exists(), timeout=60,
             what="the live change to reach the client")
    cluster.wait_converged()

    # The daemon still authenticates: no token, a wrong token -> 401.
    status, headers, _ = web.request("GET", "/cgi-bin/intersync/docs/info")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = web.request("GET", "/cgi-bin/intersync/docs/info",
                               {"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, body = web.request("GET", "/cgi-bin/intersync/nosuch/info", AUTH)
    assert status == 404

    # Range on a path and on a content id; HEAD; a path needing escapes.
    status, headers, body = web.request("GET", "/cgi-bin/intersync/docs/file/large.bin",
                                        {**AUTH, "Range": "bytes=1000-1999"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 1000-1999/{LARGE}"
    assert body == large[1000:2000]
    content_id = headers["X-Intersync-Content"]
    status, headers, body = web.request("GET", f"/cgi-bin/intersync/docs/content/{content_id}",
                                        {**AUTH, "Range": f"bytes={LARGE - 10}-"})
    assert status == 206 and body == large[-10:]
    status, headers, body = web.request("GET", "/cgi-bin/intersync/docs/file/large.bin", AUTH)
    assert status == 200 and len(body) == LARGE and sha(body) == sha(large)
    status, headers, body = web.request("HEAD", "/cgi-bin/intersync/docs/info", AUTH)
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, _, body = web.request(
        "GET", "/cgi-bin/intersync/docs/file/with%20space%20%2541%20%C3%A9.txt", AUTH)
    assert status == 200 and body == b"odd name\n"
    status, _, _ = web.request("GET", "/cgi-bin/intersync/docs/file/large.bin",
                               {**AUTH, "If-Match": '"0000"'})
    assert status == 412

    # The daemon stops: the CGI answers 503 naming the relay socket it
    # tried, and the client reports itself disconnected.
    cluster.server.stop()
    status, _, body = web.request("GET", "/cgi-bin/intersync/docs/info", AUTH)
    assert status == 503
    assert str(cluster.server.state / "relay.sock").encode() in body
    wait_for(lambda: client.fileset("docs")["state"] == "disconnected", timeout=60,
             what="the client to notice the daemon is gone")
    assert "503" in client.fileset("docs")["last_error"]

    # Changes made meanwhile arrive once the daemon is back.
    (cluster.server_root / "while-down.txt").write_text("written while the daemon was down\n")
    (cluster.server_root / "d01").rename(cluster.server_root / "d01-renamed")
    cluster.start_server()
    wait_for(lambda: client.fileset("docs")["state"] == "connected", timeout=90,
             what="the client to reconnect through lighttpd")
    cluster.wait_converged(timeout=90)


def test_replication_through_lighttpd_to_a_tls_only_server(cluster, pki):
    # The daemon's only listener speaks TLS; the CGI relays through the
    # daemon's relay socket, and the client talks to lighttpd.
    (cluster.server_root / "a.txt").write_text("behind a TLS-only listener\n")
    cluster.start_server(http=pki.server_tls)
    assert "(TLS)" in cluster.server.log_text()
    web = Lighttpd(cluster.tmp, cluster.server.config).start()
    try:
        client = cluster.add_client(server=f"127.0.0.1:{web.port}")
        cluster.wait_converged()
        assert client.fileset("docs")["state"] == "connected"
        (cluster.server_root / "live.txt").write_text("pushed through CGI\n")
        cluster.wait_converged()
        wait_for(lambda: "GET /cgi-bin/intersync/docs/kml" in (web.dir / "access.log").read_text(),
                 timeout=60, what="the long-polls in lighttpd's access log")
        assert any(p["address"] == "relay socket"
                   for p in cluster.server.fileset("docs")["peers"])
    finally:
        web.stop()


def test_cgi_answers_odd_environments(cluster, web):
    (cluster.server_root / "a.txt").write_text("a\n")
    wait_served(cluster, "a.txt", b"a\n")
    config = str(cluster.server.config)
    cases = [
        ({"PATH_INFO": "/docs/info"}, 400),  # no REQUEST_METHOD
        ({"REQUEST_METHOD": "GET"}, 400),  # no PATH_INFO
        ({"REQUEST_METHOD": "G E T", "PATH_INFO": "/docs/info"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": ""}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "docs/info"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "//info"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/../info"}, 404),  # '..' is a name, not here
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/bad name/info"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/" + "x" * 65 + "/info"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs"}, 404),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/"}, 404),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/nosuch/info"}, 404),
        ({"REQUEST_METHOD": "POST", "PATH_INFO": "/docs/contents", "CONTENT_LENGTH": "12x"}, 400),
        ({"REQUEST_METHOD": "POST", "PATH_INFO": "/docs/contents", "CONTENT_LENGTH": "-1"}, 400),
        ({"REQUEST_METHOD": "POST", "PATH_INFO": "/docs/contents",
          "CONTENT_LENGTH": "99999999999999999999999"}, 400),
        # A body shorter than announced.
        ({"REQUEST_METHOD": "POST", "PATH_INFO": "/docs/contents", "CONTENT_LENGTH": "10"}, 400),
        # These reach the daemon, which answers them.
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/file/../../etc/passwd"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/nosuch"}, 404),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/file/" + "a" * 20000}, 414),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/kml",
          "QUERY_STRING": "since=x y\x01\x7f#&wait=0"}, 400),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/file/a.txt",
          "HTTP_RANGE": "bytes=0-0\r\nX-Injected: 1"}, 200),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/info", "HTTP_AUTHORIZATION": ""}, 401),
        ({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/info",
          "HTTP_AUTHORIZATION": "Bearer " + "t" * 100000}, 431),
    ]
    for env, expected in cases:
        full = {"INTERSYNC_CONFIG": config, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **env}
        status, _, body, _ = run_cgi(full)
        assert status == expected, (env, status, body[:300])

    # Bytes that are not UTF-8 in the environment.
    status, _, _, _ = run_cgi({b"REQUEST_METHOD": b"GET", b"PATH_INFO": b"/docs/file/\xff\xfe",
                               b"QUERY_STRING": b"\xff", b"INTERSYNC_CONFIG": config.encode(),
                               b"HTTP_AUTHORIZATION": f"Bearer {TOKEN}".encode()})
    assert status in (400, 404)

    # No configuration, a broken one: 500, the details only in the log.
    status, _, body, _ = run_cgi({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/info",
                                  "INTERSYNC_CONFIG": str(cluster.tmp / "missing.yaml")})
    assert status == 500 and b"missing.yaml" not in body
    broken = cluster.tmp / "broken.yaml"
    broken.write_text("filesets: [\n")
    status, _, _, _ = run_cgi({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs/info",
                               "INTERSYNC_CONFIG": str(broken)})
    assert status == 500

    # A relay socket elsewhere than the daemon's is not reached.
    elsewhere = cluster.tmp / "elsewhere.yaml"
    elsewhere.write_text(f"relay_socket: {cluster.tmp / 'nobody.sock'}\n"
                         + cluster.server.config.read_text())
    status, _, body, _ = run_cgi(cgi_env(cluster, "/docs/info", INTERSYNC_CONFIG=str(elsewhere)))
    assert status == 503 and str(cluster.tmp / "nobody.sock").encode() in body


def test_cgi_streams_bodies_in_bounded_memory(cluster, web):
    data = random.Random(3).randbytes(LARGE)
    (cluster.server_root / "big.bin").write_bytes(data)
    wait_served(cluster, "big.bin", data)
    # A baseline: what the CGI needs for a tiny answer.
    _, _, _, small = run_cgi(cgi_env(cluster, "/docs/info"))
    status, headers, body, big = run_cgi(cgi_env(cluster, "/docs/file/big.bin"), timeout=60)
    assert status == 200 and int(headers["content-length"]) == LARGE
    assert sha(body) == sha(data)
    # The 32 MiB went through a fixed buffer: the peak grew by far less.
    assert big - small < 8 * 1024, (small, big)

    # An 8 MiB upload streams to the daemon (which refuses its content only
    # after reading it all) without the CGI holding it.
    upload = cluster.tmp / "upload"
    upload.write_bytes(b"z" * (8 << 20))
    with open(upload, "rb") as f:
        status, _, body, up = run_cgi(cgi_env(cluster, "/docs/contents", "POST",
                                              CONTENT_LENGTH=str(8 << 20),
                                              CONTENT_TYPE="text/plain"), stdin=f)
    assert status == 400 and b"bad content id" in body
    assert up - small < 6 * 1024, (small, up)


def test_cgi_relays_a_body_without_content_length(cluster, web, tmp_path):
    # Apache hands a chunked upload to CGI with no CONTENT_LENGTH; the CGI
    # then reads stdin to its end and sends the body on chunked. (lighttpd
    # streaming request bodies refuses such uploads to CGI with 411 itself;
    # intersync clients always send Content-Length.)
    (cluster.server_root / "a.txt").write_text("hello\n")
    wait_served(cluster, "a.txt", b"hello\n")
    body = tmp_path / "body"
    body.write_bytes(sha(b"hello\n").encode() + b"\n")
    with open(body, "rb") as f:
        status, _, data, _ = run_cgi(cgi_env(cluster, "/docs/contents", "POST"), stdin=f)
    assert (status, data) == (200, (6).to_bytes(8, "little") + b"hello\n")


def test_cgi_relays_an_early_refusal_without_waiting_for_the_body(cluster, web):
    # The upload never comes (stdin stays open and silent), but the daemon
    # judges the head alone: a missing token or an oversized body is
    # answered at once, and so is the CGI.
    for extra, expected in (({"HTTP_AUTHORIZATION": ""}, 401),
                            ({"CONTENT_LENGTH": str(100 << 20)}, 413)):
        r, w = os.pipe()
        try:
            env = cgi_env(cluster, "/docs/contents", "POST", CONTENT_LENGTH="1000")
            env.update(extra)
            start = time.monotonic()
            status, _, _, _ = run_cgi(env, stdin=r, timeout=20)
            assert status == expected
            assert time.monotonic() - start < 10
        finally:
            os.close(r)
            os.close(w)


def test_cgi_answers_503_when_the_daemon_is_down(cluster, web):
    cluster.server.stop()
    status, headers, body = web.request("GET", "/cgi-bin/intersync/docs/kml?since=0&wait=5", AUTH)
    assert status == 503
    assert str(cluster.server.state / "relay.sock").encode() in body
    status, _, body, _ = run_cgi(cgi_env(cluster, "/docs/info"))
    assert status == 503 and b"No such file or directory" in body
