"""One run per output: an OS lock on `.NAME.lock` beside the output, released even when killed.

The lock is `flock` (POSIX) or `msvcrt.locking` (Windows) on an open file, so the OS drops it when
the process dies; the lock file is removed on release. While it is held, the run sweeps the stale
temporary folders an earlier, killed run with the same output left behind.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import TracebackType

from tcurlora.errors import OutputExistsError, OutputLockedError, OutputNotWritableError
from tcurlora.fsutil import current_umask, sweep_stale

# Never through a link: a link planted at the lock path must not let a run truncate or chmod its target.
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)


def lock_path(output: str | Path) -> Path:
    """`dir/.NAME.lock` for the output `dir/NAME`."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class OutputLock:
    """Context manager holding the lock of `output`; OutputLockedError when another run holds it."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock created, removed again if left empty

    def _refuse_foreign(self) -> OutputExistsError:
        return OutputExistsError(
            f"the lock path {self.path.name} is not a plain file tcurlora made (a link, a linked file or "
            "a special file); tcurlora never writes through it: remove it, or choose another output",
            self.path,
        )

    def _make_parents(self) -> None:
        missing = []
        folder = self.path.parent.absolute()
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputNotWritableError(
                f"cannot create the output folder: {error.strerror or error}", self.path.parent
            ) from error
        self._created = missing  # deepest first

    def _open(self) -> int:
        if self.path.is_symlink():
            raise self._refuse_foreign()
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o666 & ~current_umask())
        except OSError as error:
            if self.path.is_symlink():  # planted between the check and the open (O_NOFOLLOW: ELOOP)
                raise self._refuse_foreign() from error
            raise OutputNotWritableError(
                f"cannot write in {self.path.parent}: {error.strerror or error}", self.output
            ) from error
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a FIFO, a device, a hard link
            os.close(fd)
            raise self._refuse_foreign()
        return fd

    def acquire(self) -> OutputLock:
        self._make_parents()
        try:
            return self._acquire()
        except BaseException:
            self._remove_created()
            raise

    def _acquire(self) -> OutputLock:
        for _ in range(10):  # the holder may remove the file between our open and our lock: retry
            fd = self._open()
            if not _try_lock(fd):
                os.close(fd)
                raise OutputLockedError(
                    f"another tcurlora run is writing this output now (lock {self.path.name}); wait for it "
                    "or choose another output",
                    self.output,
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, 0o666 & ~current_umask())  # the open file itself, never a path
                try:  # the PID is for people; a full disk must not stop the run here
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass
                return self
            os.close(fd)
        raise OutputLockedError("could not take the output lock (it keeps changing)", self.output)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if sys.platform == "win32":  # Windows cannot remove an open file: close (unlock) first
            os.close(fd)
            self.path.unlink(missing_ok=True)
        else:
            try:
                self.path.unlink(missing_ok=True)  # removed while locked: a waiting run retries on a new file
            finally:
                os.close(fd)  # closing drops the lock
        self._remove_created()

    def _remove_created(self) -> None:
        """Remove the folders acquire created that are still empty (a run that failed wrote nothing)."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (the output is there) or gone: the folders above are kept too
        self._created = []

    def sweep(self, *related: Path) -> list[Path]:
        """Remove stale temporaries of the output and of `related` paths (e.g. its checkpoint folder)."""
        if self._fd is None:
            raise RuntimeError("sweep only while holding the lock")
        return [p for target in (self.output, *related) for p in sweep_stale(target)]

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
