"""Data on demand: a client fileset on izofs with `data_on_demand: true`
receives names, sizes, modes and times at once, and each file's content only
when a user first opens it (the open waits for it), or when
`intersyncctl fetch` / `pin` asks; `evict` drops local content again. Real
intersyncd processes, a real izofs mount; the backing directory is looked at
directly so that looking never fetches anything."""

import os
import threading

import pytest

from conftest import wait_for
from test_izofs import Mount

ABSENT = "user.intersync.absent"
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse here")


def placeholder(path):
    try:
        return len(os.getxattr(path, ABSENT)) == 64
    except OSError:
        return False


def names(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".intermezzo"]
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def on_demand(cluster, tmp_path):
    root = cluster.server_root
    (root / "dir").mkdir()
    files = {"small.txt": b"small file\n", "big.bin": os.urandom(3 << 20),
             "dir/a.txt": b"a" * 5000, "dir/b.txt": b"b" * 7000}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.chmod(root / "dir/b.txt", 0o600)
    cluster.start_server()
    mount = Mount(tmp_path, name="client").start()
    try:
        client = cluster.add_client(path=mount.mnt, data_on_demand="true")
        client.mount = mount
        # Every name arrives, with its size, mode and mtime, as a placeholder.
        wait_for(lambda: names(mount.backing) == names(root), timeout=60,
                 what="names, sizes, modes and times on the client")
        yield cluster, client, files
        for c in cluster.clients:
            c.stop()
        cluster.clients.clear()
    finally:
        mount.stop()


def test_metadata_arrives_and_content_waits_for_the_first_open(on_demand):
    cluster, client, files = on_demand
    backing = client.mount.backing
    for rel in files:
        assert placeholder(backing / rel), rel
    assert client.fileset("docs")["bytes_received"] < 100_000
    # Several readers open the big file at once: each open waits, each sees
    # every byte.
    results = []

    def read():
        results.append((client.mount.mnt / "big.bin").read_bytes())

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=60)
    assert results == [files["big.bin"]] * 3
    assert not placeholder(backing / "big.bin")
    assert (backing / "big.bin").read_bytes() == files["big.bin"]
    # The others are still placeholders; the daemon fetched only what was read.
    assert placeholder(backing / "small.txt") and placeholder(backing / "dir/a.txt")


def test_fetch_pin_and_evict(on_demand):
    cluster, client, files = on_demand
    backing, mnt = client.mount.backing, client.mount.mnt
    client.ctl("fetch", str(mnt / "dir"))
    assert not placeholder(backing / "dir/a.txt") and not placeholder(backing / "dir/b.txt")
    assert (backing / "dir/b.txt").read_bytes() == files["dir/b.txt"]
    assert (backing / "dir/b.txt").stat().st_mode & 0o777 == 0o600

    # evict: the content goes, the file stays, and it comes back when opened.
    client.ctl("evict", str(mnt / "dir/a.txt"))
    assert placeholder(backing / "dir/a.txt")
    assert (backing / "dir/a.txt").read_bytes() == bytes(len(files["dir/a.txt"]))  # a hole
    assert (mnt / "dir/a.txt").read_bytes() == files["dir/a.txt"]

    # pin: fetched now, and kept fetched when the server changes it.
    client.ctl("pin", str(mnt / "dir"))
    assert "dir" in client.fileset("docs")["pinned"]
    (cluster.server_root / "dir/a.txt").write_bytes(b"changed on the server\n")
    wait_for(lambda: (backing / "dir/a.txt").read_bytes() == b"changed on the server\n",
             what="the pinned file's new content without an open")
    # An unpinned file changed on the server stays a placeholder, with the
    # new size.
    (cluster.server_root / "small.txt").write_bytes(b"a longer small file now\n")
    wait_for(lambda: (backing / "small.txt").stat().st_size == 24, what="new size")
    assert placeholder(backing / "small.txt")
    assert (mnt / "small.txt").read_bytes() == b"a longer small file now\n"

    # A pinned directory cannot be evicted file by file; evicting it unpins it.
    r = client.ctl("evict", str(mnt / "dir/b.txt"), check=False)
    assert r.returncode == 1 and "pinned" in r.stderr
    client.ctl("evict", str(mnt / "dir"))
    assert placeholder(backing / "dir/a.txt") and placeholder(backing / "dir/b.txt")
    assert client.fileset("docs")["pinned"] == []


def test_an_open_fails_cleanly_when_the_server_is_gone(on_demand):
    cluster, client, files = on_demand
    cluster.server.stop()
    with pytest.raises(OSError) as err:
        (client.mount.mnt / "small.txt").read_bytes()
    assert err.value.errno == 5  # EIO, and the placeholder is kept
    assert placeholder(client.mount.backing / "small.txt")
    r = client.ctl("fetch", str(client.mount.mnt / "small.txt"), check=False)
    assert r.returncode == 1 and "cannot be reached" in r.stderr
    cluster.start_server()
    wait_for(lambda: client.fileset("docs")["state"] == "connected", what="reconnection")
    assert (client.mount.mnt / "small.txt").read_bytes() == files["small.txt"]
