"""Run one command handler and turn its result or failure into a final event and an exit code.

| outcome                                   | event              | exit code |
|-------------------------------------------|--------------------|-----------|
| handler returns {"outputs", "metrics"}    | done               | 0         |
| TCURLoRAError (InputError, ConfigError...) | error, its `kind`  | its code  |
| CancelledError, KeyboardInterrupt         | error "cancelled"  | 130       |
| torch / CUDA out of memory, MemoryError   | error "out_of_memory" | 4      |
| anything else (a bug)                     | error "internal", traceback on stderr | 1 |
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from tcurlora.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    CancelledError,
    DeviceOutOfMemoryError,
    TCURLoRAError,
)
from tcurlora.jobs.cancel import CancelToken, handle_signals
from tcurlora.jobs.events import EventSink, make_sink

Handler = Callable[[Any, EventSink, CancelToken], dict]

CUDA_OOM_MESSAGE = "CUDA out of memory: use a smaller patch_size or batch_size, or device cpu"
CPU_OOM_MESSAGE = "out of memory on the CPU: use a smaller patch_size or batch_size, or close other programs"


def is_device_oom(error: BaseException) -> bool:
    """Whether `error` is torch's out-of-memory error (any accelerator), without importing torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        classes = tuple(
            c
            for c in (
                getattr(torch, "OutOfMemoryError", None),
                getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
            )
            if c
        )
        if classes and isinstance(error, classes):
            return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def is_cpu_oom(error: BaseException) -> bool:
    """Whether `error` is the host running out of memory: MemoryError, or torch's CPU allocator failing
    (a RuntimeError "DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error).lower()
    )


def as_user_error(error: BaseException) -> TCURLoRAError | None:
    """The TCURLoRAError that `error` stands for, or None when it is a bug."""
    if isinstance(error, TCURLoRAError):
        return error
    if isinstance(error, KeyboardInterrupt):
        return CancelledError("cancelled by SIGINT: stopped before finishing")
    for cause in _causes(error):  # MONAI wraps a transform's failure: "applying transform ..."
        if is_cpu_oom(cause):
            return DeviceOutOfMemoryError(CPU_OOM_MESSAGE)
        if is_device_oom(cause):
            return DeviceOutOfMemoryError(CUDA_OOM_MESSAGE)
    return None


def _causes(error: BaseException, limit: int = 8) -> list[BaseException]:
    """`error` and the errors it was raised from (explicit causes), outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < limit:
        chain.append(chain[-1].__cause__)
    return chain


def report_error(sink: EventSink, error: BaseException) -> int:
    """Emit the error event for `error` and return its exit code; bugs get their traceback on stderr."""
    user_error = as_user_error(error)
    if user_error is not None:
        kind, message, path, code = user_error.kind, user_error.problem, user_error.path, user_error.exit_code
    else:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        kind, message, path, code = "internal", f"{type(error).__name__}: {error}", None, EXIT_INTERNAL
    try:
        sink.error(kind, message, path, code)
    except Exception:  # noqa: BLE001 - the reader may be gone (broken pipe); the exit code still tells
        print(f"tcurlora: {kind}: {message}", file=sys.stderr)
    return code


def run_command(job: Any, sink: EventSink, token: CancelToken, handler: Handler) -> int:
    """Run `handler(job, sink, token)`, then emit `done` (exit 0) or `error` (its exit code)."""
    try:
        result = handler(job, sink, token)
        if not isinstance(result, dict) or not isinstance(result.get("outputs"), dict):
            raise TypeError(f"handler returned {result!r}; expected a dict with 'outputs' and 'metrics'")
        sink.done(result["outputs"], result.get("metrics") or {})
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - every failure becomes an event
        return report_error(sink, error)
    return EXIT_OK


def run_cli(
    build_job: Callable[[], Any],
    events: bool,
    handler: Handler,
    stream: TextIO | None = None,
    sink: EventSink | None = None,
) -> int:
    """What `tcurlora finetune|segment` do: build the job, then run it with signals routed to a token.

    Errors while building the job (bad flags, bad job file) are reported as error events too, so a
    program reading `--events` output always gets a final `done` or `error` line. `sink` replaces the
    one `events` and `stream` choose (torchrun's ranks other than 0 report only their errors).
    """
    stream = stream if stream is not None else sys.stdout
    if sink is None:
        sink = make_sink(events, stream, sys.stderr if stream is sys.stdout else None)
    token = CancelToken()
    try:
        job = build_job()
    except Exception as error:  # noqa: BLE001 - a reader of --events always gets a final event
        return report_error(sink, error)
    with handle_signals(token):
        return run_command(job, sink, token, handler)
