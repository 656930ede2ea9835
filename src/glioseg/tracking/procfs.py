"""What Linux's ``/proc`` tells about a process: which process a pid is, its process group, its sockets.

``glioseg server`` stops what it started by the process ids it recorded, and a pid is reused once
its process is gone; so it signals a pid only while its start time (field 22 of
``/proc/<pid>/stat``, clock ticks after boot) and command line are the recorded ones. And a health
answer on the server's port counts only when a process of the server's group holds the socket
listening there: another program on the port answers just as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (the state) on: the name before it may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def identity(pid: int) -> tuple[int, list[str]] | None:
    """The start time and command line of the live process ``pid``; None for no process or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[19]), cmdline.decode(errors="replace").split("\0")[:-1]


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies are their parents' to reap)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def stop_group(pgid: int, timeout: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after ``timeout`` s; returns once none is left."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        if not group(pgid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sent)
        deadline = time.monotonic() + timeout
        while group(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
    with contextlib.suppress(ChildProcessError):  # the leader is our child when this process started it
        os.waitpid(pgid, os.WNOHANG)


def _listening_sockets(port: int) -> set[str]:
    """The sockets listening on TCP ``port`` (IPv4 and IPv6), as their ``/proc/<pid>/fd`` links read."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    sockets.add(f"socket:[{fields[9]}]")
    return sockets


def group_listens(pgid: int, port: int) -> bool:
    """Whether a process of group ``pgid`` holds a socket listening on TCP ``port``."""
    sockets = _listening_sockets(port)
    for pid in group(pgid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(fd) in sockets:
                        return True
    return False
