"""One run per output: an OS lock on `.NAME.lock` beside the output, released even when killed.

The lock is `flock` (POSIX) or `msvcrt.locking` (Windows) on an open file, so the OS drops it when
the process dies; the lock file is removed on release. While it is held, the run sweeps the stale
temporary folders an earlier, killed run with the same output left behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from tcurlora.errors import OutputLockedError, OutputNotWritableError
from tcurlora.fsutil import apply_umask, sweep_stale


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

    def acquire(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputNotWritableError(
                f"cannot create the output folder: {error.strerror or error}", self.path.parent
            ) from error
        for _ in range(10):  # the holder may remove the file between our open and our lock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise OutputNotWritableError(
                    f"cannot write in {self.path.parent}: {error.strerror or error}", self.output
                ) from error
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
                apply_umask(self.path, directory=False)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
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
            return
        try:
            self.path.unlink(missing_ok=True)  # removed while locked: a waiting run retries on a new file
        finally:
            os.close(fd)  # closing drops the lock

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
