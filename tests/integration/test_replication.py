"""One-way replication with real daemons: initial sync, live changes,
restarts, crash replay and atomic application."""

import hashlib
import os
import random
import threading
import time

from conftest import assert_same_tree, tree_snapshot, wait_for


def make_tree(root, files=3000, dirs=60, large=(), seed=1):
    """A tree like a user's: nested directories, many small files, a few
    large ones, symlinks, varied modes and old mtimes."""
    rnd = random.Random(seed)
    dir_paths = [root]
    for i in range(dirs):
        parent = rnd.choice(dir_paths)
        d = parent / f"dir{i:03d}"
        d.mkdir()
        dir_paths.append(d)
    for i in range(files):
        d = rnd.choice(dir_paths)
        p = d / f"file{i:05d}.txt"
        p.write_bytes(rnd.randbytes(rnd.randint(0, 8192)))
        if i % 7 == 0:
            p.chmod(0o600)
        if i % 11 == 0:
            os.utime(p, ns=(1_500_000_000_000_000_000 + i, 1_500_000_000_123_456_789 + i))
    for i, size in enumerate(large):
        (root / f"large{i}.bin").write_bytes(rnd.randbytes(size))
    (root / "link-to-file").symlink_to("dir000/../large0.bin" if large else "nowhere")
    (root / "dangling").symlink_to("/does/not/exist")
    (root / "private").mkdir(mode=0o700)


def test_initial_sync_of_thousands_of_files_to_two_clients(cluster):
    make_tree(cluster.server_root, files=3000, large=(24 << 20, 9 << 20, 300_000))
    cluster.start_server()
    c1 = cluster.add_client()
    c2 = cluster.add_client()
    cluster.wait_converged(timeout=120)
    st = c1.fileset("docs")
    assert st["state"] == "connected"
    assert st["last_rcvd"] == cluster.server.fileset("docs")["head"]
    assert st["records_pending"] == 0
    # Both clients appear as peers of the server.
    wait_for(lambda: len(cluster.server.fileset("docs")["peers"]) >= 1, what="peers listed")
    assert c2.fileset("docs")["last_error"] == ""
    # Every content travelled once: a large file downloaded ahead of its
    # batch is not fetched again by the batch.
    root = cluster.server_root
    content = sum(p.stat().st_size for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and ".intermezzo" not in p.parts)
    journal = (root / ".intermezzo" / "docs" / "kml").stat().st_size
    for c in (c1, c2):
        assert c.fileset("docs")["bytes_received"] <= content + journal, c.fileset("docs")


def test_live_changes_arrive(cluster):
    root = cluster.server_root
    (root / "a").mkdir()
    (root / "a" / "one.txt").write_text("one\n")
    cluster.start_server()
    cluster.add_client()
    cluster.add_client()
    cluster.wait_converged()

    steps = [
        lambda: (root / "new.txt").write_text("created live\n"),
        lambda: (root / "a" / "one.txt").write_text("rewritten\n"),
        lambda: open(root / "a" / "one.txt", "a").write("appended\n"),
        lambda: (root / "a" / "one.txt").rename(root / "a" / "renamed.txt"),
        lambda: (root / "a").rename(root / "b"),
        lambda: (root / "b" / "c" / "d").mkdir(parents=True),
        lambda: (root / "b" / "c" / "d" / "deep.txt").write_text("deep\n"),
        lambda: (root / "b" / "renamed.txt").chmod(0o640),
        lambda: os.utime(root / "new.txt", ns=(1_600_000_000_000_000_000,) * 2),
        lambda: (root / "sym").symlink_to("b/renamed.txt"),
        lambda: (root / "sym").unlink(),
        lambda: (root / "new.txt").unlink(),
        lambda: __import__("shutil").rmtree(root / "b" / "c"),
        lambda: (root / "b").rename(root / "moved-dir"),
    ]
    for i, step in enumerate(steps):
        step()
        cluster.wait_converged(timeout=20)


def test_client_restart_resumes_without_refetching(cluster):
    make_tree(cluster.server_root, files=500, large=(8 << 20,))
    cluster.start_server()
    c = cluster.add_client()
    cluster.wait_converged()
    head_before = c.fileset("docs")["last_rcvd"]
    c.stop()
    (cluster.server_root / "while-away.txt").write_text("written while the client was down\n")
    (cluster.server_root / "file00001.txt").unlink(missing_ok=True)
    wait_for(lambda: cluster.server.fileset("docs")["head"] > head_before, what="server journal")
    c.start()
    cluster.wait_converged()
    st = c.fileset("docs")
    # Only the new records' content travelled, not the 8 MiB file again.
    assert st["bytes_received"] < (1 << 20), st
    assert st["last_rcvd"] == cluster.server.fileset("docs")["head"]


