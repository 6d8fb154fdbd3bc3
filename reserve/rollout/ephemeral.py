"""A throw-away PostgreSQL server for tests, rehearsals and benchmarks.

The one place that knows how to start PostgreSQL here: it finds the server
binaries, and when running as root (as CI does) it runs them as the
unprivileged ``postgres`` user via ``runuser``, with a data directory that
user owns, because PostgreSQL refuses to run as root. As a normal user it
runs them directly. The server listens on 127.0.0.1 and a private unix
socket only, with a random password for TCP logins.

A hot standby of such a server (``EphemeralPostgres.standby()``) is started
the same way, from ``pg_basebackup -R`` over the primary's unix socket: a
streaming replica on loopback, the password the primary's (its catalog is
the primary's).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

from reserve import db

SUPERUSER = "postgres"
SERVER_USER_WHEN_ROOT = "postgres"


class ServerError(RuntimeError):
    """The throw-away server could not be started."""


def find_bindir() -> Path:
    """PostgreSQL server binaries: $PG_BINDIR, else the reference major version, else PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates.append(f"/usr/lib/postgresql/{db.REFERENCE_MAJOR}/bin")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise ServerError("PostgreSQL server binaries not found: install postgresql-15 (make test does) or set PG_BINDIR")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_cron_settings(database: str) -> dict[str, str]:
    """Server settings that load pg_cron (Debian postgresql-15-cron) for jobs kept in ``database``; its jobs run
    in background workers (no login over the network, no password needed)."""
    return {"shared_preload_libraries": "pg_cron", "cron.database_name": database,
            "cron.use_background_workers": "on", "max_worker_processes": "16"}


@dataclass
class EphemeralPostgres:
    """Start with ``start()`` (or ``with``), stop and delete everything with ``stop()``."""

    fsync: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    user: str = SUPERUSER
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    workdir: Path | None = None
    # Set on a standby: the server it streams from (its data directory is a base backup of that one).
    primary: EphemeralPostgres | None = field(default=None, repr=False)
    _options: str = field(default="", repr=False)

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER_WHEN_ROOT, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir)
        if result.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def start(self) -> EphemeralPostgres:
        bindir = find_bindir()
        self.workdir = Path(tempfile.mkdtemp(prefix="reserve-pg-standby-" if self.primary else "reserve-pg-"))
        datadir, sockdir = self.workdir / "data", self.workdir / "socket"
        sockdir.mkdir()
        if self.as_root:
            owner = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            for path in (self.workdir, sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        if self.primary is None:
            self._initdb(bindir, datadir)
        else:
            self._base_backup(bindir, datadir)
        self.port = self.port or _free_port()
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(sockdir),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            **self.settings,
        }
        self._options = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        assert self.workdir is not None
        self._run(str(find_bindir() / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.workdir / "data"),
                  "-l", str(self.workdir / "server.log"), "-o", self._options)

    def crash_and_restart(self) -> None:
        """A server crash, for the fault tests: every backend killed at once (``pg_ctl stop -m immediate``, no
        checkpoint), then the server started again on the same data directory, which recovers from its WAL."""
        if self.workdir is None:
            raise ServerError("the server is not running")
        self._run(str(find_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.workdir / "data"))
        self._pg_ctl_start()

    def _initdb(self, bindir: Path, datadir: Path) -> None:
        assert self.workdir is not None
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.as_root:
            owner = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                str(bindir / "initdb"), "-D", str(datadir), "-U", self.user, "-E", "UTF8", "--no-locale",
                "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _base_backup(self, bindir: Path, datadir: Path) -> None:
        """The primary's data directory streamed over its unix socket (trusted locally, no password on any
        command line), with standby.signal and primary_conninfo written (-R)."""
        assert self.primary is not None and self.primary.workdir is not None
        self._run(str(bindir / "pg_basebackup"), "-h", str(self.primary.workdir / "socket"),
                  "-p", str(self.primary.port), "-U", self.primary.user, "-D", str(datadir),
                  "-R", "-X", "stream", "-c", "fast", "--no-sync")

    def standby(self, settings: dict[str, str] | None = None) -> EphemeralPostgres:
        """A hot standby streaming from this (running) server, not yet started: ``with primary.standby():``."""
        if self.workdir is None:
            raise ServerError("a standby needs its primary running")
        return EphemeralPostgres(settings=dict(settings or {}), user=self.user, password=self.password,
                                 primary=self)

    def stop(self) -> None:
        if self.workdir is None:
            return
        try:
            self._run(str(find_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.workdir / "data"))
        except ServerError:
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def url(self, dbname: str = "postgres") -> URL:
        """SQLAlchemy URL of ``dbname`` on this server, password included (never print it unmasked)."""
        return URL.create("postgresql+psycopg", self.user, self.password, self.host, self.port, dbname)

    def __enter__(self) -> EphemeralPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
