"""Event sinks, cancellation by signals, run_command's exit codes and the finetune/segment plumbing."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tcurlora.commands import finetune as finetune_cmd
from tcurlora.commands import segment as segment_cmd
from tcurlora.errors import (
    CancelledError,
    ConfigError,
    DeviceOutOfMemoryError,
    FingerprintMismatchError,
    InputError,
    OutputExistsError,
)
from tcurlora.jobs.cancel import CancelToken, handle_signals
from tcurlora.jobs.event_schema import parse_event_line
from tcurlora.jobs.events import (
    JsonLinesSink,
    PlainTextSink,
    ProgressBarSink,
    RecordingSink,
    TeeSink,
    eta_seconds,
    make_sink,
)
from tcurlora.jobs.runner import run_command
from tcurlora.jobs.schema import FinetuneJob, SegmentJob

REPO = Path(__file__).resolve().parents[1]


def emit_all(sink) -> None:
    sink.started("finetune", "cpu", 4, {"total": 1000, "trainable": 10, "trainable_percent": 1.0, "head": 3})
    sink.log("info", "loaded 2 cases")
    sink.progress(iteration=1, total=4, loss=0.9, lr=1e-3)
    sink.progress(
        iteration=2, total=4, loss=float("nan"), val_dice={"Anterior": 0.75, "Posterior": 0.5}, eta_s=65.0
    )
    sink.checkpoint(iteration=2, path=Path("/tmp/ckpt"))
    sink.log("warning", "slow disk")
    sink.done({"adapter": "/tmp/adapter"}, {"final_loss": 0.25, "hd95": float("inf")})
    sink.error("input_error", "bad label", "/data/x.nii.gz", 2)


def test_json_lines_sink_output_parses_line_by_line():
    stream = io.StringIO()
    emit_all(JsonLinesSink(stream))
    lines = stream.getvalue().splitlines()
    events = [parse_event_line(line) for line in lines]
    assert [e["event"] for e in events] == [
        "started",
        "log",
        "progress",
        "progress",
        "checkpoint",
        "log",
        "done",
        "error",
    ]
    assert events[0]["parameters"]["trainable"] == 10
    assert events[2]["loss"] == 0.9 and events[2]["val_dice"] is None and events[2]["lr"] == 1e-3
    assert events[3]["loss"] is None  # NaN is not JSON: written as null
    assert events[3]["val_dice"] == {"Anterior": 0.75, "Posterior": 0.5}
    assert events[4]["path"] == "/tmp/ckpt"
    assert events[6]["metrics"] == {"final_loss": 0.25, "hd95": None}
    assert events[7] == {**events[7], "kind": "input_error", "path": "/data/x.nii.gz", "exit_code": 2}
    assert all(isinstance(e["time"], float) for e in events)
    assert "NaN" not in stream.getvalue() and "Infinity" not in stream.getvalue()


def test_sinks_refuse_invalid_events():
    with pytest.raises(ValueError, match="level must be one of info, warning"):
        JsonLinesSink(io.StringIO()).log("debug", "x")
    with pytest.raises(ValueError, match="iteration <= total"):
        RecordingSink().progress(iteration=5, total=4)


def test_json_lines_sink_is_thread_safe():
    stream = io.StringIO()
    sink = JsonLinesSink(stream)

    def work(worker: int) -> None:
        for i in range(200):
            sink.log("info", f"worker {worker} line {i} " + "x" * 200)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = [parse_event_line(line)["message"] for line in stream.getvalue().splitlines()]
    assert len(messages) == 800
    assert {m.split(" line")[0] for m in messages} == {f"worker {w}" for w in range(4)}


def test_recording_and_tee_sinks():
    recording, stream = RecordingSink(), io.StringIO()
    emit_all(TeeSink(recording, JsonLinesSink(stream)))
    assert len(recording.events) == 8
    assert [e["iteration"] for e in recording.of_kind("progress")] == [1, 2]
    assert [json.loads(line) for line in recording.to_jsonl().splitlines()] == recording.events
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == recording.events


def test_progress_bar_sink_rewrites_one_line():
    stream = io.StringIO()
    emit_all(ProgressBarSink(stream, bar_width=8))
    text = stream.getvalue()
    assert text.startswith(
        "finetune on cpu: 10 of 1,000 parameters trainable (1.000%), head 3\nloaded 2 cases\n"
    )
    assert "\r[##------]  1/4  loss 0.9000  lr 1.00e-03" in text
    assert "\r[####----]  2/4  Dice Anterior 0.750 Posterior 0.500  ETA 1m05s" in text
    # The bar line is ended before the next plain line.
    assert (
        "ETA 1m05s\ncheckpoint at iteration 2: /tmp/ckpt\nwarning: slow disk\ndone: adapter: /tmp/adapter\n"
        in text
    )
    assert text.endswith("error (input_error): /data/x.nii.gz: bad label\n")


def test_plain_text_sink_prints_one_line_per_event():
    stream = io.StringIO()
    emit_all(PlainTextSink(stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8
    assert lines[2] == "1/4  loss 0.9000  lr 1.00e-03"
    assert "\r" not in stream.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_sink_choice():
    assert isinstance(make_sink(True, FakeTerminal()), JsonLinesSink)
    assert isinstance(make_sink(True, io.StringIO()), JsonLinesSink)
    assert isinstance(make_sink(False, FakeTerminal()), ProgressBarSink)
    assert isinstance(make_sink(False, io.StringIO()), PlainTextSink)


def test_eta_uses_mean_step_time():
    assert eta_seconds(0.0, 0, 10) is None  # no step finished yet
    assert eta_seconds(4.0, 2, 8) == pytest.approx(16.0)  # 2 s per step, 8 steps left
    assert eta_seconds(10.0, 5, 5) == pytest.approx(10.0)
    assert eta_seconds(20.0, 10, 0) == 0.0


# -------------------------------------------------------------------------------------- cancellation
def test_token_raises_cancelled_error():
    token = CancelToken()
    token.raise_if_cancelled()
    token.cancel("cancelled by SIGTERM")
    assert token.cancelled
    with pytest.raises(CancelledError, match="cancelled by SIGTERM: stopped") as info:
        token.raise_if_cancelled()
    assert info.value.exit_code == 130


def test_handle_signals_sets_token_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    token = CancelToken()
    with handle_signals(token):
        assert signal.getsignal(signal.SIGTERM) not in before
        signal.raise_signal(signal.SIGINT)
        assert token.cancelled and token.reason == "cancelled by SIGINT"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


WORKER = textwrap.dedent("""
    import sys, time
    from tcurlora.jobs.cancel import CancelToken, handle_signals
    from tcurlora.jobs.events import JsonLinesSink
    from tcurlora.jobs.runner import run_command

    def handler(job, sink, token):
        sink.started("finetune", "cpu", 1000)
        for i in range(1, 1001):
            if {check}:
                token.raise_if_cancelled()
            time.sleep(0.01)
            if i == 1:
                sink.progress(iteration=i, total=1000, loss=1.0)
        return {{"outputs": {{"adapter": "x"}}, "metrics": {{}}}}

    token = CancelToken()
    with handle_signals(token):
        code = run_command(None, JsonLinesSink(sys.stdout), token, handler)
    sys.exit(code)
