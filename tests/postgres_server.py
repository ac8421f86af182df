"""A throwaway PostgreSQL server for tests: Debian's binaries (installed if missing), a tmp cluster, a free port.

    with postgres_server(tmp_path) as server:
        server.create_database("dagster", owner="dagster", password="dagster")
        psycopg2.connect(**server.connect_kwargs("dagster"))

A fresh CI machine may have no PostgreSQL: as root, `ensure_postgres_binaries` runs
`apt-get install -y postgresql` (after `apt-get update` if the package lists are stale);
otherwise, or if that fails, it raises with what to install. PostgreSQL refuses to run as
root, so as root the cluster belongs to the `postgres` system user the package creates.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port, managed_process

DEBIAN_PREFIX = Path("/usr/lib/postgresql")
SERVER_BINARIES = ("initdb", "postgres")
SERVICE_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    pass


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_postgres_bin_dir() -> Path | None:
    """The folder holding `initdb` and `postgres`: Debian's newest version first, then the PATH."""
    if DEBIAN_PREFIX.is_dir():
        for bin_dir in sorted(DEBIAN_PREFIX.glob("*/bin"), key=_version_key, reverse=True):
            if all((bin_dir / name).exists() for name in SERVER_BINARIES):
                return bin_dir
    initdb = shutil.which("initdb")
    if initdb:
        bin_dir = Path(initdb).resolve().parent
        if all((bin_dir / name).exists() for name in SERVER_BINARIES):
            return bin_dir
    return None


def _apt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def ensure_postgres_binaries() -> Path:
    """The PostgreSQL server binaries, installing Debian's `postgresql` if they are missing."""
    found = find_postgres_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, postgres) not found and not running as root to install them: "
            "run `apt-get install -y postgresql` (Debian/Ubuntu) or put initdb on the PATH"
        )
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL server binaries not found and there is no apt-get to install them")
    install = ("install", "-y", "--no-install-recommends", "postgresql")
    result = _apt(*install)
    if result.returncode != 0:  # a fresh machine has no (or stale) package lists
        update = _apt("update")
        result = _apt(*install) if update.returncode == 0 else update
    found = find_postgres_bin_dir()
    if result.returncode != 0 or found is None:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise PostgresUnavailable(
            "could not install PostgreSQL with `apt-get install -y postgresql` "
            f"(exit {result.returncode}):\n" + "\n".join(output)
        )
    return found


@dataclass
class PostgresServer:
    host: str
    port: int
    superuser: str
    bin_dir: Path
    data_dir: Path

    def connect_kwargs(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> dict:
        kwargs = {"host": self.host, "port": self.port, "dbname": dbname, "user": user or self.superuser}
        if password is not None:
            kwargs["password"] = password
        return kwargs

    def connect(self, dbname: str = "postgres", **kwargs):
        import psycopg2

        return psycopg2.connect(**self.connect_kwargs(dbname, **kwargs), connect_timeout=5)

    def accepts_connections(self) -> bool:
        try:
            self.connect().close()
            return True
        except Exception:
            return False

    def create_database(self, name: str, owner: str | None = None, password: str | None = None) -> None:
        from psycopg2 import sql

        connection = self.connect()
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                if owner is not None:
                    cursor.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(owner)), [password or owner]
                    )
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if owner is not None:
                    statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
                cursor.execute(statement)
        finally:
            connection.close()


@contextmanager
def postgres_server(log_dir: Path, startup_timeout: float = 60.0) -> Iterator[PostgresServer]:
    """initdb a cluster in a fresh tmp folder and run it on 127.0.0.1:<free port>; removed afterwards.

    Authentication is `trust` on loopback only: fine for a throwaway test server.
    """
    bin_dir = ensure_postgres_binaries()
    as_root = os.geteuid() == 0
    run_as = None
    if as_root:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as missing:
            raise PostgresUnavailable(
                f"running as root and there is no `{SERVICE_USER}` user to run PostgreSQL as "
                "(the Debian package creates it): reinstall postgresql or run the tests as a normal user"
            ) from missing
        run_as = SERVICE_USER
    # Not under pytest's tmp folders: those are private to the test user, and the server user
    # must be able to reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="test-postgres-"))
    try:
        data_dir = base / "data"
        if as_root:
            shutil.chown(base, SERVICE_USER, SERVICE_USER)
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, user=run_as, timeout=120,
        )
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed (exit {initdb.returncode}):\n{initdb.stdout}{initdb.stderr}")
        port = free_port()
        server = PostgresServer("127.0.0.1", port, "postgres", bin_dir, data_dir)
        args = [
            str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]
        # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
        with managed_process(args, log_dir / "postgres.log", name="postgres", user=run_as,
                             stop_signal=signal.SIGINT) as process:
            process.wait_ready(server.accepts_connections, timeout=startup_timeout)
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)
