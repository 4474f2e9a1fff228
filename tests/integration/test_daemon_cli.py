"""The operator surface: intersyncd --check, --daemon with its pid file,
SIGHUP reload, SIGTERM, intersyncctl status, the init script, the
warning for auth: none and the refusal of unasked-for plain HTTP."""

import json
import os
import signal
import subprocess

from conftest import INTERSYNCCTL, INTERSYNCD, PLAIN_HTTP, SOURCE_ROOT, Daemon, wait_for


def run(*args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                          **kw)


def test_check_accepts_the_examples_and_names_line_and_column(tmp_path):
    for example in ("intersync-server.yaml", "intersync-client.yaml"):
        r = run(INTERSYNCD, "-c", SOURCE_ROOT / "etc" / example, "--check")
        assert r.returncode == 0, r.stderr
        assert "configuration OK" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("filesets:\n  - name: docs\n    path: /srv\n    role: server\n"
                   "    auth: none\n    listn: 1.2.3.4\n")
    r = run(INTERSYNCD, "-c", bad, "--check")
    assert r.returncode == 1
    assert f"{bad}:6:5:" in r.stderr and "listn" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("filesets: [\n  - name: x\n")
    r = run(INTERSYNCD, "-c", broken, "--check")
    assert r.returncode == 1 and f"{broken}:" in r.stderr


def test_check_validates_plugin_subtrees_and_names_missing_plugins(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/s\nfilesets:\n  - name: docs\n    path: {tmp_path}\n"
                   "    role: server\n    auth: none\n    inotify:\n      rescan_intervall: 5\n")
    r = run(INTERSYNCD, "-c", cfg, "--check")
    assert r.returncode == 1
    assert ":8:7:" in r.stderr and "rescan_intervall" in r.stderr
    cfg.write_text(f"state_dir: {tmp_path}/s\nfilesets:\n  - name: docs\n    path: {tmp_path}\n"
                   "    role: server\n    auth: none\n    transport: carrier-pigeon\n")
    r = run(INTERSYNCD, "-c", cfg, "--check")
    assert r.returncode == 1
    assert "no transport plugin named 'carrier-pigeon'" in r.stderr


