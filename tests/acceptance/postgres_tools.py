"""PostgreSQL's own programs for tests that need more than the shared test server: a cluster of the test's own
(initdb, pg_ctl: it can be stopped and restarted under EDM) and PgBouncer in front of a server.

Both refuse to run as root; as root (CI), they run as the `postgres` OS user, in a folder it owns. A test that needs
one skips when the program is not installed, except in CI (`CI` set), where .ci/run installs it: there a missing
program fails the test instead of hiding it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(program: str | None, what: str) -> str:
    """`program`'s path, or skip (outside CI) / fail (in CI) naming `what` is missing."""
    if program:
        return program
    message = f"{what} is not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run installs it)")
    pytest.skip(message)


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(require(found[-1] if found else shutil.which("initdb"), "PostgreSQL's initdb")).parent


def _as_owner(command: list[str]) -> list[str]:
    """`command` as the `postgres` OS user when we are root (PostgreSQL and PgBouncer refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def owned_folder(prefix: str) -> Iterator[Path]:
    """A fresh folder under /tmp that the programs' user owns (pytest's tmp_path is root's and closed to others)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Cluster:
    """A PostgreSQL cluster in `folder`, listening on 127.0.0.1:`port` (trust authentication, user `postgres`).
    fsync is off: the tests stop it fast, never by pulling the plug, and its files are thrown away."""

    def __init__(self, folder: Path) -> None:
        self.bindir = postgres_bindir()
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_owner([str(self.bindir / args[0]), *args[1:]]), check=True, capture_output=True)

    def init(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """A started cluster of the test's own, stopped and deleted after."""
    with owned_folder("edm-pg-") as folder:
        own = Cluster(folder).init()
        own.start()
        try:
            yield own
        finally:
            if own.running():
                with contextlib.suppress(subprocess.CalledProcessError):
                    own.stop("immediate")


@contextlib.contextmanager
def pgbouncer(server_host: str, server_port: int, *, pool_size: int = 2) -> Iterator[int]:
    """PgBouncer in transaction mode in front of the server, `pool_size` server connections per database and user
    (every database, user `postgres`, trust); yields the port it listens on (loopback)."""
    binary = require(shutil.which("pgbouncer") or _existing("/usr/sbin/pgbouncer"), "PgBouncer")
    with owned_folder("edm-pgbouncer-") as folder:
        port = free_port()
        (folder / "users.txt").write_text('"postgres" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
            f"logfile = {folder / 'pgbouncer.log'}\n"
        )
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for name in ("users.txt", "pgbouncer.ini"):
                os.chown(folder / name, entry.pw_uid, entry.pw_gid)
        process = subprocess.Popen(
            _as_owner([binary, "-q", str(folder / "pgbouncer.ini")]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, process, folder / "pgbouncer.log")
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _existing(path: str) -> str | None:
    return path if Path(path).exists() else None


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError("pgbouncer did not start listening within 15 s")
