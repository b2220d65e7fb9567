"""Errors the user can act on, each naming the file and the problem, and the exit codes they map to."""

from __future__ import annotations

from pathlib import Path

# Documented exit codes of every `tcurlora` command and of the worker process.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: unexpected exception
EXIT_USAGE = 2  # bad command line, bad job file or bad input data
EXIT_OUTPUT_EXISTS = 3  # output exists (no --force), is not ours to replace, another run holds it, or
# it could not be written completely (disk full): nothing that looks finished is left
EXIT_OUT_OF_MEMORY = 4  # the device ran out of memory even after retrying smaller
EXIT_CANCELLED = 130  # SIGINT or SIGTERM: stopped cleanly, last good checkpoint kept


class TCURLoRAError(Exception):
    """Base of all errors meant for the user. `kind` is a stable machine-readable name."""

    kind = "error"
    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(TCURLoRAError):
    """A missing, corrupt, unsupported or inconsistent input file or value."""

    kind = "input_error"


class ConfigError(TCURLoRAError):
    """A bad option, job file or adapter configuration."""

    kind = "config_error"


class FingerprintMismatchError(TCURLoRAError):
    """An adapter was trained on another base model than the one it is loaded onto."""

    kind = "fingerprint_mismatch"


class OutputExistsError(TCURLoRAError):
    """The output exists and overwriting was not asked for (--force)."""

    kind = "output_exists"
    exit_code = EXIT_OUTPUT_EXISTS


class OutputLockedError(TCURLoRAError):
    """Another run is writing the same output right now (its lock file is held)."""

    kind = "output_locked"
    exit_code = EXIT_OUTPUT_EXISTS


class OutputNotWritableError(TCURLoRAError):
    """The output cannot be created where it was asked for (permissions, a file in the way, read-only)."""

    kind = "output_not_writable"


class OutputWriteError(TCURLoRAError):
    """Writing an output failed part-way (disk full, file too large, I/O error); nothing was left in its place."""

    kind = "output_write_failed"
    exit_code = EXIT_OUTPUT_EXISTS


class DeviceOutOfMemoryError(TCURLoRAError):
    """The accelerator ran out of memory."""

    kind = "out_of_memory"
    exit_code = EXIT_OUT_OF_MEMORY


class CancelledError(TCURLoRAError):
    """The user stopped the work (SIGINT/SIGTERM)."""

    kind = "cancelled"
    exit_code = EXIT_CANCELLED
