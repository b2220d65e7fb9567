"""Cooperative cancellation: SIGTERM/SIGINT set a token that the work loop checks between steps.

The first signal asks the work to stop at the next check (it then reports a "cancelled" error event
and exits 130, keeping the last good checkpoint). A second signal exits at once with 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tcurlora.errors import EXIT_CANCELLED, CancelledError


class CancelToken:
    """A thread-safe flag: `cancel()` sets it; loops call `raise_if_cancelled()` between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def raise_if_cancelled(self) -> None:
        """Raise CancelledError when cancellation was asked for."""
        if self._event.is_set():
            raise CancelledError(f"{self.reason}: stopped before finishing; nothing half-written was kept")


def _signals() -> list[signal.Signals]:
    names = ("SIGINT", "SIGTERM", "SIGBREAK")  # SIGBREAK: Ctrl+Break on Windows
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


@contextmanager
def handle_signals(token: CancelToken) -> Iterator[CancelToken]:
    """Route SIGINT/SIGTERM to `token` inside the block; the previous handlers come back on exit.

    Outside the main thread Python cannot install handlers: the block then runs without them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def on_signal(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if token.cancelled:
            sys.stderr.write(f"tcurlora: second {name}: exiting now\n")
            sys.stderr.flush()
            try:
                sys.stdout.flush()
            finally:
                os._exit(EXIT_CANCELLED)
        token.cancel(f"cancelled by {name}")
        sys.stderr.write(
            f"tcurlora: {name}: stopping at the next safe point (send it again to exit at once)\n"
        )
        sys.stderr.flush()

    previous = {sig: signal.getsignal(sig) for sig in _signals()}
    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield token
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
