"""The team server's safety, on loopback: a start never removes a cluster, a stop signals only the
server it started, a start succeeds only when its own server answers, no password on any command
line, basic authentication on request, and one-line errors for a lost or wrong password file.

One cluster serves the whole module; every process a test starts is stopped by its process id."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glioseg.cli import app
from glioseg.errors import ConfigError, DataError
from glioseg.tracking import postgres, server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("runuser") and os.geteuid() == 0, reason="needs runuser"),
]

runner = CliRunner()


def cli(root: Path, *args: str):
    return runner.invoke(app, ["server", *args], env={"DVC_ROOT": str(root)})


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes(parent: int | None = None, group: int | None = None) -> set[int]:
    """Live processes whose parent is ``parent`` or whose process group is ``group``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and (int(fields[1]) == parent or int(fields[2]) == group):
            found.add(int(stat.parent.name))
    return found


def postmaster(root: Path) -> int | None:
    pid_file = server.cluster_dir(root) / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.is_file() else None


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders``: its path and the sha256 of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A repository folder with a PostgreSQL cluster made the way ``start`` makes one."""
    root = tmp_path_factory.mktemp("server")
    before = processes(parent=os.getpid())  # children of earlier test modules are not this module's
    postgres.init_cluster(server.cluster_dir(root), server.state_dir(root) / "postgres.password")
    yield root
    if (server.state_dir(root) / "state.json").is_file():
        server.stop(root)
    shutil.rmtree(server.cluster_dir(root), ignore_errors=True)
    assert postmaster(root) is None
    assert not processes(parent=os.getpid()) - before, "a process the tests started is left"


@pytest.fixture
def impostor():
    """Another program answering ``/health`` with OK on a loopback port (a thread of this test)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.parametrize("recorded", ["another start time", "no identity (an older glioseg)"])
def test_stop_leaves_alone_an_unrelated_process_that_has_the_recorded_pid(tmp_path, recorded):
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a group leader, as the server was
    try:
        state = {
            "url": "http://127.0.0.1:9",
            "mlflow_pid": sleeper.pid,
            "postgres_port": 9,
            "postgres_data": str(tmp_path / "no-cluster"),
            "artifacts": (tmp_path / "artifacts").as_uri(),
        }
        if recorded == "another start time":
            state |= {"mlflow_start_time": 1, "mlflow_cmdline": [sys.executable, "-m", "mlflow", "server"]}
        state_file = server.state_dir(tmp_path) / "state.json"
        state_file.parent.mkdir(parents=True)
        state_file.write_text(json.dumps(state))
        line = one_error_line(cli(tmp_path, "stop"))
        assert sleeper.poll() is None, "stop signalled a process it did not start"
        assert f"pid {sleeper.pid}" in line and str(state_file) in line
        if recorded == "another start time":
            assert "is gone" in line and not state_file.exists()
        else:
            assert "by hand" in line and state_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_start_refuses_a_port_another_program_answers(root, impostor):
    line = one_error_line(cli(root, "start", "--port", str(impostor)))
    assert f"127.0.0.1:{impostor}" in line and "--port" in line
    assert not (server.state_dir(root) / "state.json").exists()
    assert postmaster(root) is None


