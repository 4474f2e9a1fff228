"""Bad input over the network gets a clear error and the server keeps
serving: missing or wrong tokens, `..` in paths, garbage bytes, oversize
headers, a peer that vanishes mid-transfer, paths through symbolic links
that lead out of the fileset, in requests and in reintegrated records."""

import hashlib
import http.client
import json
import os
import socket
import struct
from pathlib import Path

from conftest import TOKEN, raw_request, wait_for

PREFIX = "/cgi-bin/intersync/docs"


def request(port, method, path, body=None, token=TOKEN, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def get(port, path, token=TOKEN, headers=None):
    return request(port, "GET", path, token=token, headers=headers)


# Journal records as a client sends them to `reintegrate` (shared/KML.md):
# prefix, fixed body, strings padded to 4 bytes, suffix with prevrec.
CREATE, MKDIR, UNLINK, SYMLINK, RENAME, SETATTR, CONTENT = 1, 2, 3, 6, 7, 8, 64
V = struct.pack("<4IQ", 0, 0, 0, 0, 0)  # a version: mtime, ctime, size
RB = struct.pack("<2I2Q", 0, 0, 0, 0)  # a rollback: mode, rdev, uid, gid


def kml_path(p):
    return b"/" + p + b"\0"  # on disk a path is "/rel" with its NUL


def kml_record(recno, opcode, body, strings, prevrec=0):
    """One record; `body` holds the fixed fields without the string
    lengths, which follow it in the order of `strings` (bytes, already
    in their on-disk form)."""
    payload = body + b"".join(struct.pack("<I", len(x)) for x in strings)
    for x in strings:
        payload += x + b"\0" * (-len(x) % 4)
    length = 32 + len(payload) + 16
    prefix = struct.pack("<8I", length, 0x00010002, 0, 0, 0, 0, opcode, 0)
    return prefix + payload + struct.pack("<4I", prevrec, recno, 0, length)


def kml_records(*records):
    """(opcode, path-or-(dir, name)-or-(src, tgt), extra) -> KML bytes."""
    out = b""
    for recno, (op, args) in enumerate(records, 1):
        if op in (CREATE, MKDIR):
            out += kml_record(recno, op, V * 3 + struct.pack("<3I", 0o100644, 0, 0),
                              [kml_path(args)])
        elif op == CONTENT:
            path, content = args
            body = V + struct.pack("<QII", len(content), 0o100644, 1)
            out += kml_record(recno, op, body + hashlib.sha256(content).digest(),
                              [kml_path(path)])
        elif op == SYMLINK:
            path, target = args
            out += kml_record(recno, op, V * 3 + struct.pack("<2I", 0, 0),
                              [kml_path(path), target])
        elif op == UNLINK:
            d, name = args
            out += kml_record(recno, op, V * 3 + RB, [kml_path(d), name, b""])
        elif op == RENAME:
            src, tgt = args
            out += kml_record(recno, op, V * 4, [kml_path(src), kml_path(tgt)])
        elif op == SETATTR:
            body = V + struct.pack("<4IQ5I", 1, 0o100777, 0, 0, 0, 0, 0, 0, 0, 0) + RB
            out += kml_record(recno, op, body, [kml_path(args)])
    return out


def reintegrate(port, kml):
    status, _, body = request(port, "POST", PREFIX + "/reintegrate", body=kml,
                              headers={"Content-Type": "application/x-intermezzo-kml"})
    return status, body


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


def test_symlinks_leading_out_of_the_fileset_are_never_followed(cluster, tmp_path):
    passwd = Path("/etc/passwd").read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"outside the fileset\n"
    (outside / "secret.txt").write_bytes(secret)
    root = cluster.server_root
    (root / "inside.txt").write_text("inside\n")
    (root / "evil").symlink_to("/etc")
    (root / "pw").symlink_to("/etc/passwd")
    (root / "out").symlink_to(outside)
    cluster.start_server()
    port = cluster.port

    # The links are data: a client gets them as links (tree_snapshot
    # compares link targets), and nothing they point at.
    client = cluster.add_client()
    cluster.wait_converged()
    assert os.readlink(client.root / "evil") == "/etc"
    assert os.readlink(client.root / "pw") == "/etc/passwd"

    # Reading through them: refused, and not a byte of what they point at.
    for bad in ["/file/evil/passwd", "/file/pw", "/file/out/secret.txt", "/file/evil",
                "/file/out"]:
        status, _, body = get(port, PREFIX + bad)
        assert status in (400, 404), (bad, status, body)
        assert passwd not in body and secret not in body

    # Writing through them: a client uploads content and reintegrates
    # records whose paths go through the links, or that would move what
    # lies beyond them into the fileset.
    planted = b"written through a symlink\n"
    cid = hashlib.sha256(planted).hexdigest()
    status, _, body = request(port, "PUT", f"{PREFIX}/upload/{cid}?offset=0&size={len(planted)}",
                              body=planted)
    assert status == 200, body
    kml = kml_records(
        (CREATE, b"evil/x"), (CONTENT, (b"evil/x", planted)),
        (MKDIR, b"out/d"), (CREATE, b"out/x"), (CONTENT, (b"out/x", planted)),
        (SYMLINK, (b"out/l", b"/")), (UNLINK, (b"out", b"secret.txt")),
        (SETATTR, b"pw"), (SETATTR, b"evil/passwd"), (SETATTR, b"out/secret.txt"),
        (RENAME, (b"out/secret.txt", b"stolen.txt")), (RENAME, (b"inside.txt", b"out/moved")),
        (CONTENT, (b"pw/x", planted)))
    status, body = reintegrate(port, kml)
    assert status == 200, body
    results = json.loads(body)["results"]
    assert len(results) == 13
    # None took effect: refused, or accepted as nothing to do (a CREATE
    # leaves the file to its CONTENT; an UNLINK of what the fileset does
    # not hold is "already gone"), never journaled.
    for r in results:
        assert r["result"] != "accepted" or r["server_recno"] == 0, r
    assert [r["result"] for r in results if r["result"] != "accepted"], results

    # Nothing outside the root was written, removed or changed.
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == secret
    assert stat_mode(outside / "secret.txt") == 0o644
    assert not Path("/etc/x").exists() and Path("/etc/passwd").read_bytes() == passwd
    assert (root / "inside.txt").read_text() == "inside\n"

    # Nor read: no journal record or served content names what lies beyond
    # the links (a record about evil/passwd makes the server look at that
    # path; it must not index /etc/passwd as part of the fileset).
    status, _, journal = get(port, PREFIX + "/kml?since=0")
    assert status == 200
    for through in (b"/evil/", b"/out/", b"/pw/", b"/stolen.txt"):
        assert through not in journal, through
    ids = "\n".join(hashlib.sha256(x).hexdigest() for x in (passwd, secret)) + "\n"
    status, _, body = request(port, "POST", PREFIX + "/contents", body=ids.encode())
    assert status == 200
    assert body == struct.pack("<Q", 2**64 - 1) * 2
    for bad in ["/file/stolen.txt", "/file/evil/passwd", "/file/out/secret.txt"]:
        assert get(port, PREFIX + bad)[0] in (400, 404), bad

    # A client never follows a link when applying records: a link to the
    # outside appears in its copy while it is stopped, and the server then
    # makes a directory of that name with a file in it.
    client.stop()
    (client.root / "inbox").symlink_to(outside)
    (root / "inbox").mkdir()
    (root / "inbox" / "new.txt").write_text("for the fileset only\n")
    wait_for(lambda: b"/inbox/new.txt" in get(port, PREFIX + "/kml?since=0")[2],
             what="the server to journal inbox/new.txt")
    client.start()
    wait_for(lambda: "CONTENT inbox/new.txt) not applied" in client.log_text(),
             what="the client to refuse writing through its link")
    assert "Too many levels of symbolic links" in client.log_text()
    assert (client.root / "inbox").is_symlink()
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert still_serving(port)


def stat_mode(path):
    return os.lstat(path).st_mode & 0o7777


def test_reintegrated_paths_cannot_leave_the_fileset(cluster, tmp_path):
    (cluster.server_root / "inside.txt").write_text("inside\n")
    cluster.start_server()
    port = cluster.port
    wait_for(lambda: get(port, PREFIX + "/file/inside.txt")[0] == 200, what="inside.txt served")
    # Each bad path alone: `..`, the state directory, an overlong name, an
    # empty name.
    # A name that is not UTF-8 is still answered in JSON (found by fuzzing).
    for bad in [b"../escaped", b"a/../../escaped", b".intermezzo/docs/x", b"x" * 300, b"",
                b"\xff\xfe/../escaped"]:
        status, body = reintegrate(port, kml_records((MKDIR, bad)))
        assert status == 200, (bad, body)
        result = json.loads(body)["results"][0]
        assert result["result"] == "refused", (bad, result)
    status, body = reintegrate(port, kml_records((UNLINK, (b"", b".."))))
    assert status == 200 and json.loads(body)["results"][0]["result"] == "refused", body
    # A NUL byte inside a path, or an absolute path (stored as "//..."), does
    # not even parse as a record.
    for bad in [b"a\0b", b"/" + str(tmp_path / "abs").encode()]:
        status, body = reintegrate(port, kml_records((MKDIR, bad)))
        assert status == 400, (bad, body)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()
    assert sorted(os.listdir(cluster.server_root)) == [".intermezzo", "inside.txt"]
    assert still_serving(port)
