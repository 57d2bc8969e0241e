"""Files that are either complete or absent, and a lock so one process at a time writes a run folder.

Every file transferkit writes goes through :func:`atomic_path`: the writer fills a hidden
temporary name in the same folder, which is flushed to disk and renamed onto the final name only
when the writer returned. A crash, an exception or a ``kill -9`` mid-write leaves the previous
file (or none), never half of one; a failed writer's temporary file is removed. A process killed
outright can leave a hidden ``.<name>.<pid>-<random>.tmp*`` file behind, never a final name.

:class:`RunLock` stops two processes from writing the same run folder. It takes an exclusive
``flock`` on ``<folder>/.transferkit.lock``; the kernel drops that lock when the process ends,
however it ends, so a killed run never leaves a stale lock. The lock file stays in the folder
after release (empty): deleting a file that others may be about to lock lets two processes each
lock a different inode of the "same" file.

Example:
    >>> with RunLock("runs/flowers"), atomic_path(Path("runs/flowers/model.keras"), keep_suffix=True) as tmp:
    ...     model.save(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from transferkit._errors import DataError, RunInUseError
from transferkit._types import PathLike

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("transferkit")

LOCK_FILE = ".transferkit.lock"

_NAME_ROOM = 180  # of the 255 bytes a file name may have, leave room for the temporary's additions


def _temporary(final: Path, *, keep_suffix: bool) -> Path:
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    return final.parent / f".{final.name[:_NAME_ROOM]}.{tag}.tmp{final.suffix if keep_suffix else ''}"


@contextlib.contextmanager
def atomic_path(final: PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path to write ``final`` through: it becomes ``final`` only if the block succeeds.

    The path yielded sits in ``final``'s folder (so the rename cannot cross file systems) under a
    hidden name, and does not exist yet: the writer creates it, as a file or as a folder (a
    SavedModel). When the block returns, the result is fsynced, renamed onto ``final`` and the
    folder fsynced; when it raises, the temporary is removed and the exception goes on.

    Args:
        final: The path the result should have. Its folder must exist.
        keep_suffix: End the temporary name with ``final``'s suffix, for writers that check it
            or add their own (``keras.Model.save`` needs ``.keras``, ``numpy.save`` appends
            ``.npy``, matplotlib picks the format from it).

    Example:
        >>> with atomic_path(run / "model.keras", keep_suffix=True) as tmp:
        ...     model.save(tmp)
    """
    with atomic_paths(final, keep_suffix=keep_suffix) as (temporary,):
        yield temporary