def test_plain_http_is_refused_unless_the_configuration_says_so(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    # A server on loopback and a client: neither has tls nor plain: true.
    server = Daemon(tmp_path, "srv", [{"name": "docs", "path": root, "role": "server",
                                       "auth": "none", "listen": "127.0.0.1:0"}])
    client = Daemon(tmp_path, "cli", [{"name": "docs", "path": root, "role": "client",
                                       "server": "127.0.0.1:370", "token_file": token}])
    for d in (server, client):
        # Line 4 is the fileset's entry ("  - name: docs"), which lacks http:.
        where = f"{d.config}:4:5: 'http' settings of fileset 'docs' have no 'tls'"
        for args in (["--check"], []):
            r = run(INTERSYNCD, "-c", d.config, *args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert where in r.stderr, r.stderr
            assert "plain: true" in r.stderr and "tls: {cert: FILE, key: FILE}" in r.stderr
            assert "configuration OK" not in r.stdout
    assert not (server.state / "control.sock").exists()

    # plain: false is no way around it, and the error points at it.
    text = server.config.read_text()
    server.config.write_text(text + "    http:\n      idle_timeout: 5\n      plain: false\n")
    r = run(INTERSYNCD, "-c", server.config, "--check")
    assert r.returncode == 1 and f"{server.config}:11:7: " in r.stderr, r.stderr

    # Saying so is enough, on a wildcard address as on loopback.
    for listen in ("127.0.0.1:0", "0.0.0.0:0"):
        server.config.write_text(text.replace("127.0.0.1:0", listen) + "    http: {plain: true}\n")
        r = run(INTERSYNCD, "-c", server.config, "--check")
        assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
        server.start()
        try:
            assert server.fileset("docs")["listen"].startswith(listen.split(":")[0] + ":")
            assert "(plain HTTP)" in server.log_text()
        finally:
            server.stop()


def test_status_when_not_running(tmp_path):
    d = Daemon(tmp_path, "idle", [{"name": "docs", "path": tmp_path, "role": "server",
                                    "auth": "none", "listen": "127.0.0.1:0", "http": PLAIN_HTTP}])
    r = d.ctl("status", check=False)
    assert r.returncode == 3
    assert "not running" in r.stderr


def test_status_reports_role_head_and_listener(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("x")
    d = Daemon(tmp_path, "srv", [{"name": "docs", "path": root, "role": "server",
                                   "auth": "none", "listen": "127.0.0.1:0", "http": PLAIN_HTTP}])
    d.start()
    try:
        wait_for(lambda: d.fileset("docs")["head"] >= 3, what="journal of f")
        text = d.ctl("status").stdout
        assert "fileset docs (server)" in text
        assert "listening on 127.0.0.1:" in text
        assert "journal head" in text
        st = d.fileset("docs")
        assert st["role"] == "server" and st["entries"] >= 2
        # auth: none is allowed only explicitly, and warned about at start.
        assert "authentication is OFF" in d.log_text()
    finally:
        d.stop()


def test_daemon_mode_pid_file_reload_and_stop(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    d = Daemon(tmp_path, "bg", [{"name": "docs", "path": root, "role": "server",
                                 "auth": "none", "listen": "127.0.0.1:0", "http": PLAIN_HTTP}])
    r = run(INTERSYNCD, "-c", d.config, "--daemon")
    assert r.returncode == 0, r.stderr
    pid_file = d.state / "intersyncd.pid"
    pid = int(pid_file.read_text())
    try:
        assert d.status()["daemon"]["pid"] == pid
        # A second instance refuses to start.
        r2 = run(INTERSYNCD, "-c", d.config)
        assert r2.returncode == 1 and "already running" in r2.stderr
        # SIGHUP with a broken file keeps the running configuration.
        good = d.config.read_text()
        d.config.write_text(good + "  - name: [broken\n")
        os.kill(pid, signal.SIGHUP)
        sock = str(d.state / "control.sock")

        def daemon_status():
            r = run(INTERSYNCCTL, "--socket", sock, "status", "--json")
            return json.loads(r.stdout)["daemon"] if r.returncode == 0 else None

        wait_for(lambda: (daemon_status() or {}).get("reloads_failed") == 1,
                 what="the bad reload to be refused")
        # The error names the file, line and column, as --check would.
        assert daemon_status()["last_reload_error"].startswith(f"{d.config}:")
        d.config.write_text(good.replace("filesets:", "filesets:\n  - name: second\n"
                                         f"    path: {root}\n    role: server\n"
                                         "    auth: none\n    listen: 127.0.0.1:0\n    http: {plain: true}"))
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: len((d.status_or_none() or {"filesets": []})["filesets"]) == 2,
                 what="reload to add a fileset")
        assert daemon_status()["reloads"] == 1 and daemon_status()["pid"] == pid
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), what="pid file removed on SIGTERM")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon gone")


def test_init_script_has_an_lsb_header_and_all_actions():
    script = (SOURCE_ROOT / "etc" / "init.d" / "intersync").read_text()
    assert "### BEGIN INIT INFO" in script and "### END INIT INFO" in script
    for word in ("Provides:", "Required-Start:", "Default-Start:", "Default-Stop:"):
        assert word in script
    for action in ("start)", "stop)", "restart", "reload", "status)"):
        assert action in script
    r = run("sh", "-n", SOURCE_ROOT / "etc" / "init.d" / "intersync")
    assert r.returncode == 0, r.stderr


def test_intersyncctl_json_is_machine_readable(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    d = Daemon(tmp_path, "j", [{"name": "docs", "path": root, "role": "server",
                                "auth": "none", "listen": "127.0.0.1:0", "http": PLAIN_HTTP}])
    d.start()
    try:
        out = json.loads(d.ctl("status", "--json").stdout)
        assert {"daemon", "filesets"} <= set(out)
        assert out["filesets"][0]["name"] == "docs"
    finally:
        d.stop()
    r = run(INTERSYNCCTL, "-c", d.config, "frobnicate")
    assert r.returncode != 0
