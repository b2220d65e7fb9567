"""The entry points that start a torchrun rank's run: `finetune`, `segment` and `pretrain` on one rank each.

They sit above the training modules they start, apart from the primitives in tcurlora.distributed that
the training modules call, so that training never imports what starts it. Each joins the process group,
runs the ordinary command on this rank's share, leaves the group together with the other ranks, and
turns a lost peer or torchrun's SIGTERM into a DistributedError that says what is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tcurlora.distributed import DistributedError, RankSink, init, is_writer, rank, world
from tcurlora.errors import TCURLoRAError


def _lost_peers(error: Exception, consequence: str = "") -> Exception:
    """What a rank raises when a collective failed: `error` itself when it is ours or out of memory, else a
    DistributedError saying another process failed (and `consequence`, what is kept and what is not)."""
    if isinstance(error, TCURLoRAError) or "out of memory" in str(error).lower():
        return error
    return DistributedError(
        f"process {rank()} of {world()} lost its peers ({type(error).__name__}: {str(error)[:200]}): another "
        f"process of the run failed or was killed (see its output){consequence}"
    )


def run_finetune(job: Any, sink: Any, token: Any) -> dict[str, Any]:
    """`tcurlora finetune` on one rank of a torchrun run (see the module docstring)."""
    from tcurlora.finetuning import Trainer, checkpoint_dir, validate_output
    from tcurlora.finetuning_setup import prepare_training
    from tcurlora.output_lock import OutputLock

    init(job)
    output = Path(job.output)
    try:
        lock = OutputLock(output) if is_writer() else contextlib.nullcontext()
        with lock as held:
            if held is not None:
                held.sweep(checkpoint_dir(output))
            validate_output(output, job.force, job.resume)
            setup = prepare_training(job, sink if is_writer() else RankSink())
            result = Trainer(job, setup, sink if is_writer() else RankSink(), token).run(output)
        # Leave together: a rank that tears its gloo group down while rank 0 still writes the adapter can
        # abort ("terminate called without an active exception", seen in CI).
        dist.barrier()
        return result
    except (RuntimeError, dist.DistBackendError) as error:
        raise _lost_peers(error, "; no adapter was written, the last checkpoint is kept") from error
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def run_segment(job: Any, sink: Any, token: Any) -> dict[str, Any]:
    """`tcurlora segment` on one rank of a torchrun run: this rank's share of the volumes."""
    import dataclasses

    from tcurlora.segmentation import run_segment as segment_all

    init(job)
    outputs = job.output_paths()
    mine = list(range(rank(), len(job.inputs), world()))
    try:
        result: dict[str, Any] = {"outputs": {"segmentations": []}, "metrics": {"seconds_per_volume": []}}
        if mine:
            part = dataclasses.replace(
                job, inputs=[job.inputs[i] for i in mine], outputs=[outputs[i] for i in mine], output_dir=None
            )
            if is_writer():
                sink.log(
                    "info", f"{world()} processes: rank 0 segments {len(mine)} of {len(job.inputs)} volumes"
                )
            result = segment_all(part, sink if is_writer() else RankSink(), token)
        shares: list[Any] = [None] * world()
        dist.all_gather_object(
            shares,
            (mine, result["outputs"]["segmentations"], result["metrics"].get("seconds_per_volume", [])),
        )
    except (RuntimeError, dist.DistBackendError) as error:
        raise _lost_peers(error) from error
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    if not is_writer():
        return {"outputs": {}, "metrics": {}}
    written: list[str | None] = [None] * len(job.inputs)
    seconds: list[float | None] = [None] * len(job.inputs)
    for indices, paths, times in shares:
        for index, path, spent in zip(indices, paths, times):
            written[index], seconds[index] = path, spent
    return {
        "outputs": {"segmentations": written},
        "metrics": {**result["metrics"], "seconds_per_volume": seconds, "processes": world()},
    }


def run_pretrain(
    config: Any, data_root: Path, output: Path, *, device_name: str = "auto", log: Any = print, **options: Any
) -> dict[str, Any]:
    """`tcurlora pretrain` on one rank of a torchrun run (tcurlora.pretraining.run.run_pretrain does the sharding);
    rank 0 alone logs and writes checkpoints and the model folder."""
    from types import SimpleNamespace

    from tcurlora.pretraining.run import run_pretrain as pretrain

    consequence = "; no model folder was written, the last checkpoint is kept"
    job = SimpleNamespace(device=device_name, batch_size=config.batch_size)
    init(job)
    try:
        with _sigterm_raises(consequence):
            result = pretrain(
                config,
                data_root,
                output,
                device_name=job.device,
                log=log if is_writer() else _quiet,
                **options,
            )
            dist.barrier()  # leave together (see run_finetune)
        return result
    except (RuntimeError, dist.DistBackendError) as error:
        raise _lost_peers(error, consequence) from error
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _quiet(_message: str) -> None:
    """The log of ranks other than 0: their errors still reach stderr (tcurlora.cli)."""


@contextlib.contextmanager
def _sigterm_raises(consequence: str) -> Iterator[None]:
    """SIGTERM (torchrun's stop when another process failed, or a cancel) raises a DistributedError saying
    so, instead of ending the process without a word."""
    import signal

    def stop(signum: int, _frame: Any) -> None:
        raise DistributedError(
            f"process {rank()} of {world()} was stopped by {signal.Signals(signum).name}: torchrun stops every "
            f"process when one of them fails (see its output), or the run was cancelled{consequence}"
        )

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
