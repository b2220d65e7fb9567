"""`tcurlora finetune --remote` against a real OpenSSH server on 127.0.0.1 (see sshd_testing): the adapter
equals a local run's, Cancel stops the remote process and brings the checkpoint back, a cut connection
and a wrong host key end the run with a clear error, and the remote run folder is always removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from sshd_testing import REPO_ROOT, LoopbackSshd, gone, start_sshd
from trust_testing import hippo_case

from tcurlora.filenames import ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE
from tcurlora.remote.host import RemoteError, RemoteHost, RemoteTargetError
from tcurlora.remote.ssh import SshConnection

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "-1"}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[LoopbackSshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def job_file(folder: Path, hippocampus_dir: Path, output: Path, **changes) -> Path:
    job = {
        "command": "finetune",
        "base_model": "preset:unetr-tiny",
        "cases": [hippo_case(hippocampus_dir, 1), hippo_case(hippocampus_dir, 3)],
        "label_names": ["anterior", "posterior"],
        "rank": 4,
        "iterations": 3,
        "batch_size": 1,
        "patch_size": [32, 32, 32],
        "seed": 7,
        "device": "cpu",
        "amp": False,
        "checkpoint_every": 0,
        "output": str(output),
        **changes,
    }
    path = folder / "job.json"
    path.write_text(json.dumps(job))
    return path


def tcurlora(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tcurlora", *argv],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def in_process(*argv: str) -> int:
    """`tcurlora ARGV` in this process on one thread, as the remote worker computes (no process start-up)."""
    import torch

    from tcurlora.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(list(argv))
    finally:
        torch.set_num_threads(threads)


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def read_until(process: subprocess.Popen, kind: str, timeout: float = 120) -> list[dict]:
    """Events up to and including the first of `kind` (the process keeps running)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if seen[-1]["event"] == kind:
                return seen
            assert seen[-1]["event"] not in ("done", "error"), seen[-1]
        assert time.monotonic() < deadline, f"no {kind} event within {timeout} s"
    raise AssertionError(f"output ended before a {kind} event: {seen}; {process.stderr.read()}")


def remote_pid(remote_folder: Path) -> int:
    (run,) = remote_folder.iterdir()
    return int((run / "pid").read_text())


def test_parse_targets() -> None:
    host = RemoteHost.parse("ana@gpu.lab.org:2222", "/opt/venv/bin/tcurlora")
    assert (host.user, host.host, host.port, host.command) == (
        "ana",
        "gpu.lab.org",
        2222,
        "/opt/venv/bin/tcurlora",
    )
    assert str(RemoteHost.parse("gpu")) == "gpu" and RemoteHost.parse("gpu").command == "tcurlora"
    for bad in ("", "a@b@c", "host:99999", "host:port", "user@"):
        with pytest.raises(RemoteError, match="remote host"):
            RemoteHost.parse(bad)
    # ssh would read these as options (`-oProxyCommand=...` runs a command here): refused as bad usage
    for bad in ("-V", "-oProxyCommand=sh@127.0.0.1", "ana@-oProxyCommand=sh", " -l"):
        with pytest.raises(RemoteTargetError, match="may not begin with '-'") as caught:
            RemoteHost.parse(bad)
        assert caught.value.exit_code == 2
    with pytest.raises(RemoteTargetError, match="remote folder '-rf' may not begin with '-'"):
        RemoteHost.parse("gpu", folder="-rf")


def test_destination_never_read_as_an_option(tmp_path: Path) -> None:
    """`--` ends ssh's options before the destination: even a RemoteHost built without `parse` cannot make
    ssh run a ProxyCommand here."""
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed")
    marker = tmp_path / "MARK"
    host = RemoteHost(host=f"-oProxyCommand=touch {marker}", ssh_config=Path("/dev/null"))
    connection = SshConnection(host)
    try:
        argv = connection.command("true")
        assert argv[-3:] == ["--", host.destination, "true"], argv
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        connection.close()
    assert result.returncode == 255, result
    assert not marker.exists(), "ssh read the destination as an option and ran its ProxyCommand"


def test_option_like_remote_is_refused(hippocampus_dir: Path, tmp_path: Path, capsys) -> None:
    """`--remote=-V` (ssh printed its version and the run went on) and a ProxyCommand in the user name end
    with exit 2 before any ssh is started; so does a remote folder that remote commands would take for a flag."""
    job = job_file(tmp_path, hippocampus_dir, tmp_path / "adapter")
    marker = tmp_path / "MARK"
    for flag in (
        "--remote=-V",
        f"--remote=-oProxyCommand=touch${{IFS}}{marker}@127.0.0.1",
        "--remote=gpu --remote-folder=-rf",
    ):
        assert in_process("finetune", "--job", str(job), *flag.split()) == 2, flag
        final = events(capsys.readouterr().out)[-1]
        assert final["event"] == "error" and final["kind"] == "config_error", final
        assert "may not begin with '-'" in final["message"], final
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]


