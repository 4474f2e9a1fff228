"""Fault injection with real daemons: kill -9 in the middle of a two-way
workload, kill -9 at the exact moment between making the server's (or a
write-back client's) journal durable and committing its index, a network partition in the middle of a
large download, a client whose disk fills up, a server whose disk fills up
while a write-back client reintegrates, and a local write in the very moment
the daemon puts an update in place. Every wait is on a
condition with a deadline; the only sleeps are bounded pacing of the
synthetic workload."""

import ctypes
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (INTERSYNCD, KMLPRINT, PLAIN_HTTP, Daemon, assert_same_tree, token_sha256,
                      tree_snapshot, trees_equal, wait_for)

FSET = "docs"

# --------------------------------------------------------------------------
# helpers


_libc = ctypes.CDLL(None, use_errno=True)


def rename_noreplace(src, dst):
    """renameat2(RENAME_NOREPLACE): puts a complete file at `dst` only if
    nothing is there, so a writer never overwrites what replication brought
    in (which would be a legitimate, knowing overwrite)."""
    r = _libc.renameat2(-100, os.fsencode(str(src)), -100, os.fsencode(str(dst)), 1)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def conflict_copies(path):
    """NAME.conflict-<host>-<time>[-n].ext beside `path`."""
    path = Path(path)
    name = path.name
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    prefix = stem + ".conflict-"
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(prefix) and p.name.endswith(ext))


def is_conflict_copy(name):
    return ".conflict-" in name


def settled(cluster):
    """Nothing queued anywhere and every live client equal to the server."""
    for c in cluster.clients:
        st = c.fileset(FSET)
        if st["state"] != "connected" or st.get("local_pending", 0) or st["records_pending"]:
            return False
    return all(trees_equal(cluster.server_root, c.root) for c in cluster.clients)


def wait_settled(cluster, timeout=60, what="cluster to settle"):
    try:
        wait_for(lambda: settled(cluster), timeout=timeout, what=what, interval=0.05)
    except AssertionError:
        details = []
        for c in cluster.clients:
            st = c.status_or_none()
            details.append(f"{c.dir.name}: {st}")
        raise AssertionError(f"{what}: not settled after {timeout}s\n" + "\n".join(details))
    for c in cluster.clients:
        assert_same_tree(cluster.server_root, c.root)


def start_cluster_node(cluster, d):
    """(Re)starts a daemon of the cluster after kill -9."""
    if d is cluster.server:
        return cluster.start_server()  # keeps the port the clients know
    d.start()
    return d


# --------------------------------------------------------------------------
# 1. kill -9 during a two-way workload


