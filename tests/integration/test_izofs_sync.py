"""Replication through real izofs mounts with real intersyncd processes.

A server whose fileset root is an izofs mount follows izofs's KML with the
`kml` backend: it never compares the whole tree with its index at start
(not even the first time, when izofs began the log on an empty fileset),
survives kill -9 while users keep writing, resumes from its saved position,
and rescans only when the log proves incomplete. A write-back client whose
root is an izofs mount reintegrates what its users do through the mount,
while what its daemon applies there (as izofs's registered replicator) is
never journaled by izofs.

Every mount is unmounted with `fusermount3 -u` in teardown, after the
daemons have stopped, whatever happened; izofs and the daemons must exit 0
without a sanitizer report (the ASan build runs these same tests).
"""

import json
import os
import stat
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import KMLPRINT, Cluster, assert_same_tree, trees_equal, wait_for
from test_izofs import FSET, Mount

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                reason="/dev/fuse is missing: FUSE cannot mount here")

FULL_RESCAN = "rescanning '/'"


def kml_records(path, strict=True):
    """The records of a KML, with kmlprint --json. Not `strict`: those it
    could decode even if it found a problem (a gap)."""
    r = subprocess.run([str(KMLPRINT), "--json", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 or not strict, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def fset_dir(mount):
    return mount.backing / ".intermezzo" / FSET


def saved_position(mount):
    """(recno, end offset) of kml.position, the backend's saved position;
    None when nothing was saved yet."""
    data = (fset_dir(mount) / "kml.position").read_bytes()
    if not data:
        return None
    assert data[:16] == b"intersync-kmlpos", data[:16]
    recno, _offset, _local_recno, end, _ctime = struct.unpack_from("<5Q", data, 16)
    return recno, end


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Env:
    """A cluster plus izofs mounts; teardown stops every daemon first (they
    hold the mounts), then unmounts every mount, even when a step fails."""

    def __init__(self, tmp_path):
        self.tmp = Path(tmp_path)
        self.cluster = Cluster(tmp_path)
        self.mounts = []

    def mount(self, name):
        m = Mount(self.tmp, name=name)
        self.mounts.append(m)
        return m.start()

    def server_on(self, mount, **extra):
        self.cluster.server_root = mount.mnt
        return self.cluster.start_server(backend="kml", **extra)

    def close(self):
        problems = []
        try:
            self.cluster.stop()
        except AssertionError as exc:
            problems.append(str(exc))
        for m in self.mounts:
            try:
                m.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError("\n".join(problems))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def start_server_and_client(env, populate):
    """A server on an izofs mount whose tree `populate(root)` makes first,
    and a client converged from it."""
    m = env.mount("server")
    populate(m.mnt)
    server = env.server_on(m)
    client = env.cluster.add_client()
    converge(env.cluster, client)
    return m, server, client


def converge(cluster, client, timeout=30):
    wait_for(lambda: trees_equal(cluster.server_root, client.root), timeout=timeout,
             what=f"{client.dir.name} to match the server")
    assert_same_tree(cluster.server_root, client.root)


def make_initial_tree(root):
    os.makedirs(root / "docs")
    os.makedirs(root / "tree" / "sub" / "deep")
    os.mkdir(root / "empty-dir")
    os.mkdir(root / "doomed")
    os.mkdir(root / "live")
    write_file(root / "docs" / "a.txt", b"alpha\n")
    write_file(root / "docs" / "b.txt", b"bravo\n" * 100)
    write_file(root / "docs" / "c.txt", b"charlie\n")
    write_file(root / "tree" / "sub" / "deep" / "data.bin", os.urandom(300_000))
    write_file(root / "tree" / "sub" / "s.txt", b"in sub\n")
    write_file(root / "top.txt", b"top\n", mode=0o640)
    write_file(root / "empty", b"")
    write_file(root / "doomed" / "x", b"x")
    os.symlink("docs/a.txt", root / "old-link")
    os.symlink("tree/sub", root / "dir-link")


def renames_in(records):
    return [(r["src"], r["tgt"]) for r in records if r["op"] == "RENAME"]


# ------------------------------------------------------- server on izofs

def test_server_on_izofs_replicates_every_change_without_rescanning(env):
    m, server, client = start_server_and_client(env, make_initial_tree)
    cluster = env.cluster
    journal = fset_dir(m) / "sync.kml"
    seen = len(kml_records(journal))

    # Live changes, all through the mount.
    write_file(m.mnt / "live" / "new.txt", b"new file\n")
    os.makedirs(m.mnt / "live" / "newdir" / "deeper")
    write_file(m.mnt / "live" / "newdir" / "deeper" / "f", b"deep\n")
    with open(m.mnt / "docs" / "a.txt", "ab") as f:
        f.write(b"appended\n")
    os.rename(m.mnt / "docs" / "b.txt", m.mnt / "docs" / "b-renamed.txt")
    os.rename(m.mnt / "tree" / "sub", m.mnt / "tree" / "sub-moved")
    os.rename(m.mnt / "top.txt", m.mnt / "live" / "top.txt")
    os.unlink(m.mnt / "docs" / "c.txt")
    os.rmdir(m.mnt / "empty-dir")
    os.unlink(m.mnt / "doomed" / "x")
    os.rmdir(m.mnt / "doomed")
    os.chmod(m.mnt / "docs" / "a.txt", 0o600)
    os.chmod(m.mnt / "tree", 0o700)
    os.symlink("../docs/a.txt", m.mnt / "live" / "link")
    os.unlink(m.mnt / "old-link")
    write_file(m.mnt / "empty", b"no longer empty\n")  # O_TRUNC of an existing file
    # An editor's save: a new file renamed over the old one at once (the
    # server never knew the new file's first name: it sees new content).
    write_file(m.mnt / "live" / "new.txt.saving", b"saved by an editor\n")
    os.rename(m.mnt / "live" / "new.txt.saving", m.mnt / "live" / "new.txt")
    os.link(m.mnt / "docs" / "a.txt", m.mnt / "live" / "hard")
    converge(cluster, client)

    assert stat.S_IMODE(os.lstat(client.root / "docs" / "a.txt").st_mode) == 0o600
    assert os.readlink(client.root / "live" / "link") == "../docs/a.txt"
    assert not (client.root / "doomed").exists() and not (client.root / "old-link").exists()
    assert (client.root / "live" / "new.txt").read_bytes() == b"saved by an editor\n"
    assert (client.root / "live" / "hard").read_bytes() == b"alpha\nappended\n"
    assert (client.root / "tree" / "sub-moved" / "deep" / "data.bin").read_bytes() == \
        (m.backing / "tree" / "sub-moved" / "deep" / "data.bin").read_bytes()

    # Renames travel as renames: exact RENAME records, no removal of the old
    # name and no creation of the new one.
    fresh = kml_records(journal)[seen:]
    moves = [("docs/b.txt", "docs/b-renamed.txt"), ("tree/sub", "tree/sub-moved"),
             ("top.txt", "live/top.txt")]
    # The editor's save is a RENAME only when the server saw the first name.
    renames = [mv for mv in renames_in(fresh) if mv != ("live/new.txt.saving", "live/new.txt")]
    assert sorted(renames) == sorted(moves), [(r["op"], r.get("path")) for r in fresh]
    for src, tgt in moves:
        for r in fresh:
            assert not (r["op"] in ("UNLINK", "RMDIR")
                        and f"{r['dir']}/{r['name']}".lstrip("/") == src), r
            assert not (r["op"] in ("CREATE", "MKDIR") and r["path"] == tgt), r

    # A known file renamed over another, and a directory moved again.
    seen += len(fresh)
    os.replace(m.mnt / "docs" / "b-renamed.txt", m.mnt / "empty")
    os.rename(m.mnt / "live", m.mnt / "tree" / "sub-moved" / "live")
    converge(cluster, client)
    fresh = kml_records(journal)[seen:]
    assert renames_in(fresh) == [("docs/b-renamed.txt", "empty"),
                                 ("live", "tree/sub-moved/live")], fresh
    assert [r["op"] for r in fresh] == ["RENAME", "RENAME"], fresh

    log = server.log_text()
    assert FULL_RESCAN not in log, log[-3000:]
    assert "from its first record" in log
    assert server.fileset(FSET)["last_error"] == ""


def test_a_move_into_a_new_directory_is_journaled_as_the_move(env):
    m, server, client = start_server_and_client(env, make_initial_tree)
    cluster = env.cluster
    journal = fset_dir(m) / "sync.kml"
    seen = len(kml_records(journal))

    # While the server is stopped, so that when it replays izofs's log it
    # lists each new directory with what was moved into it already there.
    server.stop()
    os.mkdir(m.mnt / "new-dir")
    os.rename(m.mnt / "docs" / "a.txt", m.mnt / "new-dir" / "a.txt")
    os.mkdir(m.mnt / "new-parent")
    os.rename(m.mnt / "tree", m.mnt / "new-parent" / "tree")
    server = cluster.start_server(backend="kml")
    converge(cluster, client)

    fresh = kml_records(journal)[seen:]
    said = [(r["op"], r.get("path") or (r.get("src"), r.get("tgt"))) for r in fresh]
    assert said == [("MKDIR", "new-dir"), ("RENAME", ("docs/a.txt", "new-dir/a.txt")),
                    ("MKDIR", "new-parent"), ("RENAME", ("tree", "new-parent/tree"))], said
    assert (client.root / "new-dir" / "a.txt").read_bytes() == b"alpha\n"
    assert (client.root / "new-parent" / "tree" / "sub" / "s.txt").read_bytes() == b"in sub\n"
    assert not (client.root / "docs" / "a.txt").exists() and not (client.root / "tree").exists()


def test_server_killed_while_users_write_resumes_from_its_saved_position(env):
    m, server, client = start_server_and_client(
        env, lambda root: write_file(root / "before.txt", b"before\n"))
    cluster = env.cluster
    wait_for(lambda: saved_position(m) is not None, what="a first saved position")

    # The user writes (and sometimes renames) files while `target` is ahead
    # of what it wrote; each step of the test moves `target` on, so the
    # amount of work stays bounded.
    written = []
    target = [40]
    stop = threading.Event()
    more = threading.Condition()
    failure = []

    def writer():
        try:
            i = 0
            while True:
                with more:
                    more.wait_for(lambda: stop.is_set() or i < target[0])
                    if stop.is_set():
                        return
                d = m.mnt / f"w{i // 10}"
                os.makedirs(d, exist_ok=True)
                write_file(d / f"f{i}", f"file {i}\n".encode() * (i + 1))
                if i % 7 == 3:
                    os.rename(d / f"f{i}", d / f"r{i}")
                written.append(i)
                i += 1
        except OSError as exc:  # reported once the thread is joined
            failure.append(exc)

    def write_up_to(n):
        with more:
            target[0] = n
            more.notify()

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(written) >= 20, what="writes before the kill")
        server.kill9()  # the user is still writing
        killed_at = len(written)
        before_restart = saved_position(m)
        assert before_restart is not None
        write_up_to(killed_at + 30)
        wait_for(lambda: len(written) >= killed_at + 30, what="writes while the server is down")
        down_records = kml_records(m.kml)
        assert down_records[-1]["recno"] > before_restart[0]
        write_up_to(killed_at + 60)  # and on while it starts
        server = cluster.start_server(backend="kml")
        wait_for(lambda: len(written) >= killed_at + 60, what="writes after the restart")
    finally:
        stop.set()
        with more:
            more.notify()
        t.join(timeout=30)
    assert not failure, failure
    converge(cluster, client)

    # Every file written reached the client, renamed where it was renamed.
    for i in written:
        name = f"r{i}" if i % 7 == 3 else f"f{i}"
        assert (client.root / f"w{i // 10}" / name).read_bytes() == \
            f"file {i}\n".encode() * (i + 1)

    # The restart resumed from the saved position, without a rescan, and the
    # position advanced to the end of the log.
    log = server.log_text()
    assert f"from record {before_restart[0]} (logical offset {before_restart[1]})" in log, \
        log[-3000:]
    assert FULL_RESCAN not in log, log[-3000:]
    last = kml_records(m.kml)[-1]["recno"]
    wait_for(lambda: saved_position(m)[0] == last, what="the saved position to reach the end")
    assert saved_position(m)[1] > before_restart[1]

    # Nothing twice: each file and directory appeared once in the server's
    # journal, although the kill may have come between the journal and the
    # index.
    created = [r["path"] for r in kml_records(fset_dir(m) / "sync.kml")
               if r["op"] in ("CREATE", "MKDIR")]
    twice = sorted({p for p in created if created.count(p) > 1})
    assert not twice, f"journaled twice: {twice}"


def append_gapped_record(kml, skip):
    """Appends a copy of the log's last record with its recno `skip` past
    the next one: the records in between are missing."""
    data = kml.read_bytes()
    pos, last = 0, None
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            pos += 4
            continue
        last = (pos, length)
        pos += length
    assert last, "the log holds no record"
    start, length = last
    rec = bytearray(data[start:start + length])
    (recno,) = struct.unpack_from("<I", rec, length - 12)
    struct.pack_into("<I", rec, length - 12, recno + 1 + skip)
    with open(kml, "ab") as f:
        f.write(rec)
    return recno + 1 + skip


def test_a_gap_in_the_log_makes_the_server_rescan_and_converge(env):
    m, server, client = start_server_and_client(
        env, lambda root: write_file(root / "one.txt", b"one\n"))
    cluster = env.cluster
    server.stop()
    m.stop()
    # What the missing records described: a change nobody journaled.
    write_file(m.backing / "unjournaled.txt", b"made while records were lost\n")
    gapped = append_gapped_record(m.kml, skip=3)
    m.start()
    write_file(m.mnt / "after-gap.txt", b"after the gap\n")
    assert [r["recno"] for r in kml_records(m.kml, strict=False)][-3:] == \
        [gapped, gapped + 1, gapped + 2]

    server = cluster.start_server(backend="kml")
    converge(cluster, client)
    assert (client.root / "unjournaled.txt").read_bytes() == b"made while records were lost\n"
    log = server.log_text()
    assert f"has a gap: record {gapped}" in log, log[-3000:]
    assert FULL_RESCAN in log
    # Following goes on after the rescan.
    write_file(m.mnt / "later.txt", b"later\n")
    converge(cluster, client)


# ------------------------------------------------ write-back client on izofs

def test_write_back_client_on_izofs_journals_only_its_users_changes(env):
    cluster = env.cluster
    (cluster.server_root / "from-server").mkdir()
    write_file(cluster.server_root / "from-server" / "s1.txt", b"server 1\n")
    cluster.start_server()
    cm = env.mount("client")
    izc = cluster.add_client(name="izclient", path=cm.mnt, write_back="true", backend="kml")
    izc.root = cm.mnt
    plain = cluster.add_client(name="plain")
    cluster.wait_converged(timeout=30)

    # Users of the client's mount: their changes reach the server and the
    # other client.
    os.mkdir(cm.mnt / "mine")
    write_file(cm.mnt / "mine" / "u1.txt", b"user 1\n")
    write_file(cm.mnt / "mine" / "u2.txt", b"user 2\n")
    os.rename(cm.mnt / "mine" / "u2.txt", cm.mnt / "mine" / "u2-renamed.txt")
    os.symlink("u1.txt", cm.mnt / "mine" / "u-link")
    os.chmod(cm.mnt / "mine" / "u1.txt", 0o640)
    cluster.wait_converged(timeout=30)
    assert (plain.root / "mine" / "u2-renamed.txt").read_bytes() == b"user 2\n"

    # The server's changes, applied through the mount by the client daemon.
    write_file(cluster.server_root / "from-server" / "s2.txt", b"server 2\n")
    os.rename(cluster.server_root / "from-server" / "s1.txt",
              cluster.server_root / "from-server" / "s1-moved.txt")
    (cluster.server_root / "from-server" / "sdir").mkdir()
    write_file(cluster.server_root / "from-server" / "sdir" / "s3.txt", b"server 3\n")
    cluster.wait_converged(timeout=30)

    # One more user change after the server's, and a user change to a file
    # the server made.
    write_file(cm.mnt / "from-server" / "s2.txt", b"server 2, edited by a user\n")
    cluster.wait_converged(timeout=30)
    assert (cluster.server_root / "from-server" / "s2.txt").read_bytes() == \
        b"server 2, edited by a user\n"

    records = kml_records(cm.kml)
    paths = set()
    for r in records:
        for key in ("path", "src", "tgt"):
            if r.get(key):
                paths.add(r[key])
        if r.get("name") and "dir" in r:
            paths.add(f"{r['dir']}/{r['name']}".lstrip("/"))
    users = {"mine", "mine/u1.txt", "mine/u2.txt", "mine/u2-renamed.txt", "mine/u-link",
             "from-server/s2.txt"}
    assert paths == users, sorted(paths)
    # The edit of s2.txt is the users' only record on a server-made path.
    assert [r["op"] for r in records if r.get("path") == "from-server/s2.txt"] in (
        ["SETATTR", "CLOSE"], ["CLOSE"])
    assert izc.fileset(FSET)["local_pending"] == 0
    assert cluster.server.fileset(FSET)["conflicts"] == 0
