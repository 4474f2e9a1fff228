"""TLS between real daemons on 127.0.0.1: the http transport's `tls:`
settings, with a throw-away CA and server certificate made by the openssl
command line in the test's temporary directory (conftest's `pki`)."""

import subprocess

import pytest

from conftest import INTERSYNCD, wait_for


def test_replication_over_tls(cluster, pki):
    root = cluster.server_root
    (root / "secret.txt").write_text("only over TLS\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * (12 << 12))
    cluster.start_server(http=pki.server_tls)
    assert "(TLS)" in cluster.server.log_text()

    by_ca = cluster.add_client(http=pki.client_tls)
    pinned = cluster.add_client(http=f'{{tls: {{fingerprint: "{pki.fingerprint}"}}}}')
    cluster.wait_converged()
    (root / "live.txt").write_text("pushed over TLS\n")
    cluster.wait_converged()
    for c in (by_ca, pinned):
        assert c.fileset("docs")["state"] == "connected"

    # Clients that cannot trust the server, or do not speak TLS, never get
    # in, and say why.
    wrong = ("0" if pki.fingerprint[0] != "0" else "1") + pki.fingerprint[1:]
    impostor = cluster.add_client(http=f'{{tls: {{fingerprint: "{wrong}"}}}}')
    plain = cluster.add_client()
    wait_for(lambda: "not the pinned one" in impostor.fileset("docs")["last_error"],
             what="the pinned client to refuse the certificate")
    wait_for(lambda: "speaks TLS" in plain.fileset("docs")["last_error"],
             what="the plain client to be told to use TLS")
    for c in (impostor, plain):
        assert not (c.root / "secret.txt").exists()
        c.stop()
    cluster.clients = [by_ca, pinned]

    # The server went on serving the clients it should.
    (root / "after.txt").write_text("still served\n")
    cluster.wait_converged()


def test_unloadable_tls_settings_stop_the_daemon_with_the_reason(cluster, pki):
    bad = pki.dir / "not-a-cert.pem"
    bad.write_text("hello\n")
    with pytest.raises(AssertionError) as failed:
        cluster.start_server(http=f"{{tls: {{cert: {bad}, key: {pki.dir / 'server.key'}}}}}")
    message = str(failed.value)
    assert str(bad) in message
    assert "no start line" in message


def test_filesets_sharing_a_listener_must_agree_on_tls(tmp_path, pki):
    # The listener is made from the first fileset's settings: the second
    # must not silently be served without the TLS it asks for.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = tmp_path / "intersync.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nfilesets:\n"
        f"  - {{name: a, path: {tmp_path / 'a'}, role: server, listen: 127.0.0.1:0, "
        f"auth: none, http: {{plain: true}}}}\n"
        f"  - name: b\n    path: {tmp_path / 'b'}\n    role: server\n"
        f"    listen: 127.0.0.1:0\n    auth: none\n"
        f"    http: {pki.server_tls}\n")
    r = subprocess.run([str(INTERSYNCD), "-c", str(config), "--check"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert "fileset 'b' shares its listener with fileset 'a'" in r.stderr
    assert f"{config}:" in r.stderr
