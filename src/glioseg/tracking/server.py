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
from glioseg.io import write_json
from glioseg.tracking import procfs

DATABASE, AUTH_DATABASE, USER, ADMIN = "mlflow", "mlflow_auth", "glioseg", "admin"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# What the server keeps in its state folder besides the artifacts (`remove` deletes these).
SERVER_FILES = ("state.json", "postgres.password", "pgpass", "auth.ini", "admin.env", "mlflow.log")
START_OVER = "`glioseg server remove --yes` to delete it and start over with an empty database"


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
            raise ConfigError(f"{option} {port}: {host}:{port} is taken by another program ({exc.strerror.lower()}); "
                              f"choose another port, or leave {option} out for a free one") from None


def write_secret(path: Path, text: str) -> None:
    """``text`` in a file only its owner reads: 0600 from its creation on, never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    os.replace(partial, path)


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
    write_secret(password_file, secrets.token_urlsafe(24))
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


def cluster_password(data: Path, password_file: Path) -> str:
    """The password of the cluster in ``data``, making the cluster first where there is none.

    An existing folder is never removed or rewritten here: it may hold the team's only copy of its
    runs, model versions and aliases, so a damaged one is for a person to restore or remove.
    """
    if not data.exists():
        init_cluster(data, password_file)
    elif not (data / "PG_VERSION").is_file():
        raise DataError(f"{data}: not a whole PostgreSQL cluster (its PG_VERSION is missing: damaged, half "
                        f"restored, or an initdb cut short); start leaves it as it is: restore it, or {START_OVER}")
    if not password_file.is_file():
        raise DataError(f"{password_file}: missing, but the cluster it opens, {data}, exists (a new clone at the "
                        f"same path?); put the file back from the old clone or a backup, or {START_OVER}")
    return password_file.read_text().strip()


def postmaster(data: Path) -> int | None:
    """The pid of the PostgreSQL serving ``data``: its postmaster.pid's, while that process is it."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    found = procfs.identity(pid)
    return pid if found is not None and str(data) in found[1] else None


def start_postgres(data: Path, port: int) -> None:
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    log = data / "server.log"  # beside the cluster: the postgres user may not reach the repository
    _run(as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
         f"PostgreSQL in {data} (log {log})")


def stop_postgres(data: Path, timeout: float = 30) -> None:
    """Stop the cluster's PostgreSQL, if it runs, and wait until its postmaster is gone (pg_ctl returns a
    moment before); a stale postmaster.pid whose pid another process now has is left alone."""
    pid = postmaster(data)
    if pid is None:
        return
    _run(as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
         f"stopping PostgreSQL in {data}")
    deadline = time.monotonic() + timeout
    while procfs.identity(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def database_uri(port: int, database: str = DATABASE) -> str:
    """A URI without the password: libpq reads it from the ``PGPASSFILE`` the server is given."""
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{database}"


def ensure_databases(port: int, password: str, names: list[str], password_file: Path, data: Path) -> set[str]:
    """Create those of the databases ``names`` that do not exist; returns the ones it created."""
    import psycopg2

    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres",
                                      connect_timeout=30)
    except psycopg2.OperationalError as exc:
        if "password authentication failed" in str(exc):
            raise DataError(f"{password_file}: PostgreSQL in {data} refused this password; put back the file that "
                            f"belongs to this cluster, or {START_OVER}") from None
        raise DataError(f"PostgreSQL in {data} (log {data / 'server.log'}): {str(exc).strip().splitlines()[0]}") \
            from None
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    created = set()
    try:
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {name}")
                    created.add(name)
    finally:
        connection.close()
    return created


