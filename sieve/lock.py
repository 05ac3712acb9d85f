"""One writer per folder: an OS lock on the folder's ``.lock`` file.

``fcntl.flock`` on a plain file inside the folder, taken without waiting, so a second process is
refused at once with who holds it (the file holds one line, ``PID … on host … since …``, while
held) and the lock is released on any exit, even SIGKILL. The file is opened with ``O_NOFOLLOW``
and refused when it is a link, a folder, or holds anything but that line: sieve never truncates a
file it did not write. A search's run directory and a tuning's output folder both hold one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sieve.errors import SieveError

LOCK = ".lock"


class FolderLock:
    def __init__(self, folder: Path, held_for: str) -> None:
        """``held_for``: the end of the refusal, e.g. ``one search per run directory``."""
        self.folder = folder
        self.held_for = held_for

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    def check_not_held(self) -> None:
        """Refuse, before anything is written, a folder another process holds or whose ``.lock`` is not sieve's."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        fd = self._open(os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._in_use(fd) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the folder for this process (created if missing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._in_use(fd) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n"
                      .encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open(self, flags: int) -> int:
        """The lock file, never through a link: a ``.lock`` that is a symbolic or hard link, not a
        plain file, or holds anything but sieve's one line is refused (it is never truncated)."""
        path = self.path
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SieveError(f"{path} is a symbolic link, not sieve's lock file; remove it") from None
            if exc.errno == errno.EISDIR:
                raise SieveError(f"{path} is a folder, not sieve's lock file; remove it") from None
            raise
        info = os.fstat(fd)
        text = os.pread(fd, 4096, 0) if stat.S_ISREG(info.st_mode) else b""
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1 or (text and not text.startswith(b"PID ")):
            os.close(fd)
            raise SieveError(f"{path} is not sieve's lock file (a plain file holding one 'PID …' line); remove it")
        return fd

    def _in_use(self, fd: int) -> SieveError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        return SieveError(f"{self.folder} is in use by {holder}; {self.held_for}")
