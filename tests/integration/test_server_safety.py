"""Bad input over the network gets a clear error and the server keeps
serving: missing or wrong tokens, `..` in paths, garbage bytes, oversize
headers, a peer that vanishes mid-transfer."""

import http.client
import socket

from conftest import TOKEN, raw_request, wait_for

PREFIX = "/cgi-bin/intersync/docs"


def get(port, path, token=TOKEN, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request("GET", path, headers=h)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def still_serving(port):
    status, _, body = get(port, PREFIX + "/info")
    assert status == 200, body
    return True


def test_requests_without_a_valid_token_are_refused(cluster):
    (cluster.server_root / "secret.txt").write_text("not for strangers\n")
    cluster.start_server()
    port = cluster.port
    status, headers, _ = get(port, PREFIX + "/info", token=None)
    assert status == 401
    assert "Bearer" in headers.get("WWW-Authenticate", "")
    status, _, _ = get(port, PREFIX + "/file/secret.txt", token="wrong-token")
    assert status == 401
    # The body of a refused request is never read: a huge declared body
    # gets its 401 at once.
    reply = raw_request(port, (f"POST {PREFIX}/contents HTTP/1.1\r\nHost: x\r\n"
                               "Content-Length: 1000000000\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 401")
    assert "refused a request" in cluster.server.log_text()
    assert TOKEN not in cluster.server.log_text()
    assert "wrong-token" not in cluster.server.log_text()
    assert still_serving(port)


def test_paths_cannot_leave_the_fileset(cluster, tmp_path):
    (tmp_path / "outside.txt").write_text("outside the fileset\n")
    (cluster.server_root / "inside.txt").write_text("inside\n")
    cluster.start_server()
    port = cluster.port
    wait_for(lambda: get(port, PREFIX + "/file/inside.txt")[0] == 200, what="inside.txt served")
    for bad in ["/file/../outside.txt", "/file/%2e%2e/outside.txt", "/file/a/../../outside.txt",
                "/file//etc/passwd", "/file/inside.txt%00.jpg", "/file/.intermezzo/docs/kml",
                "/file/" + "x" * 300]:
        status, _, body = get(port, PREFIX + bad)
        assert status in (400, 404), (bad, status, body)
        assert b"outside the fileset" not in body
    status, _, body = get(port, PREFIX + "/file/inside.txt")
    assert status == 200 and body == b"inside\n"


def test_garbage_and_oversize_requests_get_errors(cluster):
    cluster.start_server()
    port = cluster.port
    assert raw_request(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_request(port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_request(port, huge).startswith(b"HTTP/1.1 431")
    long_target = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"
    assert raw_request(port, long_target).startswith(b"HTTP/1.1 414")
    status, _, _ = get(port, "/not/intersync")
    assert status == 404
    assert still_serving(port)


def test_peer_vanishing_mid_transfer_does_not_hurt_the_server(cluster):
    (cluster.server_root / "big.bin").write_bytes(b"z" * (64 << 20))
    cluster.start_server()
    port = cluster.port
    wait_for(lambda: get(port, PREFIX + "/info")[2].find(b'"head":0') < 0, what="journal")
    wait_for(lambda: cluster.server.fileset("docs")["pending_changes"] == 0, what="hashing")
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((f"GET {PREFIX}/file/big.bin HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()  # gone with most of 64 MiB unsent
    assert still_serving(port)
    assert cluster.server.proc.poll() is None


def test_range_requests_resume_a_file(cluster):
    data = bytes(range(256)) * 4096
    (cluster.server_root / "r.bin").write_bytes(data)
    cluster.start_server()
    port = cluster.port
    wait_for(lambda: get(port, PREFIX + "/file/r.bin")[0] == 200, what="r.bin served")
    status, headers, body = get(port, PREFIX + "/file/r.bin", headers={"Range": "bytes=1000-"})
    assert status == 206
    assert body == data[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    status, _, _ = get(port, PREFIX + "/file/r.bin", headers={"Range": f"bytes={len(data)}-"})
    assert status == 416
