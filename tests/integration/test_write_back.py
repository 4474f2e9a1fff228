"""Two-way sync with real daemons: write-back clients, disconnected
operation, conflicts resolved by policy with nothing lost, the ignore file
and the mass-deletion guard."""

import json
import os
import subprocess

import pytest

from conftest import KMLPRINT, assert_same_tree, tree_snapshot, wait_for


def start(cluster, clients=2, policy=None):
    extra = {"conflict": policy} if policy else {}
    cluster.start_server(**extra)
    return [cluster.add_client(write_back="true") for _ in range(clients)]


def kml_ops(root):
    out = subprocess.run([str(KMLPRINT), "--json", str(root / ".intermezzo" / "docs" / "kml")],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def conflict_copies(root, name):
    stem, dot, ext = name.rpartition(".")
    prefix = (stem if dot else name) + ".conflict-"
    return sorted(p for p in root.iterdir() if p.name.startswith(prefix))


def test_clients_writing_at_once_converge(cluster):
    c1, c2 = start(cluster)
    cluster.wait_converged()
    for i in range(60):
        (c1.root / f"from-c1-{i}.txt").write_text(f"c1 {i}\n" * (i + 1))
        (c2.root / f"from-c2-{i}.txt").write_text(f"c2 {i}\n" * (i + 1))
        (cluster.server_root / f"from-server-{i}.txt").write_text(f"s {i}\n")
    (c1.root / "dir-c1" / "deep").mkdir(parents=True)
    (c1.root / "dir-c1" / "deep" / "f").write_bytes(os.urandom(3 << 20))
    cluster.wait_converged(timeout=90)
    snap = tree_snapshot(cluster.server_root)
    assert len([k for k in snap if k.startswith("from-")]) == 180
    for c in (c1, c2):
        assert c.fileset("docs")["local_pending"] == 0
    assert cluster.server.fileset("docs")["conflicts"] == 0


def test_renames_travel_as_renames(cluster):
    c1, c2 = start(cluster)
    (c1.root / "big").mkdir()
    (c1.root / "big" / "data.bin").write_bytes(os.urandom(16 << 20))
    cluster.wait_converged(timeout=60)
    sent = c1.fileset("docs")["bytes_sent"]
    (c1.root / "big" / "data.bin").rename(c1.root / "big" / "renamed.bin")
    (c1.root / "big").rename(c1.root / "moved")
    cluster.wait_converged()
    assert c1.fileset("docs")["bytes_sent"] == sent, "a rename re-uploaded content"
    ops = [r["op"] for r in kml_ops(cluster.server_root)]
    assert ops.count("RENAME") >= 2
    assert cluster.server.fileset("docs")["conflicts"] == 0


def test_identical_change_on_both_sides_is_not_a_conflict(cluster):
    (cluster.server_root / "same.txt").write_text("old\n")
    c1, = start(cluster, clients=1)
    cluster.wait_converged()
    c1.stop()
    (cluster.server_root / "same.txt").write_text("the same new text\n")
    (c1.root / "same.txt").write_text("the same new text\n")
    c1.start()
    cluster.wait_converged()
    assert cluster.server.fileset("docs")["conflicts"] == 0
    assert not conflict_copies(cluster.server_root, "same.txt")


@pytest.mark.parametrize("policy,winner", [("server-wins", "server"), ("client-wins", "client"),
                                           ("newest-wins", "client"), ("keep-both", "server")])
def test_update_update_conflict_keeps_both_versions(cluster, policy, winner):
    (cluster.server_root / "report.txt").write_text("base\n")
    c1, c2 = start(cluster, policy=policy)
    cluster.wait_converged()
    c1.stop()
    (cluster.server_root / "report.txt").write_text("server edit\n")
    os.utime(cluster.server_root / "report.txt", (1_600_000_000, 1_600_000_000))
    (c1.root / "report.txt").write_text("client edit\n")  # newer mtime
    c1.start()
    wait_for(lambda: conflict_copies(cluster.server_root, "report.txt"), what="conflict copy")
    cluster.wait_converged()
    copies = conflict_copies(cluster.server_root, "report.txt")
    assert len(copies) == 1
    assert copies[0].name.endswith(".txt") and ".conflict-" in copies[0].name
    name_text = (cluster.server_root / "report.txt").read_text()
    copy_text = copies[0].read_text()
    expect = ("server edit\n", "client edit\n") if winner == "server" else \
        ("client edit\n", "server edit\n")
    assert (name_text, copy_text) == expect
    # Every side has both versions, and the conflict is listed.
    for c in (c1, c2):
        assert (c.root / "report.txt").read_text() == name_text
        assert (c.root / copies[0].name).read_text() == copy_text
    listed = json.loads(cluster.server.ctl("conflicts", "--json").stdout)
    assert [e["path"] for e in listed] == ["report.txt"]
    assert listed[0]["copy"] == copies[0].name


def test_delete_against_update_keeps_the_update(cluster):
    (cluster.server_root / "keep.txt").write_text("v1\n")
    (cluster.server_root / "gone.txt").write_text("v1\n")
    c1, = start(cluster, clients=1)
    cluster.wait_converged()
    c1.stop()
    # keep.txt: deleted on the client, updated on the server.
    (c1.root / "keep.txt").unlink()
    (cluster.server_root / "keep.txt").write_text("v2 from the server\n")
    # gone.txt: updated on the client, deleted on the server.
    (c1.root / "gone.txt").write_text("v2 from the client\n")
    (cluster.server_root / "gone.txt").unlink()
    c1.start()
    cluster.wait_converged()
    assert (cluster.server_root / "keep.txt").read_text() == "v2 from the server\n"
    assert (cluster.server_root / "gone.txt").read_text() == "v2 from the client\n"


def test_file_created_in_a_directory_the_other_side_deleted(cluster):
    (cluster.server_root / "shared").mkdir()
    (cluster.server_root / "shared" / "old.txt").write_text("old\n")
    c1, = start(cluster, clients=1)
    cluster.wait_converged()
    c1.stop()
    import shutil
    shutil.rmtree(c1.root / "shared")
    (cluster.server_root / "shared" / "new.txt").write_text("created meanwhile\n")
    c1.start()
    cluster.wait_converged()
    assert (cluster.server_root / "shared" / "new.txt").read_text() == "created meanwhile\n"


def test_create_create_conflict(cluster):
    c1, = start(cluster, clients=1)
    cluster.wait_converged()
    c1.stop()
    (cluster.server_root / "both.txt").write_text("server's\n")
    (c1.root / "both.txt").write_text("client's\n")
    c1.start()
    wait_for(lambda: conflict_copies(cluster.server_root, "both.txt"), what="conflict copy")
    cluster.wait_converged()
    texts = sorted([(cluster.server_root / "both.txt").read_text(),
                    conflict_copies(cluster.server_root, "both.txt")[0].read_text()])
    assert texts == ["client's\n", "server's\n"]


def test_disconnected_client_stays_writable_and_reintegrates(cluster):
    c1, c2 = start(cluster)
    cluster.wait_converged()
    cluster.server.stop()
    wait_for(lambda: c1.fileset("docs")["state"] == "disconnected", what="disconnect noticed")
    for i in range(200):
        (c1.root / f"offline-{i}.txt").write_text(f"written offline {i}\n")
    wait_for(lambda: c1.fileset("docs")["local_pending"] > 0, what="changes queued")
    text = c1.ctl("status").stdout
    assert "disconnected since" in text
    (cluster.server_root / "server-side.txt").write_text("while the daemon was down\n")
    cluster.start_server()
    cluster.wait_converged(timeout=60)
    assert c1.fileset("docs")["local_pending"] == 0
    assert (c2.root / "offline-199.txt").read_text() == "written offline 199\n"


def test_ignore_file_keeps_paths_out_both_ways(cluster):
    (cluster.server_root / ".intersyncignore").write_text("*.o\n/build/\n!keep.o\n")
    (cluster.server_root / "a.o").write_text("object\n")
    (cluster.server_root / "keep.o").write_text("kept\n")
    (cluster.server_root / "build").mkdir()
    (cluster.server_root / "build" / "out").write_text("x\n")
    c1, = start(cluster, clients=1)
    wait_for(lambda: (c1.root / "keep.o").exists(), what="keep.o")
    wait_for(lambda: (c1.root / ".intersyncignore").exists(), what="ignore file")
    assert not (c1.root / "a.o").exists()
    assert not (c1.root / "build").exists()
    (c1.root / "local.o").write_text("client object\n")
    (c1.root / ".notes.txt.swp").write_text("vim swap\n")
    (c1.root / "real.txt").write_text("replicated\n")
    wait_for(lambda: (cluster.server_root / "real.txt").exists(), what="real.txt on the server")
    assert not (cluster.server_root / "local.o").exists()
    assert not (cluster.server_root / ".notes.txt.swp").exists()


def test_mass_deletion_is_held_until_confirmed(cluster):
    for i in range(40):
        (cluster.server_root / f"precious-{i}.txt").write_text(f"{i}\n")
    c1, = start(cluster, clients=1)
    cluster.wait_converged()
    for i in range(30):
        (c1.root / f"precious-{i}.txt").unlink()
    wait_for(lambda: c1.fileset("docs")["held_deletions"] >= 30, what="deletions held")
    assert (cluster.server_root / "precious-0.txt").exists()
    assert "intersyncctl confirm docs" in c1.log_text()
    out = c1.ctl("confirm", "docs").stdout
    assert "released" in out
    wait_for(lambda: not (cluster.server_root / "precious-29.txt").exists(),
             what="confirmed deletions on the server")
    assert (cluster.server_root / "precious-35.txt").exists()