""")


def start_worker(check: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER.format(check=check)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_progress(process: subprocess.Popen) -> list[dict]:
    events = []
    for line in process.stdout:
        events.append(parse_event_line(line))
        if events[-1]["event"] == "progress":
            return events
    raise AssertionError(f"worker ended early: {process.stderr.read()}")


def test_sigterm_cancels_worker_with_exit_130_and_error_event():
    process = start_worker(check=True)
    try:
        events = wait_for_progress(process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    events += [parse_event_line(line) for line in out.splitlines()]
    assert process.returncode == 130, err
    assert events[-1]["event"] == "error"
    assert events[-1]["kind"] == "cancelled" and events[-1]["exit_code"] == 130
    assert "SIGTERM" in events[-1]["message"]
    assert not any(e["event"] == "done" for e in events)


def test_second_signal_exits_at_once():
    process = start_worker(check=False)  # a handler that never looks at the token
    try:
        wait_for_progress(process)
        process.send_signal(signal.SIGTERM)
        # Signals that arrive before Python's handler runs are merged: wait until the first was seen.
        assert "SIGTERM: stopping at the next safe point" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "second SIGTERM: exiting now" in err


# -------------------------------------------------------------------------------------- run_command
def raising(error: BaseException):
    def handler(job, sink, token):
        sink.started("segment", "cpu", 1)
        raise error

    return handler


ERROR_CASES = [
    (
        InputError("label has 3 classes", "/d/l.nii.gz"),
        "input_error",
        "label has 3 classes",
        "/d/l.nii.gz",
        2,
    ),
    (ConfigError("bad rank"), "config_error", "bad rank", None, 2),
    (FingerprintMismatchError("other base", "/a"), "fingerprint_mismatch", "other base", "/a", 2),
    (OutputExistsError("exists", "/out"), "output_exists", "exists", "/out", 3),
    (DeviceOutOfMemoryError("no memory"), "out_of_memory", "no memory", None, 4),
    (CancelledError("stop"), "cancelled", "stop", None, 130),
    (KeyboardInterrupt(), "cancelled", "cancelled by SIGINT: stopped before finishing", None, 130),
    (
        MemoryError(),
        "out_of_memory",
        "out of memory on the CPU: use a smaller patch_size or batch_size",
        None,
        4,
    ),
]


@pytest.mark.parametrize(("error", "kind", "message", "path", "code"), ERROR_CASES)
def test_run_command_maps_errors(error, kind, message, path, code):
    sink = RecordingSink()
    assert run_command("job", sink, CancelToken(), raising(error)) == code
    assert [e["event"] for e in sink.events] == ["started", "error"]
    last = sink.events[-1]
    assert (last["kind"], last["path"], last["exit_code"]) == (kind, path, code)
    assert last["message"].startswith(message)


def test_run_command_maps_torch_out_of_memory():
    import torch

    for error in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ):
        sink = RecordingSink()
        assert run_command("job", sink, CancelToken(), raising(error)) == 4
        assert sink.events[-1]["kind"] == "out_of_memory"
        assert (
            sink.events[-1]["message"]
            == "CUDA out of memory: use a smaller patch_size or batch_size, or device cpu"
        )


def test_run_command_reports_bugs_as_internal(capsys):
    sink = RecordingSink()
    assert run_command("job", sink, CancelToken(), raising(ZeroDivisionError("division by zero"))) == 1
    assert sink.events[-1]["kind"] == "internal"
    assert sink.events[-1]["message"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in capsys.readouterr().err


def test_run_command_done_and_bad_result():
    sink = RecordingSink()

    def handler(job, sink, token):
        assert job == "the job" and isinstance(token, CancelToken)
        return {"outputs": {"segmentations": ["/o/a_seg.nii.gz"]}, "metrics": {"seconds": 1.5}}

    assert run_command("the job", sink, CancelToken(), handler) == 0
    assert sink.events[-1]["outputs"] == {"segmentations": ["/o/a_seg.nii.gz"]}
    assert sink.events[-1]["metrics"] == {"seconds": 1.5}
    sink = RecordingSink()
    assert run_command("job", sink, CancelToken(), lambda j, s, t: None) == 1
    assert "handler returned None" in sink.events[-1]["message"]


# ---------------------------------------------------------------------------------- command plumbing
def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tcurlora")
    module.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_finetune_flags_build_the_same_job_as_a_job_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse(
        finetune_cmd,
        [
            "finetune",
            "--base-model",
            "unetr-brats",
            "--case",
            "a_0000.nrrd,a_0001.nrrd",
            "a_seg.nrrd",
            "--case",
            "b.nii.gz",
            "b_lab.nii.gz",
            "--labels",
            "Anterior,Posterior",
            "--method",
            "lora",
            "--rank",
            "4",
            "--patch-size",
            "32x32x16",
            "--iterations",
            "10",
            "--no-amp",
            "--force",
            "-o",
            "out",
        ],
    )
    job = finetune_cmd.build_job(args)
    expected = FinetuneJob.from_dict(
        {
            "command": "finetune",
            "base_model": "unetr-brats",
            "output": "out",
            "method": "lora",
            "rank": 4,
            "cases": [
                {"id": "a", "image": ["a_0000.nrrd", "a_0001.nrrd"], "label": "a_seg.nrrd"},
                {"id": "b", "image": "b.nii.gz", "label": "b_lab.nii.gz"},
            ],
            "label_names": ["Anterior", "Posterior"],
            "patch_size": [32, 32, 16],
            "iterations": 10,
            "amp": False,
            "force": True,
        },
        tmp_path,
    )
    assert job == expected


@pytest.mark.parametrize(
    ("flag", "expected"), [([], None), (["--conv-targets"], True), (["--no-conv-targets"], False)]
)
def test_finetune_conv_target_flags(tmp_path, monkeypatch, flag, expected):
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "--base-model", "b", "--data", "dec", "-o", "out", *flag]
    job = finetune_cmd.build_job(parse(finetune_cmd, argv))
    assert job.conv_targets is expected and job.uses_conv_targets is (expected is not False)


def test_finetune_command_runs_handler_and_reports_flag_errors(tmp_path):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"command": "finetune", "base_model": "b", "data": "dec", "output": "ad"}))
    seen = []

    def handler(job, sink, token):
        seen.append(job)
        sink.started("finetune", "cpu", job.iterations)
        return {"outputs": {"adapter": str(job.output)}, "metrics": {}}

    stream = io.StringIO()
    assert finetune_cmd.main(parse(finetune_cmd, ["finetune", "--job", str(job_file)]), handler, stream) == 0
    assert seen[0].data == tmp_path / "dec"
    events = [parse_event_line(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["started", "done"]
    assert events[-1]["outputs"] == {"adapter": str(tmp_path / "ad")}

    stream = io.StringIO()
    args = parse(finetune_cmd, ["finetune", "--job", str(job_file), "--rank", "4"])
    assert finetune_cmd.main(args, handler, stream) == 2
    error = parse_event_line(stream.getvalue())
    assert error["message"] == "--rank cannot be combined with --job (put it in the job file)"
    assert error["path"] == str(job_file)

    stream = io.StringIO()
    assert (
        finetune_cmd.main(parse(finetune_cmd, ["finetune", "--base-model", "b", "-o", "x"]), handler, stream)
        == 2
    )
    assert "give the training cases with either --data" in stream.getvalue()


def test_segment_folder_inputs_and_output_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["c1_0000.nii.gz", "c1_0001.nii.gz", "c2_0000.nii.gz", "c2_0001.nii.gz", "notes.txt"]:
        (folder / name).write_bytes(b"")
    args = parse(
        segment_cmd,
        [
            "segment",
            str(folder),
            "--channels",
            "2",
            "--base-model",
            "b",
            "-o",
            str(tmp_path / "out"),
            "--overlap",
            "0.25",
        ],
    )
    job = segment_cmd.build_job(args)
    assert isinstance(job, SegmentJob)
    assert job.inputs == [
        [folder / "c1_0000.nii.gz", folder / "c1_0001.nii.gz"],
        [folder / "c2_0000.nii.gz", folder / "c2_0001.nii.gz"],
    ]
    assert job.output_paths() == [tmp_path / "out" / "c1_seg.nii.gz", tmp_path / "out" / "c2_seg.nii.gz"]
    assert job.overlap == 0.25

    single = segment_cmd.build_job(
        parse(
            segment_cmd,
            [
                "segment",
                str(folder / "c1_0000.nii.gz"),
                "--base-model",
                "b",
                "-o",
                str(tmp_path / "seg.nrrd"),
            ],
        )
    )
    assert single.output_paths() == [tmp_path / "seg.nrrd"]
    with pytest.raises(InputError, match=r"case 'c3' has channels \[0\], expected 0..1"):
        (folder / "c3_0000.nii.gz").write_bytes(b"")
        segment_cmd.build_job(args)
    with pytest.raises(InputError, match="input volume not found"):
        segment_cmd.build_job(
            parse(segment_cmd, ["segment", "missing.nii.gz", "--base-model", "b", "-o", "x"])
        )


@pytest.mark.parametrize(
    ("flags", "largest_component", "tta"),
    [
        ([], "auto", True),
        (["--no-tta"], "auto", False),
        (["--largest-component"], True, True),
        (["--no-largest-component", "--no-tta"], False, False),
    ],
)
def test_segment_tta_and_largest_component_flags(tmp_path, flags, largest_component, tta):
    image = tmp_path / "vol.nrrd"
    image.write_bytes(b"")
    argv = ["segment", str(image), "--base-model", "b", "-o", str(tmp_path / "seg.nrrd"), *flags]
    job = segment_cmd.build_job(parse(segment_cmd, argv))
    assert (job.largest_component, job.tta) == (largest_component, tta)
    assert (job.to_dict()["largest_component"], job.to_dict()["tta"]) == (largest_component, tta)


def test_segment_command_emits_events_through_handler(tmp_path):
    image = tmp_path / "vol.nrrd"
    image.write_bytes(b"")

    def handler(job, sink, token):
        outputs = [str(p) for p in job.output_paths()]
        sink.started("segment", "cpu", len(outputs))
        sink.progress(iteration=1, total=1, message=f"segmented {image.name}")
        return {"outputs": {"segmentations": outputs}, "metrics": {}}

    stream = io.StringIO()
    args = parse(
        segment_cmd, ["segment", str(image), "--base-model", "b", "-o", str(tmp_path / "o"), "--events"]
    )
    assert segment_cmd.main(args, handler, stream) == 0
    events = [parse_event_line(line) for line in stream.getvalue().splitlines()]
    assert events[-1]["outputs"] == {"segmentations": [str(tmp_path / "o" / "vol_seg.nrrd")]}