def write_pgpass(folder: Path, port: int, password: str) -> Path:
    """The libpq password file the MLflow server's connections read (0600, or libpq ignores it)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    path = folder / "pgpass"
    write_secret(path, f"127.0.0.1:{port}:*:{USER}:{escaped}\n")
    return path


def auth_config(folder: Path, port: int, new_user_store: bool) -> tuple[Path, Path]:
    """The basic-auth app's ini (users in ``AUTH_DATABASE``) and the admin's credentials file, both 0600.

    MLflow creates the admin, with the ini's password, only in an empty user store, so the password
    is made with the store and kept; without it nobody administers the users.
    """
    credentials = folder / "admin.env"
    if new_user_store:
        write_secret(credentials, f"MLFLOW_TRACKING_USERNAME={ADMIN}\n"
                                  f"MLFLOW_TRACKING_PASSWORD={secrets.token_urlsafe(24)}\n")
    elif not credentials.is_file():
        raise DataError(f"{credentials}: missing, but the users of --auth exist (database {AUTH_DATABASE}); put the "
                        "file back from the old clone or a backup (the admin's password is nowhere else), or start "
                        "without --auth")
    password = dict(line.split("=", 1) for line in credentials.read_text().splitlines())["MLFLOW_TRACKING_PASSWORD"]
    ini = folder / "auth.ini"
    write_secret(ini, "[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = {database_uri(port, AUTH_DATABASE)}\n"
                      f"admin_username = {ADMIN}\nadmin_password = {password}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return ini, credentials


def check_binding(host: str, allowed_hosts: str | None) -> None:
    """Loopback by default; any other address needs the Host names the server may be reached by."""
    if host not in LOOPBACK and not allowed_hosts:
        raise ConfigError(f"--host {host}: listening beyond this machine needs --allowed-hosts (the names clients "
                          "use, e.g. 'mlflow.lab.example:5000'); put a reverse proxy with TLS in front of it, and "
                          "give --auth")


def wait_until_serving(url: str, port: int, process: subprocess.Popen, log: Path,
                       timeout: float = 180) -> tuple[int, list[str]]:
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
            raise DataError(f"{url}: another program answers there, not the mlflow server started (pid "
                            f"{process.pid}, log {log}); choose another --port")
        if time.monotonic() > deadline:
            raise DataError(f"mlflow server did not answer {url}/health within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def server_runs(state: ServerState, path: Path) -> bool:
    """Whether the recorded server still runs: a process with its pid, start time and command line."""
    found = procfs.identity(state.mlflow_pid)
    if found is None:
        return False
    if state.mlflow_start_time is None:
        raise DataError(f"{path}: written by an older glioseg, which did not record which process pid "
                        f"{state.mlflow_pid} is; if it is the mlflow server (ps -o args -p {state.mlflow_pid}), "
                        f"stop it by hand, then delete {path}")
    return found == (state.mlflow_start_time, state.mlflow_cmdline)


def clear_stale(root: Path, state: ServerState) -> None:
    """Forget a server that is gone; its PostgreSQL, if that still runs (checked by ``postmaster``), stops."""
    stop_postgres(Path(state.postgres_data))
    (state_dir(root) / "state.json").unlink()


def start(root: Path, *, port: int | None = None, postgres_port: int | None = None, host: str = "127.0.0.1",
          allowed_hosts: str | None = None, artifacts: str | None = None, auth: bool = False,
          workers: int = 2) -> ServerState:
    """Start PostgreSQL and the MLflow server for the repository at ``root``; returns what runs."""
    check_binding(host, allowed_hosts)
    if auth and importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError("--auth: MLflow's basic authentication needs its auth extra (Flask-WTF), which is not "
                          "installed: pip install 'mlflow[auth]'")
    folder = state_dir(root)
    state_file = folder / "state.json"
    if state_file.is_file():
        state = read_state(root)
        if server_runs(state, state_file):
            raise DataError(f"{state_file}: a server is already running at {state.url} "
                            f"(pid {state.mlflow_pid}); `glioseg server stop` first")
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
        created = ensure_databases(postgres_port, password, [DATABASE, AUTH_DATABASE] if auth else [DATABASE],
                                   password_file, data)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
               "PGPASSFILE": str(write_pgpass(folder, postgres_port, password).resolve())}
        env.pop("PGPASSWORD", None)  # libpq would prefer it to the password file
        credentials = None
        if auth:
            ini, credentials = auth_config(folder, postgres_port, AUTH_DATABASE in created)
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini.resolve()),
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}  # CSRF: one key for all workers
        artifacts = artifacts or (folder / "artifacts").resolve().as_uri()
        port = port or free_port()
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        hosts = allowed_hosts or f"127.0.0.1:{port},localhost:{port}"
        log = folder / "mlflow.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database_uri(postgres_port),
                 "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
                 "--workers", str(workers), "--allowed-hosts", hosts, *(["--app-name", "basic-auth"] if auth else [])],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        start_time, cmdline = wait_until_serving(url, port, process, log)
    except BaseException:
        if process is not None:
            procfs.stop_group(process.pid)
            process.wait()
        stop_postgres(data)
        raise
    state = ServerState(url=url, mlflow_pid=process.pid, postgres_port=postgres_port, postgres_data=str(data),
                        artifacts=artifacts, mlflow_start_time=start_time, mlflow_cmdline=cmdline,
                        credentials=str(credentials) if credentials else None)
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
        raise DataError(f"{path}: the recorded server (pid {state.mlflow_pid}) is gone: that pid is now another "
                        "process, left alone, or none; removed the stale state")
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
        raise DataError(f"{state_file}: the server still runs at {state.url} (pid {state.mlflow_pid}); "
                        "`glioseg server stop` first")
    if (pid := postmaster(data)) is not None:
        raise DataError(f"{data}: PostgreSQL still runs on it (pid {pid}); `glioseg server stop` first")
    if not yes:
        raise ConfigError(f"`glioseg server remove` deletes the team database in {data} (every run, model version, "
                          f"alias and user) and the server's files in {folder} (the artifacts stay); add --yes to "
                          "do it")
    doomed = [path for path in (data, *(folder / name for name in SERVER_FILES)) if path.exists()]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return doomed