@pytest.mark.slow
def test_remote_adapter_equals_local(sshd, hippocampus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    remote_folder = tmp_path / "remote-runs"
    job = job_file(tmp_path / "remote", hippocampus_dir, tmp_path / "a_remote")
    remote = tcurlora("finetune", "--job", str(job), *sshd.remote_args(remote_folder))
    local_job = job_file(tmp_path / "local", hippocampus_dir, tmp_path / "a_local")
    assert in_process("finetune", "--job", str(local_job)) == 0
    out, err = remote.communicate(timeout=300)
    assert remote.returncode == 0, err
    seen = events(out)
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "log" and "started" in kinds and kinds[-1] == "done", kinds
    assert [e["iteration"] for e in seen if e["event"] == "progress"][-1] == 3
    assert seen[-1]["outputs"]["adapter"] == str(tmp_path / "a_remote"), seen[-1]
    a, b = (load_file(str(tmp_path / name / ADAPTER_WEIGHTS_FILE)) for name in ("a_local", "a_remote"))
    assert sorted(a) == sorted(b) and a
    for key in a:
        assert (a[key] == b[key]).all(), key
    assert list(remote_folder.iterdir()) == [], "the remote run folder was not removed"


@pytest.mark.slow
def test_cancel_stops_remote_keeps_checkpoint(sshd, hippocampus_dir: Path, tmp_path: Path) -> None:
    """Cancel as the Slicer panels do it: WorkerProcess.cancel() terminates the local worker's whole tree."""
    from TCURLoRACommon.worker import CANCEL_EXIT_CODES, WorkerProcess

    remote_folder = tmp_path / "remote-runs"
    output = tmp_path / "adapter"
    job = job_file(tmp_path, hippocampus_dir, output, iterations=100000, checkpoint_every=2)
    argv = [sys.executable, "-m", "tcurlora", "finetune", "--job", str(job), *sshd.remote_args(remote_folder)]
    worker = WorkerProcess("finetune", job, device="cpu", args=argv)
    worker.start()
    seen: list[dict] = []
    deadline = time.monotonic() + 120
    while not any(e["event"] == "checkpoint" for e in seen):
        seen += worker.poll()
        assert not worker.finished and time.monotonic() < deadline, (seen, worker.tail)
        time.sleep(0.05)
    pid = remote_pid(remote_folder)
    worker.cancel()
    deadline = time.monotonic() + 60
    while not worker.finished:
        seen += worker.poll()
        assert time.monotonic() < deadline, "the cancelled remote run did not end within 60 s"
        time.sleep(0.05)
    assert worker.returncode in CANCEL_EXIT_CODES, (worker.returncode, worker.tail)
    final = seen[-1]
    assert final["event"] == "error" and final["kind"] == "cancelled", final
    assert gone(pid), f"remote worker {pid} still runs after Cancel"
    assert list(remote_folder.iterdir()) == [], "the remote run folder was not removed"
    assert not output.exists(), "a cancelled run must not leave an adapter"
    assert (tmp_path / "adapter.checkpoint" / CHECKPOINT_FILE).is_file(), "the checkpoint did not come back"


@pytest.mark.slow
def test_lost_connection_is_reported_and_resumable(sshd, hippocampus_dir: Path, tmp_path: Path) -> None:
    remote_folder = tmp_path / "remote-runs"
    job = job_file(tmp_path, hippocampus_dir, tmp_path / "adapter", iterations=100000, checkpoint_every=2)
    run = tcurlora("finetune", "--job", str(job), *sshd.remote_args(remote_folder))
    read_until(run, "checkpoint")
    pid = remote_pid(remote_folder)
    for session in sshd.session_processes():  # the server side of the connection dies
        session.kill()
    out, err = run.communicate(timeout=90)
    assert run.returncode == 5, (out, err)
    final = events(out)[-1]
    assert final["event"] == "error" and final["kind"] == "connection_lost", final
    assert "lost the SSH connection" in final["message"] and "resume" in final["message"], final
    assert gone(pid), f"remote worker {pid} still runs after the connection was lost"
    assert list(remote_folder.iterdir()) == []
    saved = json.loads((tmp_path / "adapter.checkpoint" / CHECKPOINT_FILE).read_text())["iteration"]
    assert saved >= 2
    resumed = tcurlora("finetune", "--job", str(job), "--resume", *sshd.remote_args(remote_folder))
    first = next(e for e in read_until(resumed, "progress") if e["event"] == "progress")
    assert first["iteration"] == saved + 1, (first, saved)
    resumed.send_signal(signal.SIGTERM)
    resumed.communicate(timeout=60)
    assert resumed.returncode == 130


@pytest.mark.slow
def test_host_key_mismatch_is_refused(sshd, hippocampus_dir: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    config = tmp_path / "ssh_config"
    config.write_text(sshd.ssh_config.read_text().replace(str(sshd.known_hosts), str(known)))
    remote_folder = tmp_path / "remote-runs"
    args = sshd.remote_args(remote_folder)
    args[args.index("--ssh-config") + 1] = str(config)
    run = tcurlora("finetune", "--job", str(job_file(tmp_path, hippocampus_dir, tmp_path / "a")), *args)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 5, (out, err)
    final = events(out)[-1]
    assert final["kind"] == "connection" and "host key" in final["message"], final
    assert not remote_folder.exists() and not (tmp_path / "a").exists()


@pytest.mark.slow
def test_remote_segment_equals_local(sshd, hippocampus_dir: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    """Also for a file whose name begins with "-": remote tar once read `-Ihippocampus_001_seg.nii.gz` as
    its -I option, so the output never came back and the remote run folder stayed."""
    import nibabel as nib

    image = tmp_path / "-Ihippocampus_001.nii.gz"
    shutil.copyfile(hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz", image)
    common = [
        "segment",
        str(image),
        "--base-model",
        "preset:unetr-tiny",
        "--adapter",
        str(tiny_adapter),
        "--device",
        "cpu",
        "--events",
    ]
    remote_folder = tmp_path / "remote-runs"
    remote = tcurlora(*common, "--output", str(tmp_path / "remote"), *sshd.remote_args(remote_folder))
    assert in_process(*common, "--output", str(tmp_path / "local")) == 0
    out, err = remote.communicate(timeout=300)
    assert remote.returncode == 0, err
    written = events(out)[-1]["outputs"]["segmentations"]
    assert written == [str(tmp_path / "remote" / "-Ihippocampus_001_seg.nii.gz")], written
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["-Ihippocampus_001_seg.nii.gz"]
    a, b = (nib.load(str(tmp_path / name / "-Ihippocampus_001_seg.nii.gz")) for name in ("local", "remote"))
    assert (a.get_fdata() == b.get_fdata()).all() and (a.affine == b.affine).all()
    assert list(remote_folder.iterdir()) == []


@pytest.mark.slow
def test_outputs_that_do_not_come_back_leave_no_remote_folder(
    sshd, hippocampus_dir: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    """A remote worker that reports `done` without writing its output (here a script that only prints the
    event) ends the run with a clear error and no local output, and its remote run folder is removed."""
    done = {"event": "done", "time": 0.0, "outputs": {"segmentations": []}, "metrics": {}}
    worker = tmp_path / "worker.sh"
    worker.write_text(f"#!/bin/sh\necho '{json.dumps(done)}'\n")
    remote_folder = tmp_path / "remote-runs"
    args = sshd.remote_args(remote_folder)
    args[args.index("--remote-command") + 1] = f"sh {worker}"
    image = hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz"
    run = tcurlora(
        "segment",
        str(image),
        "--base-model",
        "preset:unetr-tiny",
        "--adapter",
        str(tiny_adapter),
        "--device",
        "cpu",
        "--events",
        "--output",
        str(tmp_path / "seg"),
        *args,
    )
    out, err = run.communicate(timeout=120)
    assert run.returncode == 5, (out, err)
    final = events(out)[-1]
    assert final["event"] == "error" and final["message"].endswith(
        "the remote run reported success but wrote no hippocampus_001_seg.nii.gz"
    ), final
    assert list(remote_folder.iterdir()) == [], "the remote run folder was left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["remote-runs", "worker.sh"]


@pytest.mark.slow
def test_force_replaces_only_what_tcurlora_wrote(
    sshd, hippocampus_dir: Path, tiny_adapter: Path, tmp_path: Path, capsys
) -> None:
    """`--force --remote` once replaced whatever was at the output when the results came back (a folder of
    the user's was deleted); it refuses, before connecting, what a local run refuses (exit 3)."""
    remote_folder = tmp_path / "remote-runs"
    mine = tmp_path / "adapter"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    job = job_file(tmp_path, hippocampus_dir, mine, force=True)
    assert in_process("finetune", "--job", str(job), *sshd.remote_args(remote_folder)) == 3
    final = events(capsys.readouterr().out)[-1]
    assert final["kind"] == "output_exists" and "not an adapter written by tcurlora" in final["message"], (
        final
    )
    image = hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz"
    scan = tmp_path / "scan.nii.gz"  # an image of the user's where the segmentation would go
    shutil.copyfile(image, scan)
    code = in_process(
        "segment",
        str(image),
        "--base-model",
        "preset:unetr-tiny",
        "--adapter",
        str(tiny_adapter),
        "--output",
        str(scan),
        "--force",
        "--events",
        *sshd.remote_args(remote_folder),
    )
    assert code == 3
    final = events(capsys.readouterr().out)[-1]
    assert final["kind"] == "output_exists" and "not a segmentation written by tcurlora" in final["message"]
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"
    ]
    assert scan.read_bytes() == image.read_bytes()
    assert not remote_folder.exists(), "nothing may be staged on the host"
