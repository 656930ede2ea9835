"""The tracking server's PostgreSQL: a project-local cluster made once, started and stopped by its postmaster.

TCP connections need ``USER``'s password (scram-sha-256), kept in a 0600 file and given to libpq by a
0600 password file, never on a command line. Started by root, its commands run as ``postgres``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from glioseg.errors import DataError
from glioseg.io import write_secret
from glioseg.tracking import procfs

DATABASE, AUTH_DATABASE, USER = "mlflow", "mlflow_auth", "glioseg"
START_OVER = "`glioseg server remove --yes` to delete it and start over with an empty database"


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
        _run(
            as_cluster_owner(
                [
                    postgres_tool("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "--encoding=UTF8",
                ]
            ),
            f"initdb {data}",
        )
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
        raise DataError(
            f"{data}: not a whole PostgreSQL cluster (its PG_VERSION is missing: damaged, half "
            f"restored, or an initdb cut short); start leaves it as it is: restore it, or {START_OVER}"
        )
    if not password_file.is_file():
        raise DataError(
            f"{password_file}: missing, but the cluster it opens, {data}, exists (a new clone at the "
            f"same path?); put the file back from the old clone or a backup, or {START_OVER}"
        )
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
    _run(
        as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        f"PostgreSQL in {data} (log {log})",
    )


def stop_postgres(data: Path, timeout: float = 30) -> None:
    """Stop the cluster's PostgreSQL, if it runs, and wait until its postmaster is gone (pg_ctl returns a
    moment before); a stale postmaster.pid whose pid another process now has is left alone."""
    pid = postmaster(data)
    if pid is None:
        return
    _run(
        as_cluster_owner([postgres_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
        f"stopping PostgreSQL in {data}",
    )
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
        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres", connect_timeout=30
        )
    except psycopg2.OperationalError as exc:
        if "password authentication failed" in str(exc):
            raise DataError(
                f"{password_file}: PostgreSQL in {data} refused this password; put back the file that "
                f"belongs to this cluster, or {START_OVER}"
            ) from None
        raise DataError(
            f"PostgreSQL in {data} (log {data / 'server.log'}): {str(exc).strip().splitlines()[0]}"
        ) from None
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