def test_server_restart_loses_nothing(cluster):
    make_tree(cluster.server_root, files=200)
    cluster.start_server()
    c = cluster.add_client()
    cluster.wait_converged()
    head = cluster.server.fileset("docs")["head"]
    cluster.server.stop()
    wait_for(lambda: c.fileset("docs")["state"] == "disconnected", what="client to notice")
    # Changes made while the daemon is down are found by the start-up rescan.
    (cluster.server_root / "offline.txt").write_text("made while the server was down\n")
    (cluster.server_root / "file00002.txt").unlink(missing_ok=True)
    cluster.start_server()
    st = cluster.server.fileset("docs")
    assert st["uuid"]
    wait_for(lambda: cluster.server.fileset("docs")["head"] > head, what="rescan records")
    cluster.wait_converged()
    assert "reconnected" in c.log_text()


def test_client_killed_during_initial_sync_converges(cluster):
    make_tree(cluster.server_root, files=2000, large=(32 << 20,))
    cluster.start_server()
    c = cluster.add_client()
    # Kill -9 as soon as part of the tree has arrived.
    wait_for(lambda: sum(1 for _ in c.root.rglob("file*")) > 50, what="first files")
    c.kill9()
    c.start()
    cluster.wait_converged(timeout=120)


def test_reader_never_sees_a_half_written_file(cluster):
    root = cluster.server_root
    versions = [bytes([i]) * (3 << 20) for i in range(1, 7)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    (root / "hot.bin").write_bytes(versions[0])
    cluster.start_server()
    c = cluster.add_client()
    cluster.wait_converged()
    seen, bad = set(), []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                data = (c.root / "hot.bin").read_bytes()
            except FileNotFoundError:
                bad.append("missing")
                continue
            d = hashlib.sha256(data).hexdigest()
            seen.add(d)
            if d not in digests:
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in versions[1:]:
            tmp = root / ".hot.tmp"
            tmp.write_bytes(v)
            tmp.rename(root / "hot.bin")
            want = hashlib.sha256(v).hexdigest()
            wait_for(lambda: hashlib.sha256((c.root / "hot.bin").read_bytes()).hexdigest()
                     == want, what="new version on the client")
    finally:
        stop.set()
        t.join()
    assert not bad, f"reader saw partial or missing content: {bad[:5]}"
    assert len(seen) >= 2


def test_internal_directory_is_never_replicated(cluster):
    (cluster.server_root / "x.txt").write_text("x")
    cluster.start_server()
    c = cluster.add_client()
    cluster.wait_converged()
    # The client's own .intermezzo holds its last_rcvd, not the server's kml.
    server_kml = cluster.server_root / ".intermezzo" / "docs" / "kml"
    client_kml = c.root / ".intermezzo" / "docs" / "kml"
    assert server_kml.stat().st_size > 0
    assert client_kml.stat().st_size == 0
    assert (c.root / ".intermezzo" / "docs" / "last_rcvd").stat().st_size == 56
    assert not any(".intersync-" in p.name for p in c.root.rglob("*"))
    assert ".intermezzo" not in tree_snapshot(c.root)


def test_content_whose_local_copy_goes_away_in_the_same_batch_is_fetched(cluster):
    # The client has `a`. While it is stopped the server renames `a` to `b`,
    # deletes `b` and writes `c` with the same bytes: the client's batch
    # plans to copy `c` from its local `a`, which the batch itself removes
    # first; `c` must then come from the server.
    root = cluster.server_root
    data = os.urandom(300_000)
    (root / "a").write_bytes(data)
    cluster.start_server()
    c = cluster.add_client()
    cluster.wait_converged()
    c.stop()
    head = cluster.server.fileset("docs")["head"]
    (root / "a").rename(root / "b")
    wait_for(lambda: cluster.server.fileset("docs")["head"] > head, what="rename journaled")
    head = cluster.server.fileset("docs")["head"]
    (root / "b").unlink()
    wait_for(lambda: cluster.server.fileset("docs")["head"] > head, what="unlink journaled")
    (root / "c").write_bytes(data)
    c.start()
    cluster.wait_converged()
    assert (c.root / "c").read_bytes() == data
    assert not (c.root / "a").exists() and not (c.root / "b").exists()
