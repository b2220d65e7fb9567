"""What both panels do with their background run, without Qt so that slicer-core tests run it: whether a run
still works, what one timer tick shows, and stopping the runs when Slicer closes.

Standard library only at import: the module scripts import it before the Slicer-version check."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

POLL_MS = 200  # how often the panels' timers poll their run


class Tick(NamedTuple):
    """What one poll of a run shows: new log lines, the progress bar (maximum, value), and whether it ended."""

    lines: list[str]
    progress: tuple[int, int]
    finished: bool


def is_active(run: Any) -> bool:
    """True while a run exists and has not finished (the Start/Apply button then reads Cancel)."""
    return run is not None and not run.finished


def poll(run: Any) -> Tick:
    """Fold the run's new events into its state; the lines the log shows (events without text are skipped)."""
    from TCURLoRACommon.runs import event_text  # the backend's event helpers: not before the version check

    lines = [text for text in map(event_text, run.update()) if text]
    return Tick(lines, run.progress_bar(), run.finished)


def shutdown_active(runs: Iterable[Any]) -> list[Any]:
    """Stop every run still working, a couple of seconds at most each (Slicer is closing or reloading);
    returns the runs stopped. A fine-tuning keeps what Resume needs."""
    stopped = [run for run in runs if is_active(run)]
    for run in stopped:
        run.shutdown()
    return stopped
