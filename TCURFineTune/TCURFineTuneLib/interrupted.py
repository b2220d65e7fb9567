"""Interrupted fine-tuning runs that can be resumed, remembered across Slicer sessions, and the sweep of
what killed runs left in the library's adapters folder.

A run stopped by Cancel, a failure, closing Slicer or reloading the module keeps its job, exported cases
and checkpoint; its job file is listed in `$TCURLORA_HOME/interrupted_runs.json`, so the panel offers
"Resume" when it opens next time. Staging folders, checkpoints and lock files that no live run holds and
no remembered run needs are removed when the panel opens.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tcurlora import library
from tcurlora.errors import InputError, OutputLockedError, OutputNotWritableError
from tcurlora.filenames import INTERRUPTED_RUNS_FILE, checkpoint_dir
from tcurlora.fsutil import atomic_write_json
from tcurlora.jsonio import read_json_object

# A staging output (library.staging_path) and everything named after it: its checkpoint, lock, temporaries.
_STAGING_ENTRY = re.compile(r"^\.?(\.staging-.+-[0-9a-f]{8})(\..*)?$")


def registry_path() -> Path:
    return library.library_root() / INTERRUPTED_RUNS_FILE


def _remembered() -> list[str]:
    path = registry_path()
    if not path.is_file():
        return []
    try:
        runs = read_json_object(path, "interrupted runs").get("runs")
    except InputError:  # damaged: start afresh rather than block the panel
        return []
    return [str(r) for r in runs] if isinstance(runs, list) else []


def _write(runs: list[str]) -> None:
    atomic_write_json(registry_path(), {"runs": runs})


def remember_interrupted(job_path: str | Path) -> None:
    """List an interrupted run's job so that Resume is offered, also after Slicer restarts."""
    from TCURFineTuneLib.run import can_resume

    job = str(Path(job_path))
    runs = [r for r in _remembered() if r != job and can_resume(r)]  # runs gone meanwhile are dropped
    _write([*runs, job])


def forget_interrupted(job_path: str | Path) -> None:
    """Drop a run from the list (it finished, was discarded, or cannot be resumed)."""
    job = str(Path(job_path))
    runs = _remembered()
    if job in runs:
        _write([r for r in runs if r != job])


def interrupted_runs() -> list[Path]:
    """The remembered runs that can still be resumed, oldest first (can_resume: job and checkpoint exist)."""
    from TCURFineTuneLib.run import can_resume

    return [Path(r) for r in _remembered() if can_resume(r)]


def resume_candidate(current: str) -> str:
    """The job the Resume button offers: the panel's own when it can be resumed, else the newest remembered."""
    from TCURFineTuneLib.run import can_resume

    if current and can_resume(current):
        return current
    runs = interrupted_runs()
    return str(runs[-1]) if runs else ""


def _kept_checkpoints() -> set[Path]:
    """The checkpoint folders the remembered runs resume from."""
    kept = set()
    for job in interrupted_runs():
        try:
            output = read_json_object(job, "fine-tuning job").get("output")
        except InputError:
            continue
        if output:
            kept.add(checkpoint_dir(output))
    return kept


def sweep_stale_staging() -> list[Path]:
    """Remove what killed runs left in the adapters folder (partial adapters, checkpoints no remembered run
    needs, lock files), skipping every output a live run holds the lock of; returns what was removed."""
    from tcurlora.output_lock import OutputLock

    folder = library.adapters_dir()
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for child in folder.iterdir():
        match = _STAGING_ENTRY.match(child.name)
        if match:
            groups.setdefault(match.group(1), []).append(child)
    kept = _kept_checkpoints()
    removed: list[Path] = []
    for name, entries in sorted(groups.items()):
        output = folder / name
        lock = OutputLock(output)
        try:
            lock.acquire()
        except (OutputLockedError, OutputNotWritableError):
            continue  # a run is writing it now
        try:
            for entry in entries:
                if entry == lock.path or entry in kept or not entry.exists():
                    continue
                try:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink(missing_ok=True)
                except OSError:  # not ours to remove (permissions): leave it, never block the panel
                    continue
                removed.append(entry)
        finally:
            lock.release()  # removes the lock file, stale or not
        if lock.path in entries:
            removed.append(lock.path)
    return removed
