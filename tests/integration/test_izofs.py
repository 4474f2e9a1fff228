"""izofs, the FUSE file system that journals every change into the KML.

Real mounts of a temporary backing directory: each modifying operation is
made through the mount and read back from the journal with
`kmlprint --json`; what must never be journaled (.intermezzo/,
user.intersync.* xattrs, the registered replicator); data on demand with a
stand-in daemon on a unix socket; `mount -t fuse.izofs`. Every mount is
unmounted with `fusermount3 -u` whatever happens, and izofs must then exit
0 with no sanitizer report (the ASan build runs these same tests).

The tests that take the `mount` fixture run twice: as izofs starts by
default (file data by kernel passthrough when root on Linux 6.9 and later)
and with `-o no_passthrough` (file data through izofs).
"""

import errno
import hashlib
import json
import os
import mmap
import queue
import re
import resource
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import BUILD, KMLPRINT, wait_for

IZOFS = BUILD / "tools" / "izofs" / "izofs"
FSET = "docs"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
# FUSE passthrough came with Linux 6.9, and the kernel gives backing files
# only to CAP_SYS_ADMIN.
PASSTHROUGH_POSSIBLE = (
    os.geteuid() == 0
    and tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", os.uname().release).groups()) >= (6, 9))

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                reason="/dev/fuse is missing: FUSE cannot mount here")


def check_clean_log(text, who):
    for marker in SANITIZER_MARKERS:
        if marker in text:
            raise AssertionError(f"{who}: sanitizer report:\n"
                                 + text[max(0, text.index(marker) - 200):][:6000])