def test_start_fails_when_its_own_server_is_not_the_one_answering(root, impostor, monkeypatch):
    """Past the port check (another program takes the port a moment later): the health answer alone
    does not count, the listener must be the started server; it and PostgreSQL are stopped."""
    monkeypatch.setattr(server, "check_port_free", lambda *args: None)
    started, popen = [], subprocess.Popen

    def recording_popen(command, *args, **kwargs):
        started.append(popen(command, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(server.subprocess, "Popen", recording_popen)
    with pytest.raises(DataError, match=f"127.0.0.1:{impostor}"):
        server.start(root, port=impostor, workers=1)
    mlflow = [process for process in started if "mlflow" in process.args]
    assert len(mlflow) == 1 and mlflow[0].returncode is not None
    assert not processes(group=mlflow[0].pid)
    assert postmaster(root) is None
    assert not (server.state_dir(root) / "state.json").exists()


class TestARunningServerWithAuth:
    @pytest.fixture(scope="class")
    def running(self, root):
        state = server.start(root, auth=True, workers=1)
        postmaster_pid = postmaster(root)
        started = {state.mlflow_pid, postmaster_pid} | processes(parent=postmaster_pid, group=state.mlflow_pid)
        yield state
        server.stop(root)
        assert not [pid for pid in started if alive(pid)]

    @staticmethod
    def credentials(state) -> dict[str, str]:
        return dict(line.split("=", 1) for line in Path(state.credentials).read_text().splitlines())

    def test_no_command_line_holds_a_password(self, running, root):
        password = (server.state_dir(root) / "postgres.password").read_text().strip()
        admin_password = self.credentials(running)["MLFLOW_TRACKING_PASSWORD"]
        postmaster_pid = postmaster(root)
        ours = {running.mlflow_pid, postmaster_pid} | processes(parent=postmaster_pid, group=running.mlflow_pid)
        read = set()
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                command = path.read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            read.add(int(path.parent.name))
            assert password.encode() not in command and admin_password.encode() not in command, path
        assert ours <= read and len(ours) >= 4  # mlflow, its server, the postmaster and its helpers
        for secret in ("postgres.password", "pgpass", "auth.ini", "admin.env"):
            assert (server.state_dir(root) / secret).stat().st_mode & 0o777 == 0o600, secret

    def test_anonymous_clients_are_refused_and_the_admin_logs_registers_and_aliases(self, running, monkeypatch):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{running.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401
        credentials = self.credentials(running)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException, match="401|[Uu]nauthori[sz]ed|not authenticated"):
            MlflowClient(running.url).search_experiments()

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials["MLFLOW_TRACKING_PASSWORD"])
        client = MlflowClient(running.url)
        run = client.create_run(client.create_experiment("auth-check"))
        client.log_metric(run.info.run_id, "val_dice", 0.5)
        client.log_text(run.info.run_id, "weights", "checkpoint/model.txt")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("auth-model")
        version = client.create_model_version("auth-model", f"{run.info.artifact_uri}/checkpoint", run.info.run_id)
        client.set_registered_model_alias("auth-model", "champion", version.version)
        assert client.get_model_version_by_alias("auth-model", "champion").run_id == run.info.run_id
        assert client.get_run(run.info.run_id).data.metrics == {"val_dice": 0.5}

    def test_remove_refuses_while_the_server_runs(self, running, root):
        with pytest.raises(DataError, match="server stop"):
            server.remove(root, yes=True)
        assert (server.cluster_dir(root) / "PG_VERSION").is_file()


def test_start_refuses_a_damaged_cluster_and_leaves_every_file_as_it_was(root):
    data, folder = server.cluster_dir(root), server.state_dir(root)
    moved = data / "PG_VERSION.aside"
    (data / "PG_VERSION").rename(moved)  # a half-restored cluster
    try:
        before = snapshot(data, folder)
        line = one_error_line(cli(root, "start"))
        assert str(data) in line and "PG_VERSION" in line and "glioseg server remove" in line
        assert snapshot(data, folder) == before
        assert postmaster(root) is None
    finally:
        if moved.exists():
            moved.rename(data / "PG_VERSION")


def test_a_missing_password_file_is_one_line(root):
    password_file = server.state_dir(root) / "postgres.password"
    aside = password_file.with_name("postgres.password.aside")
    password_file.rename(aside)  # a re-clone at the same path: the cluster outside the repository stays
    try:
        line = one_error_line(cli(root, "start"))
        assert str(password_file) in line and "glioseg server remove" in line
        assert postmaster(root) is None
    finally:
        aside.rename(password_file)


def test_a_wrong_password_is_one_line_and_postgresql_is_stopped(root):
    password_file = server.state_dir(root) / "postgres.password"
    password = password_file.read_text()
    password_file.write_text("not-this-clusters-password")
    try:
        line = one_error_line(cli(root, "start"))
        assert str(password_file) in line and "refused" in line
        assert postmaster(root) is None
    finally:
        password_file.write_text(password)


def test_remove_asks_for_yes_then_deletes_the_cluster_and_the_secrets(root):
    data, folder = server.cluster_dir(root), server.state_dir(root)
    with pytest.raises(ConfigError, match="--yes"):
        server.remove(root)
    assert (data / "PG_VERSION").is_file()
    result = cli(root, "remove", "--yes")
    assert result.exit_code == 0, result.output
    assert not data.exists()
    assert not [
        name
        for name in ("postgres.password", "pgpass", "auth.ini", "admin.env", "state.json")
        if (folder / name).exists()
    ]
