"""A team's tracking server on this machine: MLflow on a project-local PostgreSQL, artifacts served.

``glioseg server start`` makes (once) and starts a PostgreSQL cluster under
``.glioseg/server/postgres`` (port on 127.0.0.1, password authentication, a random password kept
in a 0600 file), then ``mlflow server`` with that database as its backend store and
``--artifacts-destination`` (a shared folder by default, or an ``s3://`` URI), so a client needs
only the server's URL: ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``. Both listen on 127.0.0.1
unless told otherwise; another host needs an explicit ``--allowed-hosts`` list (MLflow's DNS
rebinding guard), never a silent bind to all interfaces. ``--auth`` adds MLflow's basic
authentication, its users in the same PostgreSQL. ``glioseg server stop`` stops both by the process
ids recorded in ``.glioseg/server/state.json``, once ``/proc`` shows they are still the processes
started; ``glioseg server remove --yes`` deletes the cluster, which a start never does.

No password is on a command line (``ps`` shows those to every local user): MLflow's connections
read the database password from a 0600 libpq password file (``PGPASSFILE``), the basic-auth app its
settings from a 0600 ini (``MLFLOW_AUTH_CONFIG_PATH``).

PostgreSQL refuses to run as root; started by root, its commands run as the ``postgres`` user,
and the cluster lives where that user can reach it whatever the repository's permissions:
``/var/lib/postgresql/glioseg-<digest of the repository path>`` (one cluster per repository).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from glioseg.errors import ConfigError, DataError
from glioseg.io import write_json, write_secret
from glioseg.tracking import procfs
from glioseg.tracking.postgres import (
    AUTH_DATABASE,
    DATABASE,
    cluster_password,
    database_uri,
    ensure_databases,
    postmaster,
    start_postgres,
    stop_postgres,
    write_pgpass,
)

ADMIN = "admin"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# What the server keeps in its state folder besides the artifacts (`remove` deletes these).
SERVER_FILES = ("state.json", "postgres.password", "pgpass", "auth.ini", "admin.env", "mlflow.log")


@dataclass(frozen=True)
class ServerState:
    """What ``start`` left running, for ``stop`` and for clients."""

    url: str
    mlflow_pid: int
    postgres_port: int
    postgres_data: str
    artifacts: str
    # Which process mlflow_pid is (procfs.identity); absent in the state of an older glioseg.
    mlflow_start_time: int | None = None
    mlflow_cmdline: list[str] | None = None
    # With --auth: the admin's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, a 0600 file.
    credentials: str | None = None


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


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a port another program listens on (bound as the servers bind it, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            assert exc.strerror is not None  # a failed bind carries the system's message
            raise ConfigError(
                f"{option} {port}: {host}:{port} is taken by another program ({exc.strerror.lower()}); "
                f"choose another port, or leave {option} out for a free one"
            ) from None


def auth_config(folder: Path, port: int, new_user_store: bool) -> tuple[Path, Path]:
    """The basic-auth app's ini (users in ``AUTH_DATABASE``) and the admin's credentials file, both 0600.

    MLflow creates the admin, with the ini's password, only in an empty user store, so the password
    is made with the store and kept; without it nobody administers the users.
    """
    credentials = folder / "admin.env"
    if new_user_store:
        write_secret(
            credentials, f"MLFLOW_TRACKING_USERNAME={ADMIN}\nMLFLOW_TRACKING_PASSWORD={secrets.token_urlsafe(24)}\n"
        )
    elif not credentials.is_file():
        raise DataError(
            f"{credentials}: missing, but the users of --auth exist (database {AUTH_DATABASE}); put the "
            "file back from the old clone or a backup (the admin's password is nowhere else), or start "
            "without --auth"
        )
    password = dict(line.split("=", 1) for line in credentials.read_text().splitlines())["MLFLOW_TRACKING_PASSWORD"]
    ini = folder / "auth.ini"
    write_secret(
        ini,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {database_uri(port, AUTH_DATABASE)}\n"
        f"admin_username = {ADMIN}\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return ini, credentials


def check_binding(host: str, allowed_hosts: str | None) -> None:
    """Loopback by default; any other address needs the Host names the server may be reached by."""
    if host not in LOOPBACK and not allowed_hosts:
        raise ConfigError(
            f"--host {host}: listening beyond this machine needs --allowed-hosts (the names clients "
            "use, e.g. 'mlflow.lab.example:5000'); put a reverse proxy with TLS in front of it, and "
            "give --auth"
        )


def wait_until_serving(
    url: str, port: int, process: subprocess.Popen, log: Path, timeout: float = 180
) -> tuple[int, list[str]]:
    """Until the started server answers ``url``/health; returns its ``procfs.identity``. An answer counts
    only while ``process`` lives and a process of its group holds the socket listening on ``port``:
    another program there answers just as well."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise DataError(f"mlflow server for {url} exited ({process.returncode}); see {log}")
        try:
            healthy = urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK"
        except OSError:
            healthy = False
        if healthy:
            found = procfs.identity(process.pid)
            if found is not None and procfs.group_listens(process.pid, port):
                return found
            raise DataError(
                f"{url}: another program answers there, not the mlflow server started (pid "
                f"{process.pid}, log {log}); choose another --port"
            )
        if time.monotonic() > deadline:
            raise DataError(f"mlflow server did not answer {url}/health within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def server_runs(state: ServerState, path: Path) -> bool:
    """Whether the recorded server still runs: a process with its pid, start time and command line."""
    found = procfs.identity(state.mlflow_pid)
    if found is None:
        return False
    if state.mlflow_start_time is None:
        raise DataError(
            f"{path}: written by an older glioseg, which did not record which process pid "
            f"{state.mlflow_pid} is; if it is the mlflow server (ps -o args -p {state.mlflow_pid}), "
            f"stop it by hand, then delete {path}"
        )
    return found == (state.mlflow_start_time, state.mlflow_cmdline)


def clear_stale(root: Path, state: ServerState) -> None:
    """Forget a server that is gone; its PostgreSQL, if that still runs (checked by ``postmaster``), stops."""
    stop_postgres(Path(state.postgres_data))
    (state_dir(root) / "state.json").unlink()


def start(
    root: Path,
    *,
    port: int | None = None,
    postgres_port: int | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: str | None = None,
    artifacts: str | None = None,
    auth: bool = False,
    workers: int = 2,
) -> ServerState:
    """Start PostgreSQL and the MLflow server for the repository at ``root``; returns what runs."""
    check_binding(host, allowed_hosts)
    if auth and importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError(
            "--auth: MLflow's basic authentication needs its auth extra (Flask-WTF), which is not "
            "installed: pip install 'mlflow[auth]'"
        )
    folder = state_dir(root)
    state_file = folder / "state.json"
    if state_file.is_file():
        state = read_state(root)
        if server_runs(state, state_file):
            raise DataError(
                f"{state_file}: a server is already running at {state.url} "
                f"(pid {state.mlflow_pid}); `glioseg server stop` first"
            )
        clear_stale(root, state)
    for option, value, address in (("--port", port, host), ("--postgres-port", postgres_port, "127.0.0.1")):
        if value:
            check_port_free(address, value, option)
    data, password_file = cluster_dir(root), folder / "postgres.password"
    password = cluster_password(data, password_file)
    postgres_port = postgres_port or free_port()
    start_postgres(data, postgres_port)
    process = None
    try:
        created = ensure_databases(
            postgres_port, password, [DATABASE, AUTH_DATABASE] if auth else [DATABASE], password_file, data
        )
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PGPASSFILE": str(write_pgpass(folder, postgres_port, password).resolve()),
        }
        env.pop("PGPASSWORD", None)  # libpq would prefer it to the password file
        credentials = None
        if auth:
            ini, credentials = auth_config(folder, postgres_port, AUTH_DATABASE in created)
            env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(ini.resolve()),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
            }  # CSRF: one key for all workers
        artifacts = artifacts or (folder / "artifacts").resolve().as_uri()
        port = port or free_port()
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        hosts = allowed_hosts or f"127.0.0.1:{port},localhost:{port}"
        log = folder / "mlflow.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    database_uri(postgres_port),
                    "--artifacts-destination",
                    artifacts,
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--allowed-hosts",
                    hosts,
                    *(["--app-name", "basic-auth"] if auth else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        start_time, cmdline = wait_until_serving(url, port, process, log)
    except BaseException:
        if process is not None:
            procfs.stop_group(process.pid)
            process.wait()
        stop_postgres(data)
        raise
    state = ServerState(
        url=url,
        mlflow_pid=process.pid,
        postgres_port=postgres_port,
        postgres_data=str(data),
        artifacts=artifacts,
        mlflow_start_time=start_time,
        mlflow_cmdline=cmdline,
        credentials=str(credentials) if credentials else None,
    )
    write_json(state_file, asdict(state))
    return state


def read_state(root: Path) -> ServerState:
    path = state_dir(root) / "state.json"
    if not path.is_file():
        raise DataError(f"{path}: no server started from this repository (`glioseg server start`)")
    return ServerState(**json.loads(path.read_text()))


def stop(root: Path) -> ServerState:
    """Stop what :func:`start` started, by process id; the database and artifacts stay for the next start."""
    state, path = read_state(root), state_dir(root) / "state.json"
    if not server_runs(state, path):
        clear_stale(root, state)
        raise DataError(
            f"{path}: the recorded server (pid {state.mlflow_pid}) is gone: that pid is now another "
            "process, left alone, or none; removed the stale state"
        )
    procfs.stop_group(state.mlflow_pid)
    stop_postgres(Path(state.postgres_data))
    path.unlink()
    return state


def remove(root: Path, *, yes: bool = False) -> list[Path]:
    """Delete the cluster (every run, model version, alias and user) and the server's files, refused while
    the server or its PostgreSQL runs; the artifacts stay. Returns what it deleted."""
    folder, data = state_dir(root), cluster_dir(root)
    state_file = folder / "state.json"
    if state_file.is_file() and server_runs(state := read_state(root), state_file):
        raise DataError(
            f"{state_file}: the server still runs at {state.url} (pid {state.mlflow_pid}); `glioseg server stop` first"
        )
    if (pid := postmaster(data)) is not None:
        raise DataError(f"{data}: PostgreSQL still runs on it (pid {pid}); `glioseg server stop` first")
    if not yes:
        raise ConfigError(
            f"`glioseg server remove` deletes the team database in {data} (every run, model version, "
            f"alias and user) and the server's files in {folder} (the artifacts stay); add --yes to "
            "do it"
        )
    doomed = [path for path in (data, *(folder / name for name in SERVER_FILES)) if path.exists()]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return doomed
