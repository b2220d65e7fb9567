"""TCUR Segmenter's "Run on: remote host", headless (slicer-core) against a real OpenSSH server on 127.0.0.1
(sshd_testing): the segmentation a remote run imports equals a local run's voxel for voxel, with the same
geometry, segment names and colors; Cancel stops the remote worker; a lost connection and a refused host end
the run with a clear message."""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import slicer
from sshd_testing import REPO_ROOT, LoopbackSshd, gone, start_sshd
from TCURSegmenterLib.logic import start_segmentation
from test_panel_logic import parameter_defaults

from tcurlora.library import AdapterEntry, read_adapter
from TCURLoRACommon import scene
from TCURLoRACommon.remote import REMOTE_HOST, RemoteSettings, remote_from_parameters
from TCURLoRACommon.runs import CANCELLED, DONE, FAILED, event_text
from TCURLoRACommon.testdata import check_events, decathlon_cases, load_case, run_until, set_oblique_geometry

LONG_RUN_VOLUMES = 6
SEGMENTER = REPO_ROOT / "TCURSegmenter" / "TCURSegmenter.py"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[LoopbackSshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def adapter(tiny_adapter: Path) -> AdapterEntry:
    """The session's tiny-preset hippocampus adapter (Testing/conftest.py), as the Segmenter lists it."""
    return read_adapter(tiny_adapter)


def remote_settings_for(server: LoopbackSshd, folder: Path, host: str | None = None) -> RemoteSettings:
    return RemoteSettings(host or server.target, server.remote_command, str(server.ssh_config), str(folder))


def segments(segmentation) -> list[tuple[str, tuple[float, ...]]]:
    seg = segmentation.GetSegmentation()
    return [
        (seg.GetNthSegment(i).GetName(), tuple(round(c, 4) for c in seg.GetNthSegment(i).GetColor()))
        for i in range(seg.GetNumberOfSegments())
    ]


def exported(segmentation, volume, names: list[str], path: Path):
    """The segmentation exported on the volume's grid, as a SimpleITK image."""
    import SimpleITK as sitk

    scene.export_labelmap(segmentation, volume, names, path)
    return sitk.ReadImage(str(path))


def remote_pid(folder: Path, timeout: float = 60) -> int:
    """The PID the remote run recorded in its run folder (the loopback host is this machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid_file in folder.glob("*/pid"):
            text = pid_file.read_text().strip()
            if text:
                return int(text)
        time.sleep(0.05)
    raise AssertionError(f"no remote run recorded its PID under {folder}")


def test_segmenter_parameters_choose_where_to_run() -> None:
    """The Segmenter's parameter node has the fields the shared remote_from_parameters reads."""
    node = parameter_defaults(SEGMENTER)
    assert (node.runOn, node.remoteHost, node.remoteCommand, node.sshConfig) == (
        "this computer",
        "",
        "tcurlora",
        "",
    )
    assert remote_from_parameters(node) is None
    node.runOn, node.remoteHost, node.sshConfig = REMOTE_HOST, " ana@gpu:2222 ", "/etc/ssh_gpu"
    remote = remote_from_parameters(node)
    assert remote == RemoteSettings("ana@gpu:2222", "tcurlora", "/etc/ssh_gpu")
    assert remote.worker_args() == [
        "--remote=ana@gpu:2222",
        "--remote-command=tcurlora",
        "--ssh-config=/etc/ssh_gpu",
    ]
    from tcurlora.errors import InputError

    node.remoteHost = ""
    with pytest.raises(InputError, match="give the remote host"):
        remote_from_parameters(node)


@pytest.mark.slow
def test_remote_segmentation_equals_local(
    mrml, sshd: LoopbackSshd, adapter: AdapterEntry, hippocampus_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local worker computes as the remote one does
    cases, names = decathlon_cases(hippocampus_dir)
    volume, _ = load_case(cases[5][0], None, names)
    matrix = set_oblique_geometry(volume)  # a rotated, flipped, anisotropic grid must come back as it went
    folder = tmp_path / "remote-runs"
    local = start_segmentation([volume], adapter, "cpu")
    remote = start_segmentation([volume], adapter, "cpu", remote=remote_settings_for(sshd, folder))
    try:
        for run in (local, remote):
            run.wait(timeout=300)
            assert run.state == DONE, f"{run.error_text()}\n" + "\n".join(run.worker.tail)
        check_events(list(remote.events))
        kinds = [e["event"] for e in remote.events]
        assert "started" in kinds and "progress" in kinds and kinds[-1] == "done", kinds
        staged = [event_text(e) for e in remote.events if e["event"] == "log"]
        assert any(f"staged the job on {sshd.target}" in (t or "") for t in staged), staged
        assert remote.done["outputs"]["segmentations"] == [str(remote.outputs[0])], remote.done
        (a,), (b,) = local.segmentations, remote.segmentations
        assert a is not b
        colors = scene.class_colors(names, adapter.label_colors)
        expected = [(n, tuple(round(c, 4) for c in color)) for n, color in zip(names, colors)]
        assert segments(a) == segments(b) == expected
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        assert a.GetNodeReference(role) is volume and b.GetNodeReference(role) is volume
        image_a = exported(a, volume, names, tmp_path / "local.nrrd")
        image_b = exported(b, volume, names, tmp_path / "remote.nrrd")
        import SimpleITK as sitk

        for image in (image_a, image_b):
            assert image.GetSize() == volume.GetImageData().GetDimensions()
            assert image.GetOrigin() == image_a.GetOrigin() and image.GetSpacing() == image_a.GetSpacing()
            assert image.GetDirection() == image_a.GetDirection()
        labels_a, labels_b = sitk.GetArrayFromImage(image_a), sitk.GetArrayFromImage(image_b)
        np.testing.assert_array_equal(labels_a, labels_b)
        assert set(np.unique(labels_b)) <= {0, 1, 2} and labels_b.any(), np.unique(labels_b)
        np.testing.assert_array_equal(scene.labelmap_array(b, volume, names), labels_b)
        np.testing.assert_allclose(scene.ijk_to_ras(volume), matrix)
        assert list(folder.iterdir()) == [], "the remote run folder was not removed"
    finally:
        local.remove_workdir()
        remote.remove_workdir()


def start_long_run(server: LoopbackSshd, adapter: AdapterEntry, data: Path, folder: Path):
    """A remote run over several volumes (seconds of work left once it has started), and its remote PID."""
    cases, names = decathlon_cases(data)
    volumes = [load_case(image, None, names, study=False)[0] for image, _ in cases[:LONG_RUN_VOLUMES]]
    run = start_segmentation(volumes, adapter, "cpu", overlap=0.9, remote=remote_settings_for(server, folder))
    run_until(run, "started")
    return run, remote_pid(folder)


@pytest.mark.slow
def test_cancel_stops_the_remote_run(
    mrml, sshd: LoopbackSshd, adapter: AdapterEntry, hippocampus_dir: Path, tmp_path: Path
) -> None:
    """Cancel as the panel does it (run.cancel(): SIGTERM to the local worker's tree) stops the remote worker."""
    folder = tmp_path / "remote-runs"
    run, pid = start_long_run(sshd, adapter, hippocampus_dir, folder)
    try:
        run.cancel()
        run.wait(timeout=90)
        assert run.state == CANCELLED, (run.state, run.error_text(), run.worker.tail)
        assert run.error and run.error["kind"] == "cancelled", run.error
        assert f"the remote run on {sshd.target} was stopped" in run.error_text(), run.error_text()
        assert gone(pid), f"remote worker {pid} still runs after Cancel"
        assert list(folder.iterdir()) == [], "the remote run folder was not removed"
        assert run.segmentations == [] and not slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        assert not (run.workdir / "outputs").exists(), "a cancelled run must not leave outputs"
    finally:
        run.remove_workdir()


@pytest.mark.slow
def test_lost_connection_fails_with_a_clear_message(
    mrml, sshd: LoopbackSshd, adapter: AdapterEntry, hippocampus_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "remote-runs"
    run, pid = start_long_run(sshd, adapter, hippocampus_dir, folder)
    try:
        for session in sshd.session_processes():  # the server side of the connection dies
            session.kill()
        run.wait(timeout=90)
        assert run.state == FAILED, (run.state, run.error_text())
        assert run.error["kind"] == "connection_lost" and run.error["exit_code"] == 5, run.error
        message = run.error_text()
        assert message.startswith(f"lost the SSH connection to {sshd.target} during the run"), message
        assert message.endswith("the remote run was stopped"), message
        assert event_text(run.error) == f"Error: {message}"  # the panel's log line
        assert gone(pid), f"remote worker {pid} still runs after the connection was lost"
        assert list(folder.iterdir()) == [], "the remote run folder was not removed"
        assert run.segmentations == [] and not slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    finally:
        run.remove_workdir()


@pytest.mark.slow
def test_refused_host_fails_with_a_clear_message(
    mrml, sshd: LoopbackSshd, adapter: AdapterEntry, hippocampus_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "ssh_config"  # a host named like a GPU server: the failure is no GPU problem
    config.write_text(f"Host gpu-server\n  HostName 127.0.0.1\n  Port {port}\n" + sshd.ssh_config.read_text())
    cases, names = decathlon_cases(hippocampus_dir)
    volume, _ = load_case(cases[0][0], None, names)
    host = f"{getpass.getuser()}@gpu-server"
    folder = tmp_path / "remote-runs"
    remote = RemoteSettings(host, sshd.remote_command, str(config), str(folder))
    run = start_segmentation([volume], adapter, "auto", remote=remote)
    try:
        run.wait(timeout=120)
        assert run.state == FAILED, run.state
        assert run.error["kind"] == "connection" and run.error["exit_code"] == 5, run.error
        message = run.error_text()
        assert message.startswith(f"cannot connect to {host}: ") and "Connection refused" in message, message
        assert event_text(run.error) == f"Error: {message}"  # the panel's log line
        assert run.cpu_fallback_reason() is None, "a refused host must not offer a retry on the CPU"
        assert run.segmentations == [] and not slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        assert not folder.exists()
        assert json.loads(run.job_path.read_text())["command"] == "segment"
    finally:
        run.remove_workdir()