class Writer:
    """A user writing in one tree. Owns the directory own-<name>/ (creates,
    rewrites, appends, renames within it, deletes files it created) and once
    per round creates shared/rNN.txt, which the other writers create too, so
    every round forces create/create conflicts. Every content is unique and
    recorded with where it was written."""

    def __init__(self, name, root, staging, seed):
        self.name = name
        self.root = Path(root)
        self.own = self.root / f"own-{name}"
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.rnd = random.Random(seed)
        self.files = {}     # name in own dir -> content it must have now
        self.created = set()  # names this writer created during the rounds
        self.shared = {}    # shared relpath -> content this writer put there
        self.history = []   # (round, op, relpath, content) of every write
        self.counter = 0
        self.error = None

    def content(self, rnd_no):
        self.counter += 1
        line = f"{self.name} write #{self.counter} round {rnd_no}\n".encode()
        if self.rnd.random() < 0.04:
            return line * (400_000 // len(line))  # a few larger files: longer transfers
        return line * self.rnd.randint(1, 150)

    def seed_files(self, count):
        self.own.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            data = self.content(0)
            (self.own / f"base-{i:03d}.txt").write_bytes(data)
            self.files[f"base-{i:03d}.txt"] = data
            self.history.append((0, "create", f"own-{self.name}/base-{i:03d}.txt", data))

    def step(self, rnd_no):
        ops = ["create"] * 3 + ["rewrite"] * 3 + ["append"] + ["rename"]
        if len(self.created) > 3:
            ops.append("delete")
        op = self.rnd.choice(ops)
        if op == "create":
            name = f"{self.name}-{self.counter + 1:05d}.txt"
            data = self.content(rnd_no)
            (self.own / name).write_bytes(data)
            self.files[name] = data
            self.created.add(name)
        elif op == "rewrite":
            name = self.rnd.choice(sorted(self.files))
            data = self.content(rnd_no)
            (self.own / name).write_bytes(data)
            self.files[name] = data
        elif op == "append":
            name = self.rnd.choice(sorted(self.files))
            extra = self.content(rnd_no)
            with open(self.own / name, "ab") as f:
                f.write(extra)
            data = self.files[name] + extra
            self.files[name] = data
        elif op == "rename":
            old = self.rnd.choice(sorted(self.files))
            name = f"{self.name}-{self.counter + 1:05d}-mv.txt"
            self.counter += 1
            os.rename(self.own / old, self.own / name)
            data = self.files.pop(old)
            self.files[name] = data
            if old in self.created:
                self.created.discard(old)
            self.created.add(name)
        else:
            name = self.rnd.choice(sorted(self.created))
            (self.own / name).unlink()
            data = self.files.pop(name)
            self.created.discard(name)
        self.history.append((rnd_no, op, f"own-{self.name}/{name}", data))

    def write_shared(self, rnd_no):
        rel = f"shared/r{rnd_no:02d}.txt"
        data = f"{self.name} shared r{rnd_no:02d} #{self.counter}\n".encode() * 20
        self.counter += 1
        tmp = self.staging / f"s{rnd_no}"
        tmp.write_bytes(data)
        try:
            rename_noreplace(tmp, self.root / rel)
        except FileExistsError:
            tmp.unlink()  # another writer's version already arrived here
            self.history.append((rnd_no, "shared-skipped", rel, b""))
            return
        self.shared[rel] = data
        self.history.append((rnd_no, "shared", rel, data))

    def run_round(self, rnd_no, ops):
        try:
            shared_at = self.rnd.randrange(ops)
            for i in range(ops):
                if i == shared_at:
                    self.write_shared(rnd_no)
                self.step(rnd_no)
                time.sleep(self.rnd.uniform(0, 0.02))  # pacing only
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def find_content(root, data):
    """Where `data` is in the tree (for failure messages)."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".intermezzo"]
        for n in filenames:
            p = Path(dirpath) / n
            try:
                if p.read_bytes() == data:
                    hits.append(str(p.relative_to(root)))
            except OSError:
                pass
    return hits


def check_nothing_lost(root, writers):
    problems = []
    for w in writers:
        own = Path(root) / f"own-{w.name}"
        for name, data in sorted(w.files.items()):
            p = own / name
            here = p.is_file() and p.read_bytes() == data
            if not here and not any(c.read_bytes() == data for c in conflict_copies(p)):
                problems.append(f"{w.name}: own-{w.name}/{name} lost its last content "
                                f"({data[:50]!r}..., {len(data)} bytes); found at "
                                f"{find_content(root, data)}; now "
                                f"{p.read_bytes()[:60] if p.is_file() else 'missing'!r}")
        extra = sorted(n for n in os.listdir(own) if n not in w.files and not is_conflict_copy(n))
        if extra:
            problems.append(f"{w.name}: files no writer has (resurrected or invented): {extra}")
        for rel, data in sorted(w.shared.items()):
            p = Path(root) / rel
            places = [p] + conflict_copies(p)
            if not any(q.is_file() and q.read_bytes() == data for q in places):
                problems.append(f"{w.name}: its version of {rel} ({data[:40]!r}) is neither "
                                f"the file nor a conflict copy: "
                                f"{[q.name for q in places]}; found at {find_content(root, data)}")
    return problems


def test_kill9_during_two_way_workload(cluster, tmp_path):
    rounds, ops_per_round = 21, 30
    rnd = random.Random(20240601)
    (cluster.server_root / "shared").mkdir()
    cluster.start_server()
    server_w = Writer("server", cluster.server_root, tmp_path / "staging-server", 1)
    server_w.seed_files(30)
    c1 = cluster.add_client(write_back="true")
    c2 = cluster.add_client(write_back="true")
    w1 = Writer("client1", c1.root, tmp_path / "staging-client1", 2)
    w2 = Writer("client2", c2.root, tmp_path / "staging-client2", 3)
    # The clients' own directories start on their own side and travel up.
    wait_for(lambda: (c1.root / "shared").is_dir() and (c2.root / "shared").is_dir(),
             what="initial sync")
    w1.seed_files(30)
    w2.seed_files(30)
    writers = [server_w, w1, w2]
    wait_settled(cluster, what="initial convergence")

    started = time.monotonic()
    for r in range(1, rounds + 1):
        victim = [lambda: cluster.server, lambda: c1, lambda: c2][r % 3]()
        threads = [threading.Thread(target=w.run_round, args=(r, ops_per_round))
                   for w in writers]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.0, 0.35))  # a random moment inside the workload
        victim.kill9()
        start_cluster_node(cluster, victim)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a writer hung"
        for w in writers:
            assert w.error is None, f"writer {w.name} failed: {w.error!r}"
        wait_settled(cluster, timeout=60, what=f"round {r} (killed {victim.dir.name})")
        problems = check_nothing_lost(cluster.server_root, writers)
        assert not problems, f"round {r} (killed {victim.dir.name}):\n" + "\n".join(problems)

    # After all rounds: every tree equal, nothing a user wrote lost anywhere.
    wait_settled(cluster, what="final convergence")
    for root in [cluster.server_root, c1.root, c2.root]:
        problems = check_nothing_lost(root, writers)
        assert not problems, f"in {root}:\n" + "\n".join(problems)
    conflicts = [k for k in tree_snapshot(cluster.server_root) if ".conflict-" in k]
    shared_conflicts = [k for k in conflicts if k.startswith("shared/")]
    own_conflicts = [k for k in conflicts if not k.startswith("shared/")]
    print(f"\n{rounds} rounds in {time.monotonic() - started:.1f}s; "
          f"{len(shared_conflicts)} conflict copies in shared/, "
          f"{len(own_conflicts)} spurious ones in own dirs: {own_conflicts[:10]}")
    # Each round's shared file: one version per writer that managed to create it.
    for r in range(1, rounds + 1):
        rel = f"shared/r{r:02d}.txt"
        makers = [w for w in writers if rel in w.shared]
        versions = [cluster.server_root / rel] + conflict_copies(cluster.server_root / rel)
        assert len(makers) >= 1
        assert len(versions) >= len(makers), (rel, [v.name for v in versions])


# --------------------------------------------------------------------------
# 2. kill -9 between the server's journal and its index
#
# strace stops the daemon at a chosen system call and kills it there
# (`inject=SYSCALL:signal=SIGKILL`, on entry), so the crash lands at the same
# point on every run: with the records written to the journal but before its
# fdatasync, or after the fdatasync at the first write of the index's
# transaction to the SQLite WAL.

CRASH_POINTS = {
    "journal-written-not-synced": ("kml", "fdatasync"),
    "journal-synced-index-not-committed": ("index-wal", "pwrite64"),
}


def kml_records(path):
    r = subprocess.run([str(KMLPRINT), "--json", str(path)], capture_output=True, text=True,
                       timeout=30, check=True)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def what_record_says(rec):
    """A record without what differs between two journalings of one change
    (number, offset, time, writer's pid): equal for a change journaled twice."""
    return json.dumps({k: v for k, v in rec.items()
                       if k not in ("recno", "offset", "time", "pid")}, sort_keys=True)


def index_paths(db, scratch):
    """The paths in the server's index, read from a copy of its SQLite files."""
    scratch.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, scratch / f"index.db{suffix}")
    con = sqlite3.connect(scratch / "index.db")
    try:
        return {row[0] for row in con.execute("SELECT path FROM files")}
    finally:
        con.close()


def kill_at_syscall(pid, path, syscall):
    """Attaches strace to `pid` and its threads: the first `syscall` on `path`
    kills it. Returns once strace is attached."""
    return attach_strace(pid, "-P", str(path), "-e", f"trace={syscall}", "-e",
                         f"inject={syscall}:signal=SIGKILL")


def attach_strace(pid, *args):
    """Attaches strace with `args` to `pid` and its threads; returns once
    every thread is traced."""
    tracer = subprocess.Popen(["strace", "-f", "-p", str(pid), "-o", os.devnull, *args],
                              stderr=subprocess.PIPE, text=True)
    attached = []

    def read_stderr():
        for line in tracer.stderr:
            if "attached" in line:
                attached.append(line)

    threading.Thread(target=read_stderr, daemon=True).start()
    # "Process N attached [with M threads]" once every thread is traced.
    wait_for(lambda: attached or tracer.poll() is not None,
             what="strace to attach")
    assert tracer.poll() is None, f"strace exited {tracer.returncode}"
    return tracer


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill9_between_journal_and_index_journals_each_change_once(cluster, tmp_path, point):
    if shutil.which("strace") is None:
        pytest.skip("strace is missing: it stops the daemon at the crash point")
    root = cluster.server_root
    (root / "old.txt").write_bytes(b"old\n")
    (root / "keep").mkdir()
    (root / "keep" / "moved.txt").write_bytes(b"moved\n")
    (root / "gone.txt").write_bytes(b"gone\n")
    server = cluster.start_server()
    client = cluster.add_client()
    wait_settled(cluster, what="initial replication")
    kml = root / ".intermezzo" / FSET / "kml"
    db = server.state / f"{FSET}.db"
    before = kml_records(kml)

    target = {"kml": kml, "index-wal": Path(f"{db}-wal")}[CRASH_POINTS[point][0]]
    tracer = kill_at_syscall(server.proc.pid, target, CRASH_POINTS[point][1])
    try:
        (root / "new").mkdir()
        (root / "new" / "a.txt").write_bytes(b"a\n" * 1000)
        (root / "b.txt").write_bytes(b"b\n")
        os.rename(root / "keep" / "moved.txt", root / "new" / "moved.txt")
        (root / "old.txt").chmod(0o600)
        (root / "gone.txt").unlink()
        wait_for(lambda: server.proc.poll() is not None, what="the server to be killed at "
                 f"{CRASH_POINTS[point][1]} on {target.name}")
    finally:
        tracer.kill()
        tracer.wait()
    server.kill9()  # reaps it

    # The crash point was hit: records are in the journal that the index does
    # not describe.
    at_kill = kml_records(kml)
    new_paths = {r["path"] for r in at_kill[len(before):] if r["op"] in ("MKDIR", "CREATE")}
    assert new_paths, at_kill[len(before):]
    assert new_paths - index_paths(db, tmp_path / "index-copy"), "the index knew the records"

    server = cluster.start_server()
    wait_settled(cluster, what="convergence after the restart")
    assert_same_tree(root, client.root)

    # Each change is in the journal, so served to clients, exactly once.
    records = kml_records(kml)
    assert records[:len(at_kill)] == at_kill
    said = [what_record_says(r) for r in records]
    twice = [(r["recno"], r["op"], r.get("path") or r.get("src") or r.get("name"))
             for r, s in zip(records, said) if said.count(s) > 1]
    assert not twice, f"journaled twice: {twice}"
    created = [r["path"] for r in records if r["op"] in ("MKDIR", "CREATE")]
    assert sorted(created) == sorted(set(created)), created
    assert client.fileset(FSET)["last_rcvd"] == records[-1]["recno"]
    assert "journaled but the daemon stopped before indexing" in server.log_text()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_write_back_client_killed_between_journal_and_index(cluster, point):
    """The crash points of the server, on a write-back client journaling its
    own changes: after the restart every change reaches the server once,
    without a conflict or a copy."""
    if shutil.which("strace") is None:
        pytest.skip("strace is missing: it stops the daemon at the crash point")
    (cluster.server_root / "old.txt").write_bytes(b"old\n")
    (cluster.server_root / "gone.txt").write_bytes(b"gone\n")
    cluster.start_server()
    client = cluster.add_client(write_back="true")
    wait_settled(cluster, what="initial replication")
    root = client.root
    kml = root / ".intermezzo" / FSET / "kml"
    db = client.state / f"{FSET}.db"
    target = {"kml": kml, "index-wal": Path(f"{db}-wal")}[CRASH_POINTS[point][0]]
    tracer = kill_at_syscall(client.proc.pid, target, CRASH_POINTS[point][1])
    try:
        (root / "new").mkdir()
        (root / "new" / "a.txt").write_bytes(b"a\n" * 1000)
        (root / "old.txt").write_bytes(b"changed\n")
        os.rename(root / "gone.txt", root / "new" / "moved.txt")
        wait_for(lambda: client.proc.poll() is not None, what="the client to be killed at "
                 f"{CRASH_POINTS[point][1]} on {target.name}")
    finally:
        tracer.kill()
        tracer.wait()
    client.kill9()
    # The crash point was hit with the changes written to the client's journal.
    assert any(r["op"] == "MKDIR" and r["path"] == "new" for r in kml_records(kml))
    client.start()
    wait_settled(cluster, what="convergence after the restart")
    snap = tree_snapshot(cluster.server_root)
    assert (cluster.server_root / "old.txt").read_bytes() == b"changed\n"
    assert (cluster.server_root / "new" / "a.txt").read_bytes() == b"a\n" * 1000
    assert (cluster.server_root / "new" / "moved.txt").read_bytes() == b"gone\n"
    assert not (cluster.server_root / "gone.txt").exists()
    assert not [k for k in snap if ".conflict-" in k], snap
    assert cluster.server.fileset(FSET)["conflicts"] == 0


def test_a_rename_whose_answer_a_crash_lost_is_the_base_of_the_next_change(cluster):
    """A write-back client's RENAME is journaled by the server, which dies
    before it commits its index (and its memory of who made the change) or
    answers. The client sends the RENAME again and then deletes the file:
    the delete is based on the rename, so no conflict brings the file back."""
    if shutil.which("strace") is None:
        pytest.skip("strace is missing: it stops the daemon at the crash point")
    (cluster.server_root / "a.txt").write_text("a\n")
    server = cluster.start_server()
    client = cluster.add_client(write_back="true")
    wait_settled(cluster, what="initial replication")
    kml = cluster.server_root / ".intermezzo" / FSET / "kml"
    wal = Path(f"{server.state / FSET}.db-wal")
    tracer = kill_at_syscall(server.proc.pid, wal, "pwrite64")
    try:
        (client.root / "a.txt").rename(client.root / "b.txt")
        wait_for(lambda: server.proc.poll() is not None,
                 what="the server to be killed as it commits its index")
    finally:
        tracer.kill()
        tracer.wait()
    server.kill9()  # reaps it
    assert kml_records(kml)[-1]["op"] == "RENAME", "the crash came before the RENAME was journaled"

    cluster.start_server()
    wait_settled(cluster, what="convergence after the restart")
    (client.root / "b.txt").unlink()
    wait_settled(cluster, what="the delete to travel")
    assert not (cluster.server_root / "b.txt").exists(), "the deleted file came back"
    assert cluster.server.fileset(FSET)["conflicts"] == 0


# --------------------------------------------------------------------------
# 3. network partition during a large transfer


def run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


class NetnsDaemon(Daemon):
    def __init__(self, *args, netns, **kwargs):
        super().__init__(*args, **kwargs)
        self.netns = netns

    def start(self, wait=True):
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns,
                                      str(INTERSYNCD), "-c", str(self.config)],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: self.proc.poll() is not None or self.status_or_none(),
                     timeout=20, what=f"{self.dir.name} to answer status")
            if self.proc.poll() is not None:
                raise AssertionError(f"intersyncd {self.dir.name} exited "
                                     f"{self.proc.returncode}:\n{self.log.read_text()}")
        return self


