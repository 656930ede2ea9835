"""A team's tracking server on this machine: MLflow on a project-local PostgreSQL, artifacts served.

``glioseg server start`` makes (once) and starts a PostgreSQL cluster under
``.glioseg/server/postgres`` (port on 127.0.0.1, password authentication, a random password kept
in a 0600 file), then ``mlflow server`` with that database as its backend store and
``--artifacts-destination`` (a shared folder by default, or an ``s3://`` URI), so a client needs
only the server's URL: ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``. Both listen on 127.0.0.1
unless told otherwise; another host needs an explicit ``--allowed-hosts`` list (MLflow's DNS
rebinding guard), never a silent bind to all interfaces. ``glioseg server stop`` stops both by
the process ids recorded in ``.glioseg/server/state.json``.

PostgreSQL refuses to run as root; started by root, its commands run as the ``postgres`` user,
and the cluster lives where that user can reach it whatever the repository's permissions:
``/var/lib/postgresql/glioseg-<digest of the repository path>`` (one cluster per repository).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from glioseg.errors import ConfigError, DataError
from glioseg.io import write_json

DATABASE, USER = "mlflow", "glioseg"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerState:
    """What ``start`` left running, for ``stop`` and for clients."""

    url: str
    mlflow_pid: int
    postgres_port: int
    postgres_data: str
    artifacts: str


def state_dir(root: Path) -> Path:
    return root / ".glioseg" / "server"


def cluster_dir(root: Path) -> Path:
    """The repository's PostgreSQL cluster: in its state folder, or, for root, where ``postgres`` can reach."""
    if os.geteuid() != 0:
        return state_dir(root) / "postgres"
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/postgresql") / f"glioseg-{digest}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def postgres_tool(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, createdb): on PATH, or Debian's newest version's."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise DataError(f"{name}: PostgreSQL's server programs are not installed (apt-get install postgresql)")
    return str(versions[-1])


def as_cluster_owner(command: list[str]) -> list[str]:
    """``command`` run as ``postgres`` when we are root (PostgreSQL will not run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise DataError(f"{what} failed: {reason[-1] if reason else f'exit {result.returncode}'}")


def init_cluster(data: Path, password_file: Path) -> None:
    """A new cluster in ``data`` whose TCP connections need ``USER``'s password (scram-sha-256)."""
    data.parent.mkdir(parents=True, exist_ok=True)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    pwfile = data.parent / f".{data.name}.pwfile"  # initdb wants an empty folder, and reads it as postgres
    shutil.copy(password_file, pwfile)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        _run(as_cluster_owner([postgres_tool("initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                               "--auth-host=scram-sha-256", "--auth-local=peer", "--encoding=UTF8"]),
             f"initdb {data}")
    finally:
        pwfile.unlink(missing_ok=True)


def start_postgres(data: Path, port: int) -> None:
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    log = data / "server.log"  # beside the cluster: the postgres user may not reach the repository
    _run(as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
         f"PostgreSQL in {data} (log {log})")


def stop_postgres(data: Path, timeout: float = 30) -> None:
    """Stop the cluster and wait until its postmaster process is gone (pg_ctl returns a moment before)."""
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().split()[0])
    _run(as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
         f"stopping PostgreSQL in {data}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def database_uri(port: int, password: str) -> str:
    return f"postgresql+psycopg2://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"


def ensure_database(port: int, password: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()


def check_binding(host: str, allowed_hosts: str | None) -> None:
    """Loopback by default; any other address needs the Host names the server may be reached by."""
    if host not in LOOPBACK and not allowed_hosts:
        raise ConfigError(f"--host {host}: listening beyond this machine needs --allowed-hosts (the names clients "
                          "use, e.g. 'mlflow.lab.example:5000'); put a reverse proxy with TLS and authentication "
                          "in front of it for a team")


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise DataError(f"mlflow server exited ({process.returncode}); see {log}")
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(process.pid)
            raise DataError(f"mlflow server did not answer {url}/health within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def stop_process(pid: int, timeout: float = 30) -> None:
    """Stop a process group started by :func:`start` (SIGTERM, then SIGKILL)."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sent)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                finished, _ = os.waitpid(pid, os.WNOHANG)
                if finished:
                    return
            except ChildProcessError:
                pass
            except ProcessLookupError:
                return
            time.sleep(0.2)


def start(root: Path, *, port: int | None = None, postgres_port: int | None = None, host: str = "127.0.0.1",
          allowed_hosts: str | None = None, artifacts: str | None = None, workers: int = 2) -> ServerState:
    """Start PostgreSQL and the MLflow server for the repository at ``root``; returns what runs."""
    check_binding(host, allowed_hosts)
    folder = state_dir(root)
    if (folder / "state.json").is_file():
        state = read_state(root)
        raise DataError(f"{folder / 'state.json'}: a server is already running at {state.url} "
                        f"(pid {state.mlflow_pid}); `glioseg server stop` first")
    data, password_file = cluster_dir(root), folder / "postgres.password"
    if not (data / "PG_VERSION").is_file():
        if data.exists():
            shutil.rmtree(data)  # an initdb that did not finish
        init_cluster(data, password_file)
    password = password_file.read_text().strip()
    postgres_port = postgres_port or free_port()
    start_postgres(data, postgres_port)
    try:
        ensure_database(postgres_port, password)
        artifacts = artifacts or (folder / "artifacts").resolve().as_uri()
        port = port or free_port()
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        hosts = allowed_hosts or f"127.0.0.1:{port},localhost:{port}"
        log = folder / "mlflow.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database_uri(postgres_port, password),
                 "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
                 "--workers", str(workers), "--allowed-hosts", hosts],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        wait_until_healthy(url, process, log)
    except BaseException:
        stop_postgres(data)
        raise
    state = ServerState(url=url, mlflow_pid=process.pid, postgres_port=postgres_port, postgres_data=str(data),
                        artifacts=artifacts)
    write_json(folder / "state.json", asdict(state))
    return state


def read_state(root: Path) -> ServerState:
    path = state_dir(root) / "state.json"
    if not path.is_file():
        raise DataError(f"{path}: no server started from this repository (`glioseg server start`)")
    return ServerState(**json.loads(path.read_text()))


def stop(root: Path) -> ServerState:
    """Stop what :func:`start` started, by process id; the database and artifacts stay for the next start."""
    state = read_state(root)
    stop_process(state.mlflow_pid)
    stop_postgres(Path(state.postgres_data))
    (state_dir(root) / "state.json").unlink()
    return state
