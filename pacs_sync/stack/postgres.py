"""The local PostgreSQL server: its own cluster under ``<state_dir>/postgres``, start, stop, ping.

PostgreSQL refuses to run as root, so when the CLI runs as root (CI, containers) every server
command runs as the ``postgres`` system user that Debian's packages create.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from pg8000.native import identifier, literal

from pacs_sync import dbapi
from pacs_sync.db_errors import translate_db_error
from pacs_sync.errors import LocalStackError, PacsSyncError
from pacs_sync.stack import processes
from pacs_sync.stack.config_files import render_pg_hba, render_postgresql_conf
from pacs_sync.stack.settings import StackSettings

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
_SERVICE_USER = "postgres"


def find_bin_dir(configured: Path | None) -> Path:
    """The directory holding initdb and pg_ctl: configured, else the newest Debian version."""
    if configured is not None:
        if not (configured / "pg_ctl").exists():
            raise LocalStackError(f"PACS_STACK_POSTGRES_BIN_DIR={configured} has no pg_ctl")
        return configured
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not candidates:
        raise LocalStackError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; run `make install` "
            "(installs Debian's postgresql package) or set PACS_STACK_POSTGRES_BIN_DIR"
        )
    return max(candidates, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))


class PostgresServer:
    """A PostgreSQL cluster owned by this project: data, socket, log and superuser password file."""

    def __init__(self, settings: StackSettings) -> None:
        """Lay out the cluster's paths from the settings; nothing is touched yet."""
        self.settings = settings
        state = settings.state_dir.resolve()
        self.home = state / "postgres"
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "run"
        self.log_file = self.home / "postgresql.log"
        # Outside the server's 0700 home, so the (non-postgres) CLI user can read it.
        self.password_file = state / "secrets" / "postgres-superuser.password"

    @property
    def address(self) -> str:
        """The TCP listener, host:port."""
        return f"127.0.0.1:{self.settings.stack_postgres_port}"

    # ---- running commands as the right user ----

    @property
    def _as_service_user(self) -> bool:
        return os.geteuid() == 0

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", _SERVICE_USER, "--", *args] if self._as_service_user else args
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")
        if check and result.returncode != 0:
            raise LocalStackError(
                f"`{' '.join(args[:2])}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
                f"\ntail of {self.log_file}:\n{processes.tail(self.log_file)}"
            )
        return result

    def _prepare_ownership(self) -> None:
        """As root: give the cluster to the postgres user and let it reach the state dir."""
        if not self._as_service_user:
            return
        try:
            service = pwd.getpwnam(_SERVICE_USER)
        except KeyError as exc:
            raise LocalStackError(
                "no `postgres` system user: install Debian's postgresql package (`make install`)"
            ) from exc
        for ancestor in reversed(self.home.parents):
            mode = ancestor.stat().st_mode
            owned = ancestor.stat().st_uid == service.pw_uid
            if not owned and not mode & stat.S_IXOTH:
                # Search permission only (no listing), so the server can reach its own directory.
                logger.warning("granting search permission (o+x) on %s so PostgreSQL can reach it", ancestor)
                ancestor.chmod(mode | stat.S_IXOTH)
        for path in (self.home, self.socket_dir):
            os.chown(path, service.pw_uid, service.pw_gid)

    # ---- lifecycle ----

    def superuser_password(self) -> str:
        """The generated superuser password (created on first use, mode 0600)."""
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            self.password_file.parent.chmod(0o700)
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
            self.password_file.chmod(0o600)
        return self.password_file.read_text().strip()

    def ensure_cluster(self) -> bool:
        """Create the cluster if it does not exist; return True if it was created now."""
        bin_dir = find_bin_dir(self.settings.stack_postgres_bin_dir)
        for path in (self.home, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
        self._prepare_ownership()
        if (self.data_dir / "PG_VERSION").exists():
            return False
        pwfile = self.home / ".initdb-pw"
        pwfile.write_text(self.superuser_password() + "\n")
        if self._as_service_user:
            service = pwd.getpwnam(_SERVICE_USER)
            os.chown(pwfile, service.pw_uid, service.pw_gid)
        pwfile.chmod(0o600)
        try:
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        logger.info("created PostgreSQL cluster in %s", self.data_dir)
        return True

    def _write_config(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'pacs_sync.conf'"
        text = conf.read_text()
        if include not in text:
            conf.write_text(text + f"\n{include}\n")
        (self.data_dir / "pacs_sync.conf").write_text(
            render_postgresql_conf(port=self.settings.stack_postgres_port, socket_dir=self.socket_dir)
        )
        (self.data_dir / "pg_hba.conf").write_text(render_pg_hba())
        if self._as_service_user:
            service = pwd.getpwnam(_SERVICE_USER)
            for name in ("postgresql.conf", "pacs_sync.conf", "pg_hba.conf"):
                os.chown(self.data_dir / name, service.pw_uid, service.pw_gid)

    def running_pid(self) -> int | None:
        """The postmaster's pid if this cluster is running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (FileNotFoundError, ValueError, PermissionError):
            return None
        return pid if processes.is_running(pid, cmdline_contains=str(self.data_dir)) else None

    def start(self) -> bool:
        """Start the cluster if it is not running; return True if it was started now.

        Raises:
            LocalStackError: the server did not start or answer (the message has the log's tail).
        """
        self.ensure_cluster()
        if self.running_pid() is not None:
            return False
        self._write_config()
        bin_dir = find_bin_dir(self.settings.stack_postgres_bin_dir)
        timeout = str(int(self.settings.stack_start_timeout_s))
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                timeout,
                "start",
            ]
        )
        if not processes.wait_until(
            lambda: self.ping() is not None, timeout_s=self.settings.stack_start_timeout_s
        ):
            raise LocalStackError(
                f"PostgreSQL did not answer on {self.address}; tail of {self.log_file}:\n"
                f"{processes.tail(self.log_file)}"
            )
        logger.info("PostgreSQL started on %s", self.address)
        return True

    def stop(self) -> bool:
        """Stop this cluster (only this one); return True if it was running."""
        if self.running_pid() is None:
            return False
        bin_dir = find_bin_dir(self.settings.stack_postgres_bin_dir)
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        logger.info("PostgreSQL stopped")
        return True

    def purge(self) -> None:
        """Delete the cluster and its password."""
        shutil.rmtree(self.home, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)

    # ---- talking to it ----

    def connect(self, database: str = "postgres") -> dbapi.Connection:
        """A superuser connection over TCP (autocommit), for provisioning and the emulator's admin work."""
        return dbapi.connect(**connection_kwargs(self, database), timeout=5, autocommit=True)

    def ping(self) -> str | None:
        """Run a query; return the server's version line, or None if it does not answer."""
        if not self.password_file.exists():
            return None
        try:
            conn = self.connect()
        except PacsSyncError:
            return None
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT current_setting('server_version')")
            row = cursor.fetchone()
            return f"PostgreSQL {row[0]}" if row else None
        except dbapi.DriverError:
            return None
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def ensure_login(self, user: str, password: str, *, database: str | None = None) -> None:
        """Create (or re-password) a login role and, if named, a database it owns. Idempotent."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = ?", (user,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(f"{verb} ROLE {identifier(user)} LOGIN PASSWORD {literal(password)}")
            if database:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = ?", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {identifier(database)} OWNER {identifier(user)}")
                    logger.info("created database %s owned by %s", database, user)
        except dbapi.DriverError as exc:
            raise translate_db_error(exc, server=f"PostgreSQL {self.address}") from exc
        finally:
            conn.close()

    def ensure_database(self, database: str) -> None:
        """Create a database owned by the superuser if it does not exist. Idempotent."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = ?", (database,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {identifier(database)}")
                logger.info("created database %s", database)
        finally:
            conn.close()


def connection_kwargs(server: PostgresServer, database: str) -> dict[str, Any]:
    """Keyword arguments for a superuser DB-API connection to ``database`` on the local server."""
    return {
        "host": "127.0.0.1",
        "port": server.settings.stack_postgres_port,
        "user": SUPERUSER,
        "password": server.superuser_password(),
        "database": database,
    }