class Mount:
    """One izofs process in the foreground, BACKING mounted at MNT."""

    def __init__(self, tmp, name="izofs", options=(), wrapper=(), open_files=None):
        self.backing = Path(tmp) / f"{name}-backing"
        self.mnt = Path(tmp) / f"{name}-mnt"
        self.backing.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.log = Path(tmp) / f"{name}.log"
        self.kml = self.backing / ".intermezzo" / FSET / "kml"
        self.options = list(options)
        self.wrapper = list(wrapper)
        self.open_files = open_files
        self.proc = None
        self.seen = 0

    def start(self):
        self.logf = open(self.log, "ab")
        limit = self.open_files

        def set_limit():
            if limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [*self.wrapper, str(IZOFS), "-f", "-o", f"fileset={FSET}", *self.options,
             str(self.backing), str(self.mnt)], stdout=self.logf, stderr=subprocess.STDOUT,
            preexec_fn=set_limit)
        wait_for(lambda: self.proc.poll() is not None or os.path.ismount(self.mnt),
                 timeout=20, what="izofs to mount")
        if self.proc.poll() is not None:
            raise AssertionError(f"izofs exited {self.proc.returncode}:\n{self.log_text()}")
        return self

    def stop(self):
        """Unmounts and insists that izofs exits 0 without a sanitizer report."""
        if self.proc is None:
            return
        try:
            if os.path.ismount(self.mnt):
                r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True,
                                   text=True, timeout=30)
                if r.returncode != 0:
                    # Something still uses it (a failed test): detach it anyway.
                    subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], timeout=30)
                    raise AssertionError(f"fusermount3 -u {self.mnt}: {r.stderr}")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("izofs did not exit after the unmount")
        finally:
            self.logf.close()
        check_clean_log(self.log_text(), "izofs")
        assert self.proc.returncode == 0, f"izofs exited {self.proc.returncode}:\n{self.log_text()}"
        self.proc = None

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def file_data_line(self):
        """The line izofs logs at INIT: how file data goes."""
        found = []
        wait_for(lambda: found.extend(re.findall(r"izofs: file data goes .*", self.log_text()))
                 or found, timeout=10, what="izofs to say how file data goes")
        return found[0]

    @property
    def passthrough(self):
        return "(kernel passthrough)" in self.file_data_line()

    def records(self):
        r = subprocess.run([str(KMLPRINT), "--json", str(self.kml)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def new_records(self):
        """The records appended since the last call."""
        recs = self.records()
        fresh = recs[self.seen:]
        self.seen = len(recs)
        return fresh

    def p(self, rel):
        return self.mnt / rel


@pytest.fixture(params=["default", "no_passthrough"])
def mount(request, tmp_path):
    options = ["-o", "no_passthrough"] if request.param == "no_passthrough" else []
    m = Mount(tmp_path, options=options).start()
    try:
        yield m
    finally:
        m.stop()


class Lines:
    """The lines a child process prints, each awaited with a deadline."""

    def __init__(self, stream):
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.lines.put(line)

    def next(self, timeout=30):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the child within {timeout} s") from None


def ops(records):
    return [r["op"] for r in records]


def by_op(records, op):
    found = [r for r in records if r["op"] == op]
    assert found, f"no {op} among {ops(records)}"
    return found


def write_file(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ journaling

def test_each_change_is_journaled_with_caller_paths_and_versions(mount):
    me = os.getpid()  # the main thread's id is the process id
    uid, gid = os.getuid(), os.getgid()

    write_file(mount.p("a.txt"), b"hello")
    r = mount.new_records()
    assert ops(r) == ["CREATE", "CLOSE"]
    create, close = r
    assert create["path"] == "a.txt" and stat.S_ISREG(create["mode"])
    assert stat.S_IMODE(create["mode"]) == 0o644
    assert (create["uid"], create["gid"]) == (uid, gid)
    assert (create["pid"], create["fsuid"], create["fsgid"]) == (me, uid, gid)
    assert create["obj_new"]["size"] == 0
    assert create["parent_new"]["mtime_sec"] * 10**9 + create["parent_new"]["mtime_nsec"] >= \
        create["parent_old"]["mtime_sec"] * 10**9 + create["parent_old"]["mtime_nsec"]
    assert close["path"] == "a.txt" and close["old"]["size"] == 0 and close["new"]["size"] == 5
    assert close["ino"] == os.stat(mount.backing / "a.txt").st_ino
    assert stat.S_ISREG(close["open_mode"]) and close["open_uid"] == uid

    os.mkdir(mount.p("d"), 0o750)
    os.symlink("../a.txt", mount.p("d/sym"))
    os.link(mount.p("a.txt"), mount.p("d/hard"))
    os.mkfifo(mount.p("fifo"), 0o600)
    r = mount.new_records()
    assert ops(r) == ["MKDIR", "SYMLINK", "LINK", "MKNOD"]
    assert r[0]["path"] == "d" and r[0]["mode"] == stat.S_IFDIR | 0o750
    assert (r[1]["path"], r[1]["target"]) == ("d/sym", "../a.txt")
    assert (r[2]["src"], r[2]["tgt"]) == ("a.txt", "d/hard") and r[2]["obj_new"]["size"] == 5
    assert r[3]["path"] == "fifo" and r[3]["mode"] == stat.S_IFIFO | 0o600

    os.chmod(mount.p("a.txt"), 0o600)
    os.chown(mount.p("a.txt"), 1234, 5678)
    os.truncate(mount.p("a.txt"), 2)
    os.utime(mount.p("a.txt"), ns=(1_000_000_000, 2_000_000_003))
    # The access time alone (touch -a leaves mtime out): not replicated, no record.
    subprocess.run(["touch", "-a", "-d", "@3", str(mount.p("a.txt"))], check=True)
    r = mount.new_records()
    assert ops(r) == ["SETATTR"] * 4
    mode_, owner, size, times = r
    assert mode_["valid"] & 1 and mode_["mode"] == stat.S_IFREG | 0o600
    assert mode_["rollback"]["mode"] == stat.S_IFREG | 0o644
    assert owner["valid"] & 6 == 6 and (owner["uid"], owner["gid"]) == (1234, 5678)
    assert (owner["rollback"]["uid"], owner["rollback"]["gid"]) == (uid, gid)
    assert size["valid"] & 8 and size["size"] == 2 and size["old"]["size"] == 5
    assert times["valid"] & 32 and (times["mtime_sec"], times["mtime_nsec"]) == (2, 3)
    assert all(rec["path"] == "a.txt" for rec in r)

    os.setxattr(mount.p("a.txt"), "user.colour", b"blue")
    os.removexattr(mount.p("a.txt"), "user.colour")
    r = mount.new_records()
    assert ops(r) == ["SETEXTATTR", "DELEXTATTR"]
    assert (r[0]["path"], r[0]["name"], r[0]["value"]) == ("a.txt", "user.colour",
                                                          b"blue".hex())
    assert (r[1]["path"], r[1]["name"]) == ("a.txt", "user.colour")

    os.rename(mount.p("a.txt"), mount.p("d/b.txt"))
    os.unlink(mount.p("d/sym"))
    os.unlink(mount.p("fifo"))
    os.mkdir(mount.p("e"))
    os.rmdir(mount.p("e"))
    r = mount.new_records()
    assert ops(r) == ["RENAME", "UNLINK", "UNLINK", "MKDIR", "RMDIR"]
    assert (r[0]["src"], r[0]["tgt"]) == ("a.txt", "d/b.txt")
    assert (r[1]["dir"], r[1]["name"], r[1]["old_target"]) == ("d", "sym", "../a.txt")
    assert stat.S_ISLNK(r[1]["rollback"]["mode"])
    assert (r[2]["dir"], r[2]["name"], r[2]["old_target"]) == ("", "fifo", "")
    assert (r[4]["dir"], r[4]["name"]) == ("", "e")

    # Record numbers run without gaps and every record decodes.
    recs = mount.records()
    assert [x["recno"] for x in recs] == list(range(1, len(recs) + 1))


def test_another_user_owns_what_it_creates_and_is_named_in_records(tmp_path):
    m = Mount(tmp_path, options=["-o", "allow_other"]).start()
    try:
        os.chmod(m.mnt, 0o777)
        assert [(x["op"], x["path"]) for x in m.new_records()] == [("SETATTR", "")]
        # It enters the mount as root: pytest's temporary directories are
        # closed to other users.
        script = ("import os\n"
                  "os.chdir(os.environ['MNT']); os.setgid(4321); os.setuid(1234)\n"
                  "fd = os.open('u.txt', os.O_WRONLY | os.O_CREAT, 0o640)\n"
                  "os.write(fd, b'mine'); os.close(fd)\n"
                  "os.mkdir('udir')\n")
        subprocess.run([sys.executable, "-c", script], env=dict(os.environ, MNT=str(m.mnt)),
                       check=True, timeout=30)
        st = os.stat(m.backing / "u.txt")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o640)
        assert os.stat(m.backing / "udir").st_uid == 1234
        r = m.new_records()
        assert ops(r) == ["CREATE", "CLOSE", "MKDIR"]
        for rec in r:
            assert (rec["fsuid"], rec["fsgid"]) == (1234, 4321)
        assert (r[0]["uid"], r[0]["gid"]) == (1234, 4321)
        assert (r[1]["open_uid"], r[1]["new"]["size"]) == (1234, 4)
    finally:
        m.stop()


def test_open_trunc_and_one_close_per_written_handle(mount):
    write_file(mount.p("f"), b"abcdef")
    mount.new_records()

    write_file(mount.p("f"), b"xy")  # O_TRUNC of an existing file
    r = mount.new_records()
    assert ops(r) == ["SETATTR", "CLOSE"]
    assert r[0]["valid"] & 8 and r[0]["size"] == 0 and r[0]["old"]["size"] == 6
    assert r[1]["new"]["size"] == 2

    # Two handles written, one opened for writing but never written, one
    # read: a CLOSE for each written handle only. With passthrough izofs
    # does not see which handle wrote: the first close of a handle open
    # for writing tells the change, once.
    a = os.open(mount.p("f"), os.O_WRONLY)
    b = os.open(mount.p("f"), os.O_RDWR | os.O_APPEND)
    idle = os.open(mount.p("f"), os.O_WRONLY)
    os.write(a, b"1")
    os.write(b, b"2")
    os.write(a, b"3")
    assert os.pread(b, 10, 0) == b"132"
    for fd in (a, b, idle):
        os.close(fd)
    assert mount.p("f").read_bytes() == b"132"
    r = mount.new_records()
    if mount.passthrough:
        assert ops(r) == ["CLOSE"]
        assert r[0]["new"]["size"] == 3 and r[0]["old"]["size"] == 2
    else:
        assert ops(r) == ["CLOSE", "CLOSE"]
        assert [x["new"]["size"] for x in r] == [3, 3]

    # Opened for writing, changed only by a SETATTR through the mount
    # (`touch` opens for writing): no CLOSE, in both ways.
    fd = os.open(mount.p("f"), os.O_WRONLY)
    os.chmod(mount.p("f"), 0o640)
    os.close(fd)
    assert ops(mount.new_records()) == ["SETATTR"]

    # ftruncate through a handle is a SETATTR; its writes a CLOSE at close.
    fd = os.open(mount.p("f"), os.O_RDWR)
    os.ftruncate(fd, 1)
    os.write(fd, b"Z")
    os.fsync(fd)
    os.close(fd)
    r = mount.new_records()
    assert ops(r) == ["SETATTR", "CLOSE"] and r[0]["size"] == 1
    assert mount.p("f").read_bytes() == b"Z"


def test_large_files_cross_whole_in_both_directions(mount):
    """Data travels in 512 KiB requests spliced to and from the backing
    file: several of them, with an odd tail, arrive whole, a reader sees a
    write through the mount at once, and one CLOSE tells the written size."""
    data = os.urandom(5 * 2**20 + 123)
    fd = os.open(mount.p("big.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, len(data), 2**20):
            assert os.write(fd, data[off:off + 2**20]) == len(data[off:off + 2**20])
    finally:
        os.close(fd)
    assert (mount.backing / "big.bin").read_bytes() == data
    r = mount.new_records()
    assert ops(r) == ["CREATE", "CLOSE"] and r[1]["new"]["size"] == len(data)
    assert r[1]["open_uid"] == os.getuid()

    beside = os.urandom(3 * 2**20 + 4567)
    (mount.backing / "beside.bin").write_bytes(beside)
    with open(mount.p("beside.bin"), "rb", buffering=0) as f:
        assert f.read() == beside  # sequential: readahead
    with open(mount.p("big.bin"), "rb", buffering=0) as reader:
        assert reader.read(len(data) + 1) == data
        patch = os.urandom(700_000)
        fd = os.open(mount.p("big.bin"), os.O_WRONLY)
        try:
            os.pwrite(fd, patch, 2**20 + 5)
            assert os.pread(reader.fileno(), len(patch), 2**20 + 5) == patch
        finally:
            os.close(fd)
    r = mount.new_records()
    assert ops(r) == ["CLOSE"] and r[0]["new"]["size"] == len(data)


def test_file_data_way_is_said_at_the_start(mount):
    line = mount.file_data_line()
    if "no_passthrough" in mount.options:
        assert "through izofs (-o no_passthrough)" in line
    elif PASSTHROUGH_POSSIBLE:
        assert mount.passthrough, line
    else:
        assert "through izofs" in line


def test_data_written_and_mapped_is_journaled_and_reads_back(mount):
    """Written with write(2), then through a shared mapping: each time a
    CLOSE with the new size at close, and the same bytes through the mount
    and in the backing directory."""
    data = os.urandom(3 * 2**20 + 17)
    write_file(mount.p("w.bin"), data)
    r = mount.new_records()
    assert ops(r) == ["CREATE", "CLOSE"] and r[1]["new"]["size"] == len(data)
    assert mount.p("w.bin").read_bytes() == data
    assert (mount.backing / "w.bin").read_bytes() == data

    patch = os.urandom(3000)  # across the old end of the file
    fd = os.open(mount.p("w.bin"), os.O_RDWR)
    try:
        os.ftruncate(fd, len(data) + 4096)
        with mmap.mmap(fd, len(data) + 4096) as m:
            m[len(data) - 100:len(data) - 100 + len(patch)] = patch
    finally:
        os.close(fd)
    expected = data[:-100] + patch + bytes(4096 + 100 - len(patch))
    assert len(expected) == len(data) + 4096
    r = mount.new_records()
    assert ops(r) == ["SETATTR", "CLOSE"] and r[1]["new"]["size"] == len(expected)
    assert mount.p("w.bin").read_bytes() == expected
    assert (mount.backing / "w.bin").read_bytes() == expected
    assert os.stat(mount.p("w.bin")).st_size == len(expected)


@pytest.mark.skipif(not PASSTHROUGH_POSSIBLE,
                    reason="FUSE passthrough needs Linux 6.9 and root")
def test_file_data_goes_straight_to_the_backing_file(tmp_path):
    """With passthrough the mount's pages are the backing file's own: what
    a mapping of the mount holds is in the backing file before any msync,
    and a change beside the mount reads at once through an open handle."""
    m = Mount(tmp_path).start()
    try:
        assert m.passthrough, m.file_data_line()
        write_file(m.p("f"), b"a" * 8192)
        fd = os.open(m.p("f"), os.O_RDWR)
        try:
            assert os.pread(fd, 4, 0) == b"aaaa"
            with mmap.mmap(fd, 8192) as mapped:
                mapped[0:4] = b"MMAP"
                assert (m.backing / "f").read_bytes()[:4] == b"MMAP"
            with open(m.backing / "f", "r+b") as beside:
                beside.seek(4096)
                beside.write(b"SIDE")
            assert os.pread(fd, 4, 4096) == b"SIDE"
        finally:
            os.close(fd)
        # Python's mmap holds a duplicate of the descriptor, whose close
        # (a FLUSH) tells the write through the mapping.
        r = m.new_records()
        assert ops(r) == ["CREATE", "CLOSE", "CLOSE", "CLOSE"]
        assert r[2]["old"] == r[1]["new"] and r[3]["old"] == r[2]["new"]
        assert r[3]["new"]["size"] == 8192
    finally:
        m.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a mount's readahead")
def test_root_mount_reads_ahead_512_kib(mount):
    st = os.stat(mount.mnt)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    assert bdi.read_text().strip() == "512"


def test_concurrent_writers_produce_whole_records(mount):
    def worker(n):
        for i in range(40):
            write_file(mount.p(f"t{n}-{i}"), os.urandom(1000))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = mount.new_records()
    assert sorted(x["path"] for x in r if x["op"] == "CREATE") == \
        sorted(f"t{n}-{i}" for n in range(8) for i in range(40))
    assert len(by_op(r, "CLOSE")) == 320
    r = subprocess.run([str(KMLPRINT), str(mount.kml)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""


def test_inodes_stay_within_the_open_file_limit(tmp_path):
    """izofs holds a descriptor per inode the kernel knows; with a limit of
    256 (and no CAP_SYS_RESOURCE to raise it) it makes the kernel forget
    the least recently used ones instead of failing with EMFILE."""
    m = Mount(tmp_path, wrapper=["setpriv", "--bounding-set", "-sys_resource"],
              open_files=256).start()
    try:
        for d in range(10):
            os.mkdir(m.p(f"d{d}"))
            for i in range(200):
                write_file(m.p(f"d{d}/f{i}"), f"{d}/{i}".encode())
        seen = 0
        for dirpath, _dirs, files in os.walk(m.mnt):
            for name in files:
                os.stat(os.path.join(dirpath, name))
                seen += 1
        assert all(m.p(f"d{d}/f{i}").read_bytes() == f"{d}/{i}".encode()
                   for d in range(10) for i in range(0, 200, 7))
        assert seen >= 2000
        assert len(os.listdir(f"/proc/{m.proc.pid}/fd")) < 256
        r = m.new_records()
        assert len(by_op(r, "CREATE")) == 2000 and len(by_op(r, "CLOSE")) == 2000
    finally:
        m.stop()


def test_internal_paths_and_intersync_xattrs_are_not_journaled(mount):
    internal = mount.p(".intermezzo")
    assert ".intermezzo" in os.listdir(mount.mnt)
    assert sorted(os.listdir(internal / FSET)) == ["ROOT", "kml", "kml.complete", "last_rcvd",
                                                   "uuid"]
    os.mkdir(internal / "scratch")
    write_file(internal / "scratch" / "x", b"internal")
    os.rename(internal / "scratch" / "x", internal / "scratch" / "y")
    os.setxattr(internal / "scratch" / "y", "user.colour", b"red")
    write_file(mount.p("plain"), b"p")
    mount.new_records()
    os.setxattr(mount.p("plain"), "user.intersync.absent", b"0" * 64)
    os.removexattr(mount.p("plain"), "user.intersync.absent")
    assert mount.new_records() == []

    # Out of .intermezzo into view it appears; back in, it is gone.
    os.rename(internal / "scratch" / "y", mount.p("y"))
    r = mount.new_records()
    assert ops(r) == ["CREATE", "CLOSE"] and r[0]["path"] == "y" and r[1]["new"]["size"] == 8
    os.rename(mount.p("y"), internal / "scratch" / "z")
    r = mount.new_records()
    assert ops(r) == ["UNLINK"] and (r[0]["dir"], r[0]["name"]) == ("", "y")
    os.unlink(internal / "scratch" / "z")
    os.rmdir(internal / "scratch")
    assert mount.new_records() == []


def test_virtual_xattrs_of_the_root(mount):
    assert os.getxattr(mount.mnt, "user.izofs.fileset") == FSET.encode()
    assert os.getxattr(mount.mnt, "user.izofs.backing") == str(mount.backing.resolve()).encode()
    assert not any(n.startswith("user.izofs.") for n in os.listxattr(mount.mnt))
    with pytest.raises(OSError) as e:
        os.getxattr(mount.mnt, "user.izofs.replicator")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.setxattr(mount.mnt, "user.izofs.fileset", b"other")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.setxattr(mount.mnt, "user.izofs.replicator", b"relative/socket")
    assert e.value.errno == errno.EINVAL
    # Not stored: the backing root has none of them.
    assert not any(n.startswith("user.izofs.") for n in os.listxattr(mount.backing))
    assert mount.new_records() == []


# ------------------------------------------------------------------ replicator

# Registers as the replicator from a second thread (FUSE names the thread,
# izofs must map it to this process), changes things from both threads,
# says "done" and waits for stdin to close. With "unregister", it then
# unregisters and makes one more change, and says "after".
REPLICATOR_WORK = r"""
import os, sys, threading
mnt, socket_path, mode = sys.argv[1:4]
t = threading.Thread(target=os.setxattr, args=(mnt, "user.izofs.replicator", socket_path.encode()))
t.start(); t.join()
assert os.getxattr(mnt, "user.izofs.replicator") == socket_path.encode()
def changes(tag):
    p = os.path.join(mnt, "rep-" + tag)
    with open(p, "wb") as f:
        f.write(b"replicated")
    os.mkdir(p + ".d")
    os.rename(p, p + ".d/moved")
    os.setxattr(p + ".d/moved", "user.colour", b"green")
    os.chmod(p + ".d/moved", 0o600)
w = threading.Thread(target=changes, args=("thread",))
w.start(); w.join()
changes("main")
print("done", flush=True)
if mode == "unregister":
    os.setxattr(mnt, "user.izofs.replicator", b"")
    open(os.path.join(mnt, "after-unregister"), "wb").close()
    print("after", flush=True)
sys.stdin.read()
"""


def test_registered_replicator_is_not_journaled(mount, tmp_path):
    sock = str(tmp_path / "control.sock")
    rep = subprocess.Popen([sys.executable, "-c", REPLICATOR_WORK, str(mount.mnt), sock, "stay"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = Lines(rep.stdout)
    try:
        assert out.next() == "done\n"
        # Another process's changes are journaled meanwhile.
        write_file(mount.p("mine"), b"user data")
        assert os.path.exists(mount.backing / "rep-main.d" / "moved")
        r = mount.new_records()
        assert ops(r) == ["CREATE", "CLOSE"] and all(x["path"] == "mine" for x in r)
        assert os.getxattr(mount.mnt, "user.izofs.replicator") == sock.encode()
    finally:
        rep.stdin.close()
        rep.wait(timeout=30)
    assert rep.returncode == 0
    # Once it has exited, its registration is gone.
    wait_for(lambda: _no_replicator(mount.mnt), what="the exited replicator to be forgotten")
    write_file(mount.p("later"), b"x")
    assert ops(mount.new_records()) == ["CREATE", "CLOSE"]


def _no_replicator(mnt):
    try:
        os.getxattr(mnt, "user.izofs.replicator")
        return False
    except OSError as e:
        return e.errno == errno.ENODATA


def test_empty_value_unregisters_the_replicator(mount, tmp_path):
    sock = str(tmp_path / "control.sock")
    rep = subprocess.Popen([sys.executable, "-c", REPLICATOR_WORK, str(mount.mnt), sock,
                            "unregister"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    out = Lines(rep.stdout)
    try:
        assert out.next() == "done\n"
        assert out.next() == "after\n"
        r = mount.new_records()
        assert ops(r) == ["CREATE"] and r[0]["path"] == "after-unregister"
        assert r[0]["pid"] == rep.pid
    finally:
        rep.stdin.close()
        rep.wait(timeout=30)
    assert rep.returncode == 0


# ------------------------------------------------------------- data on demand

# Stands in for the intersync daemon: registers as the replicator, listens
# on the control socket and answers each fetch according to `mode`:
#   ok      write the real bytes (from STORE/<path>) to a temporary file in
#           BACKING, rename it over the placeholder, answer {"ok":true}
#   error   answer {"ok":false,"error":"no such content"}
#   silent  never answer
#   gated   as ok, but only after a line arrives on stdin
# Before answering it reads the placeholder through the mount, which must
# not wait for a fetch (it is the replicator), and reports what it read.
# Every request goes to stdout as one JSON line.
DAEMON_STANDIN = r"""
import json, os, socket, sys
mnt, backing, store, socket_path, mode = sys.argv[1:6]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(socket_path)
srv.listen(16)
os.setxattr(mnt, "user.izofs.replicator", socket_path.encode())
print(json.dumps({"ready": True}), flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        line = conn.makefile("rb").readline()
        req = json.loads(line)
        with open(os.path.join(mnt, req["path"]), "rb") as f:
            seen = f.read()
        print(json.dumps({"request": req, "zeros_seen": seen == bytes(len(seen))}), flush=True)
        if mode == "silent":
            conn.makefile("rb").read()
            continue
        if mode == "error":
            conn.sendall(b'{"ok":false,"error":"no such content"}\n')
            continue
        if mode == "gated":
            sys.stdin.readline()
        target = os.path.join(backing, req["path"])
        tmp = os.path.join(os.path.dirname(target), ".fetching")
        with open(os.path.join(store, req["path"]), "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        st = os.stat(target)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, target)
        conn.sendall(b'{"ok":true}\n')
"""


class DaemonStandin:
    def __init__(self, mount, tmp, mode):
        self.store = Path(tmp) / "store"
        self.store.mkdir(exist_ok=True)
        self.sock = Path(tmp) / f"{mode}.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON_STANDIN, str(mount.mnt), str(mount.backing),
             str(self.store), str(self.sock), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.out = Lines(self.proc.stdout)
        assert json.loads(self.out.next()) == {"ready": True}

    def next_request(self):
        return json.loads(self.out.next())

    def release_one(self):
        """Lets a gated fetch answer."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()


def make_placeholder(mount, store, rel, content):
    """What the daemon leaves before fetching: right size and mtime, sparse,
    `user.intersync.absent` naming the content."""
    p = mount.backing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.truncate(len(content))
    os.setxattr(p, "user.intersync.absent", hashlib.sha256(content).hexdigest().encode())
    os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (store / rel).parent.mkdir(parents=True, exist_ok=True)
    (store / rel).write_bytes(content)


def test_opening_a_placeholder_fetches_its_content_first(mount, tmp_path):
    daemon = DaemonStandin(mount, tmp_path, "gated")
    try:
        content = os.urandom(300_000)
        make_placeholder(mount, daemon.store, "sub/dir/data.bin", content)
        assert os.stat(mount.p("sub/dir/data.bin")).st_size == len(content)

        result = {}

        def reader():
            try:
                result["data"] = mount.p("sub/dir/data.bin").read_bytes()
            except OSError as e:
                result["error"] = e

        t = threading.Thread(target=reader)
        t.start()
        req = daemon.next_request()
        assert req["request"] == {"cmd": "fetch", "fileset": FSET, "path": "sub/dir/data.bin"}
        assert req["zeros_seen"], "the replicator reads the placeholder itself, unfetched"
        # While that open waits, everything else is served.
        assert t.is_alive()
        write_file(mount.p("meanwhile"), b"still served")
        assert "meanwhile" in os.listdir(mount.mnt)
        daemon.release_one()
        t.join(timeout=30)
        assert result.get("data") == content, result.get("error")
        assert "user.intersync.absent" not in os.listxattr(mount.backing / "sub/dir/data.bin")
        assert mount.p("sub/dir/data.bin").read_bytes() == content  # no second fetch needed

        # Truncating a placeholder to a non-zero size fetches it too; to zero
        # it just empties it.
        make_placeholder(mount, daemon.store, "t.bin", b"0123456789")
        make_placeholder(mount, daemon.store, "z.bin", b"abcdef")
        mount.new_records()
        daemon.release_one()
        os.truncate(mount.p("t.bin"), 3)
        assert daemon.next_request()["request"]["path"] == "t.bin"
        assert (mount.backing / "t.bin").read_bytes() == b"012"
        os.truncate(mount.p("z.bin"), 0)
        assert (mount.backing / "z.bin").read_bytes() == b""
        assert "user.intersync.absent" not in os.listxattr(mount.backing / "z.bin")
        r = mount.new_records()
        assert ops(r) == ["SETATTR", "SETATTR"]
        assert [(x["path"], x["size"]) for x in r] == [("t.bin", 3), ("z.bin", 0)]
    finally:
        daemon.stop()


def test_open_fails_with_eio_when_the_fetch_fails(tmp_path):
    m = Mount(tmp_path, options=["-o", "fetch_timeout=1"]).start()
    daemon = None
    try:
        store = tmp_path / "store"
        store.mkdir()
        make_placeholder(m, store, "nobody.bin", b"unfetched")
        with pytest.raises(OSError) as e:
            m.p("nobody.bin").read_bytes()
        assert e.value.errno == errno.EIO
        wait_for(lambda: "nobody.bin: content not fetched: no replicator" in m.log_text(),
                 what="izofs to log the failed fetch")

        for mode, said in (("error", "no such content"), ("silent", "no answer")):
            daemon = DaemonStandin(m, tmp_path, mode)
            make_placeholder(m, daemon.store, f"{mode}.bin", b"never arrives")
            with pytest.raises(OSError) as e:
                open(m.p(f"{mode}.bin"), "rb")
            assert e.value.errno == errno.EIO
            assert daemon.next_request()["request"]["path"] == f"{mode}.bin"
            wait_for(lambda: f"{mode}.bin: content not fetched:" in m.log_text()
                     and said in m.log_text(), what=f"the {mode} fetch to be logged")
            daemon.stop()
            daemon = None
    finally:
        if daemon:
            daemon.stop()
        m.stop()


# ---------------------------------------------------------- command line

def _daemon_env(tmp_path):
    """Daemonized, izofs's stderr is gone: sanitizer reports go to files."""
    env = dict(os.environ)
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env[var] = env.get(var, "") + f":log_path={tmp_path / 'sanitizer'}"
    return env


def _check_daemon_exits_cleanly(tmp_path, pid):
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="izofs to exit after the unmount")
    for report in tmp_path.glob("sanitizer*"):
        check_clean_log(report.read_text(errors="replace"), f"izofs ({report.name})")


def _kml_ops(backing):
    r = subprocess.run([str(KMLPRINT), "--json", str(backing / ".intermezzo" / FSET / "kml")],
                       capture_output=True, text=True, timeout=30)
    return [(json.loads(l)["op"], json.loads(l)["path"]) for l in r.stdout.splitlines()]


def test_mount_helper_runs_izofs_found_on_path(tmp_path):
    """What `mount -t fuse.izofs` runs: mount.fuse3 finds izofs on PATH."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    env = _daemon_env(tmp_path)
    env["PATH"] = f"{IZOFS.parent}:{env['PATH']}"
    r = subprocess.run(["mount.fuse3", str(backing), str(mnt), "-t", "fuse.izofs", "-o",
                        f"rw,fileset={FSET}"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    pid = None
    try:
        assert os.path.ismount(mnt)
        fields = next(l.split() for l in Path("/proc/mounts").read_text().splitlines()
                      if l.split()[1] == str(mnt))
        assert (fields[0], fields[2]) == (str(backing), "fuse.izofs")
        pid = _izofs_pid(mnt)
        write_file(mnt / "via-helper", b"x")
        assert _kml_ops(backing) == [("CREATE", "via-helper"), ("CLOSE", "via-helper")]
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
    _check_daemon_exits_cleanly(tmp_path, pid)


def test_mount_t_fuse_izofs(tmp_path):
    """mount(8) itself. It gives its helpers a fixed PATH, so this runs in a
    private mount namespace where /usr/local/sbin holds izofs; the mount,
    a write through it and the unmount all happen in there."""
    backing, mnt, bindir = tmp_path / "backing", tmp_path / "mnt", tmp_path / "bin"
    for d in (backing, mnt, bindir):
        d.mkdir()
    (bindir / "izofs").symlink_to(IZOFS.resolve())  # INTERSYNC_BUILD may be relative
    script = (f"set -e\n"
              f"mount --bind {bindir} /usr/local/sbin\n"
              f"mount -t fuse.izofs {backing} {mnt} -o fileset={FSET}\n"
              f"grep -q ' {mnt} fuse.izofs ' /proc/mounts\n"
              f"echo hello > {mnt}/via-mount-t\n"
              f"fusermount3 -u {mnt}\n")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       env=_daemon_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _kml_ops(backing) == [("CREATE", "via-mount-t"), ("CLOSE", "via-mount-t")]
    try:
        pid = _izofs_pid(mnt)
    except AssertionError:
        pid = None  # exited already
    if pid:
        _check_daemon_exits_cleanly(tmp_path, pid)
    for report in tmp_path.glob("sanitizer*"):
        check_clean_log(report.read_text(errors="replace"), f"izofs ({report.name})")


def _izofs_pid(mnt):
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"izofs") and str(mnt).encode() in args:
            return int(d.name)
    raise AssertionError(f"no izofs process serving {mnt}")


def test_refusals_name_the_problem(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    backing = tmp_path / "backing"
    backing.mkdir()
    not_dir = tmp_path / "file"
    not_dir.write_text("x")

    def run(*args):
        return subprocess.run([str(IZOFS), *map(str, args)], capture_output=True, text=True,
                              timeout=30)

    r = run(backing, mnt)
    assert r.returncode != 0 and "missing -o fileset=FSET" in r.stderr
    r = run("-o", f"fileset={FSET}", not_dir, mnt)
    assert r.returncode != 0 and f"{not_dir}: not a directory" in r.stderr
    r = run("-o", f"fileset={FSET}", tmp_path / "absent", mnt)
    assert r.returncode != 0 and "No such file or directory" in r.stderr
    r = run("-o", "fileset=a/b", backing, mnt)
    assert r.returncode != 0 and "not a fileset name" in r.stderr
    assert not os.path.ismount(mnt)
    assert not (backing / ".intermezzo").exists()


def test_fileset_directory_is_prepared_as_mkizofs_does(mount):
    d = mount.backing / ".intermezzo" / FSET
    assert os.readlink(d / "ROOT") == "../.."
    assert (d / "kml").stat().st_size == 0 and (d / "last_rcvd").exists()
    assert len((d / "uuid").read_text().strip()) == 36
    # Begun on an empty backing directory: the log is its whole history.
    assert (d / "kml.complete").stat().st_size == 0


def test_kml_complete_only_for_a_log_begun_on_an_empty_fileset(tmp_path):
    m = Mount(tmp_path)
    d = m.backing / ".intermezzo" / FSET
    d.mkdir(parents=True)
    (d / "kml.complete").write_bytes(b"")  # left from an earlier log
    (m.backing / "there-before.txt").write_text("not in any log\n")
    m.start()
    try:
        assert (d / "kml").exists() and not (d / "kml.complete").exists()
        write_file(m.p("new.txt"), b"x")
    finally:
        m.stop()
    # An existing log keeps what it had: no marker appears on a remount.
    m.start()
    try:
        assert not (d / "kml.complete").exists()
        assert [r["path"] for r in m.records()] == ["new.txt", "new.txt"]
    finally:
        m.stop()