@contextlib.contextmanager
def atomic_paths(*finals: PathLike, keep_suffix: bool = False) -> Iterator[tuple[Path, ...]]:
    """:func:`atomic_path` for files that belong together (a model and its metadata).

    Every temporary is complete and on disk before the first rename, and the renames follow one
    another in the order given, so the moment in which one file is new and the next still old
    is as short as two system calls.

    Example:
        >>> with atomic_paths(run / "model.keras", run / "transferkit.json", keep_suffix=True) as (m, j):
        ...     model.save(m)
        ...     j.write_text(meta.to_json())
    """
    targets = [Path(f) for f in finals]
    temporaries = tuple(_temporary(t, keep_suffix=keep_suffix) for t in targets)
    try:
        yield temporaries
        for temporary, target in zip(temporaries, targets):
            if not os.path.lexists(temporary):
                raise FileNotFoundError(f"Nothing was written to {temporary}, so {target} was left as it was.")
            _sync_tree(temporary)
        for temporary, target in zip(temporaries, targets):
            _replace(temporary, target)
    except BaseException:
        for temporary in temporaries:
            _remove(temporary)
        raise
    for folder in dict.fromkeys(t.parent for t in targets):
        _sync_directory(folder)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; returns the path."""
    out = Path(path)
    with atomic_path(out) as temporary, open(temporary, "xb") as f:
        f.write(data)
    return out


def write_text_atomic(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (no newline translation); returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def _replace(temporary: Path, final: Path) -> None:
    if temporary.is_dir() and not temporary.is_symlink() and final.is_dir() and not final.is_symlink():
        # No system call swaps two folders: move the old one aside, the new one in, then delete
        # the old one. In between, the final name is missing for a moment, never incomplete.
        aside = final.parent / f".{final.name[:_NAME_ROOM]}.{os.getpid()}-{secrets.token_hex(4)}.old"
        os.replace(final, aside)
        try:
            os.replace(temporary, final)
        except BaseException:
            os.replace(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(temporary, final)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _sync_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            for name in files:
                _sync_file(Path(folder) / name)
            _sync_directory(Path(folder))
    elif not path.is_symlink():
        _sync_file(path)


def _sync_file(path: Path) -> None:
    # Windows' fsync (_commit) needs a handle open for writing; POSIX takes any descriptor.
    fd = os.open(path, (os.O_RDWR if os.name == "nt" else os.O_RDONLY) | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    except OSError as error:  # file systems that cannot sync (some FUSE mounts) still renamed fine
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (Windows cannot open a folder to sync it)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """Hold a run folder for this process; a second process trying to hold it gets :class:`RunInUseError`.

    The lock is ``fcntl.flock`` on ``<directory>/.transferkit.lock``, which also holds the
    holder's process id, host name and command line for the second process's message. The kernel
    releases it when the holding process exits or is killed, so there is never a stale lock to
    delete by hand. Locks are per open file: a second ``RunLock`` on the same folder in the same
    process is refused too. A process forked while holding the lock shares it until it exits.
    On network file systems the lock is only as good as the server's locking (NFSv4 is fine).

    On platforms without ``fcntl`` (Windows) the holder is still recorded but nothing is
    excluded: two processes can write the same folder there, each file still written atomically.

    Args:
        directory: The run folder (created if needed).

    Example:
        >>> with RunLock("runs/flowers"):
        ...     tuner.save("runs/flowers")
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunInUseError` naming the process that has it."""
        if self._fd is not None:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DataError(f"Cannot write to the run folder {str(self.directory)!r}: {error.strerror or error}. "
                            "Choose another --out.") from None
        try:
            if fcntl is not None:
                self._lock_or_raise(fd)
            else:
                log.warning("%s: this platform has no fcntl, so other processes are not kept out of this folder.",
                            self.directory)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(_holder()).encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the folder go (the lock file stays, empty). Releasing a lock not held does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still locked, so no reader mistakes the old holder for a new one
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    def _lock_or_raise(self, fd: int) -> None:
        holder: dict[str, Any] | None = None
        # The holder writes its name just after locking: give it a moment to appear.
        for _ in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as error:
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("%s: this file system does not support locks, so other processes are not kept "
                                "out of this folder.", self.directory)
                    return
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            holder = _read_holder(fd)
            if holder is not None:
                break
            time.sleep(0.05)
        if holder is None:
            who = "another process"
        else:
            command = " ".join(str(holder.get("command", "?")).split())
            if len(command) > 160:
                command = command[:159] + "…"
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')} ({command})"
        raise RunInUseError(f"{self.directory} is in use by {who} — wait for it to finish, or choose another --out.")


def _holder() -> dict[str, Any]:
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else sys.executable
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder recorded in the lock file, or ``None`` while it is being written or is a dead process's."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 65536).decode() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict):
        return None
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # a killed holder's record, not yet overwritten by the new holder
            return None
        except OSError:  # alive but not ours to signal
            pass
    return holder


@contextlib.contextmanager
def waiting_lock(path: PathLike) -> Iterator[float]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing) for the block, waiting
    while another process holds it; yields the seconds waited.

    Unlike :class:`RunLock`, which refuses a second holder, this makes the second one wait its
    turn: two processes about to compute the same thing do it one after the other, and the
    second finds the first one's result. The kernel drops the lock when its holder ends, however
    it ends. The file stays afterwards (see the module's note on deleting lock files). Without
    ``fcntl`` (Windows), or on a file system without locks, nothing waits.

    Example:
        >>> with waiting_lock(cache_dir / f"{key}.lock") as waited:
        ...     arrays = cache.compute(key, …)  # a hit when another process computed it meanwhile
    """
    start = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("%s: this file system does not support locks, so other processes do not wait for "
                            "this one.", path)
        yield time.monotonic() - start
    finally:
        os.close(fd)  # and with it the lock


_TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp(\.[^.]+)?$")


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete the temporaries that killed writers left in ``directory`` and its sub-folders.

    Call it only while holding the folder's :class:`RunLock`: then no other process is writing
    there, and every temporary name (``.<name>.<pid>-<hex>.tmp``) belongs to a writer that died.
    Returns the paths removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = [path for path in root.rglob(".*.tmp*") if _TEMPORARY.match(path.name)]
    for path in removed:
        _remove(path)
    return removed