NS = f"isync-fault-{os.getpid()}"
VETH_HOST, VETH_NS = f"isf{os.getpid() % 100000}h", f"isf{os.getpid() % 100000}n"
HOST_ADDR, NS_ADDR = "10.213.77.1", "10.213.77.2"


def test_partition_during_large_transfer(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    r = run("ip", "netns", "add", NS, check=False)
    if r.returncode != 0:
        print(f"SKIP: ip netns add failed: {r.stderr.strip()}")
        pytest.skip(f"ip netns add failed: {r.stderr.strip()}")
    server = client = None
    try:
        run("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        run("ip", "link", "set", VETH_NS, "netns", NS)
        run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", VETH_HOST)
        run("ip", "link", "set", VETH_HOST, "up")
        run("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_ADDR}/24", "dev", VETH_NS)
        run("ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "up")
        # Pace the server's sending side so the download is observably in
        # progress (256 MiB at 400 Mbit/s: about 5 s).
        run("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", VETH_NS, "root", "tbf",
            "rate", "400mbit", "burst", "1mb", "limit", "16mb")

        size = 256 << 20
        server_root = tmp_path / "server-root"
        server_root.mkdir()
        big = server_root / "big.bin"
        with open(big, "wb") as f:
            block = random.Random(7).randbytes(1 << 20)
            for i in range(size >> 20):
                f.write(hashlib.sha256(b"%d" % i).digest() + block[32:])
        token_file = tmp_path / "token"
        from conftest import TOKEN
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        server = NetnsDaemon(tmp_path, "server", [{
            "name": FSET, "path": server_root, "role": "server", "listen": f"{NS_ADDR}:0",
            "http": PLAIN_HTTP, "clients": [{"name": "client", "token_sha256": token_sha256()}]}], netns=NS)
        server.start()
        port = int(server.fileset(FSET)["listen"].rsplit(":", 1)[1])
        client_root = tmp_path / "client1-root"
        client_root.mkdir()
        # A shorter idle timeout than the 120 s default, still above the
        # 25 s long-poll wait: a dead link is noticed in half a minute.
        client = Daemon(tmp_path, "client1", [{
            "name": FSET, "path": client_root, "role": "client",
            "server": f"{NS_ADDR}:{port}", "token_file": token_file,
            "http": "{idle_timeout: 30, plain: true}"}])
        client.start()

        def mid_transfer():
            st = client.fileset(FSET)
            return 0 < st["bytes_received"] < size // 2 and not (client_root / "big.bin").exists()
        wait_for(mid_transfer, timeout=60, what="the download to be under way", interval=0.01)
        run("ip", "link", "set", VETH_HOST, "down")
        at_cut = client.fileset(FSET)["bytes_received"]
        wait_for(lambda: client.fileset(FSET)["state"] == "disconnected", timeout=60,
                 what="the client to notice the partition")
        assert not (client_root / "big.bin").exists()
        run("ip", "link", "set", VETH_HOST, "up")
        wait_for(lambda: trees_equal(server_root, client_root), timeout=120,
                 what="the client to finish after the partition", interval=0.1)
        assert_same_tree(server_root, client_root)
        st = client.fileset(FSET)
        log = client.log_text()
        print(f"\ncut at {at_cut} of {size} bytes; bytes_received at the end "
              f"{st['bytes_received']}; resumed: {'resuming download' in log}")
        assert st["bytes_received"] < 2 * size - at_cut // 2 and st["bytes_received"] < 1.6 * size, \
            f"transfer restarted: received {st['bytes_received']} for a {size}-byte file"
        assert "resuming download" in log, "no 'resuming download' in the client's log"
    finally:
        problems = []
        for d in (client, server):
            if d is not None:
                try:
                    d.stop()
                except AssertionError as exc:
                    problems.append(str(exc))
        run("ip", "link", "del", VETH_HOST, check=False)
        run("ip", "netns", "del", NS, check=False)
        if problems:
            raise AssertionError("\n".join(problems))


# --------------------------------------------------------------------------
# 4. the client's disk fills up


def stop_and_unmount(cluster, mountpoint):
    """Stops every daemon of the cluster, then unmounts the small file
    system a test gave one of them."""
    try:
        cluster.stop()
    finally:
        cluster.clients.clear()
        cluster.server = None
        run("umount", "-l", str(mountpoint), check=False)


def test_full_disk_on_client(cluster, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    r = run("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small), check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        rnd = random.Random(3)
        contents = {}
        for i in range(30):
            data = rnd.randbytes(1 << 20)
            (cluster.server_root / f"f{i:02d}.bin").write_bytes(data)
            contents[f"f{i:02d}.bin"] = data
        cluster.start_server()
        root = small / "client1-root"
        root.mkdir()
        client = Daemon(tmp_path, "client1", [{
            "name": FSET, "path": root, "role": "client",
            "server": f"127.0.0.1:{cluster.port}", "token_file": cluster.token_file,
            "http": PLAIN_HTTP}])
        client.root = root
        cluster.clients.append(client)
        client.start()

        wait_for(lambda: "No space left" in client.fileset(FSET)["last_error"], timeout=60,
                 what="a 'No space left' error in the client's status")
        st = client.fileset(FSET)
        print(f"\nlast_error: {st['last_error']!r}; state {st['state']}")
        assert client.proc.poll() is None, "the client exited on a full disk"
        # What it has is complete and correct.
        present = [p for p in root.iterdir() if p.name != ".intermezzo"]
        for p in present:
            assert p.name in contents, f"unexpected {p.name}"
            assert p.read_bytes() == contents[p.name], f"{p.name} is partial or wrong"
        assert len(present) < 30
        # Still alive and answering a while later (status keeps working).
        assert client.status()["filesets"]

        run("mount", "-o", "remount,size=100m", str(small))
        cluster.wait_converged(timeout=90)
        for name, data in contents.items():
            assert (root / name).read_bytes() == data
        wait_for(lambda: client.fileset(FSET)["records_pending"] == 0, what="nothing pending")
        # The trouble is over, and the status says so.
        assert client.fileset(FSET)["last_error"] == ""
    finally:
        stop_and_unmount(cluster, small)


# --------------------------------------------------------------------------
# 5. the server's disk fills up while a write-back client reintegrates


def test_full_disk_on_server_keeps_the_clients_changes(cluster, tmp_path):
    r = run("mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(cluster.server_root),
            check=False)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}"
    try:
        cluster.start_server()
        client = cluster.add_client(write_back="true")
        cluster.wait_converged()
        rnd = random.Random(5)
        contents = {f"f{i:02d}.bin": rnd.randbytes(1 << 20) for i in range(20)}
        for name, data in contents.items():
            (client.root / name).write_bytes(data)

        for d in (cluster.server, client):
            wait_for(lambda: "No space left" in d.fileset(FSET)["last_error"], timeout=60,
                     what=f"a 'No space left' error in the status of {d.dir.name}")
        print(f"\nserver: {cluster.server.fileset(FSET)['last_error']!r}\n"
              f"client: {client.fileset(FSET)['last_error']!r}")
        assert cluster.server.proc.poll() is None, "the server exited on a full disk"
        assert client.proc.poll() is None, "the client exited"
        # What reached the server is complete; nothing is lost on the client.
        for p in cluster.server_root.iterdir():
            if p.name == ".intermezzo":
                continue
            assert p.name in contents, f"unexpected {p.name} on the server"
            assert p.read_bytes() == contents[p.name], f"{p.name} is partial on the server"
        for name, data in contents.items():
            assert (client.root / name).read_bytes() == data, f"{name} changed on the client"
        assert client.fileset(FSET)["local_pending"] > 0

        run("mount", "-o", "remount,size=100m", str(cluster.server_root))
        cluster.wait_converged(timeout=120)
        for name, data in contents.items():
            assert (cluster.server_root / name).read_bytes() == data
        wait_for(lambda: client.fileset(FSET)["local_pending"] == 0, what="nothing pending")
        for d in (cluster.server, client):
            assert d.fileset(FSET)["last_error"] == "", f"{d.dir.name} still reports an error"
        assert cluster.server.fileset(FSET)["conflicts"] == 0
        assert not [p for p in cluster.server_root.iterdir() if is_conflict_copy(p.name)]
    finally:
        stop_and_unmount(cluster, cluster.server_root)


# --------------------------------------------------------------------------
# 6. a local write in the very moment a server update is put in place

SYS_RENAMEAT, SYS_RENAMEAT2 = 264, 316  # x86_64; glibc's renameat2 without flags is renameat


def renaming_to(pid, name):
    """True if a thread of `pid` is stopped at the entry of renameat(2) or
    renameat2(2) whose new name is `name` (read from the process's memory)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "syscall").read_text().split()
        except OSError:
            continue
        if not fields or fields[0] not in (str(SYS_RENAMEAT), str(SYS_RENAMEAT2)):
            continue
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(int(fields[4], 16))
            if mem.read(len(name) + 1) == name.encode() + b"\0":
                return True
    return False


@pytest.mark.parametrize("side", ["client", "server"])
def test_local_write_while_an_update_is_put_in_place_is_kept(cluster, side):
    """A write-back client puts a server update in place, or the server a
    client's: a local user writes the file in the moment between the
    daemon's last look at it and its rename. Both versions must survive."""
    if shutil.which("strace") is None:
        pytest.skip("strace is missing: it holds the daemon at the rename")
    (cluster.server_root / "doc.txt").write_text("v1\n")
    cluster.start_server()
    client = cluster.add_client(write_back="true")
    wait_settled(cluster, what="initial replication")
    here, there = (client, cluster.server) if side == "client" else (cluster.server, client)
    here_root = client.root if side == "client" else cluster.server_root
    there_root = cluster.server_root if side == "client" else client.root

    # Every rename of this side waits at its entry until strace lets go.
    tracer = attach_strace(here.proc.pid, "-e", "trace=renameat,renameat2", "-e",
                           "inject=renameat,renameat2:delay_enter=60000000")
    try:
        (there_root / "doc.txt").write_text("the other side's v2\n")
        # This side compared doc.txt with its index and is about to put v2
        # in place: a user writes the file (in place, same inode) right now.
        wait_for(lambda: renaming_to(here.proc.pid, "doc.txt"),
                 what=f"the {side} to be renaming v2 into place")
        (here_root / "doc.txt").write_text("the local edit\n")
    finally:
        tracer.terminate()
        tracer.wait()

    wait_settled(cluster, what="convergence after the conflict")
    for root in (cluster.server_root, client.root):
        texts = sorted(p.read_text() for p in root.iterdir() if p.name.startswith("doc"))
        assert texts == ["the local edit\n", "the other side's v2\n"], (root, texts)
    assert cluster.server.fileset(FSET)["conflicts"] == 1
