"""TCUR Fine-Tune's "Run on: remote host", headless (slicer-core) against a real OpenSSH server on 127.0.0.1:
the adapter a remote run installs equals the one a local run installs from the same scene and seed."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from sshd_testing import start_sshd
from TCURFineTuneLib.run import FineTuneRun
from TCURFineTuneLib.testing import fast_settings, load_training_scene

from tcurlora import library
from tcurlora.errors import InputError
from tcurlora.filenames import ADAPTER_WEIGHTS_FILE, RUN_INFO_FILE
from tcurlora.jsonio import read_json_object
from TCURLoRACommon.remote import RemoteSettings, remote_from_parameters
from TCURLoRACommon.runs import DONE


def node(**fields) -> types.SimpleNamespace:
    defaults = {"runOn": "this computer", "remoteHost": "", "remoteCommand": "tcurlora", "sshConfig": ""}
    return types.SimpleNamespace(**{**defaults, **fields})


def test_run_on_parameters() -> None:
    assert remote_from_parameters(node()) is None
    assert remote_from_parameters(node(remoteHost="ignored@here")) is None
    settings = remote_from_parameters(node(runOn="remote host", remoteHost=" ana@gpu:2222 ", sshConfig="/c"))
    assert settings == RemoteSettings("ana@gpu:2222", "tcurlora", "/c")
    assert settings.worker_args() == ["--remote=ana@gpu:2222", "--remote-command=tcurlora", "--ssh-config=/c"]
    with pytest.raises(InputError, match="give the remote host"):
        remote_from_parameters(node(runOn="remote host"))
    with pytest.raises(InputError, match="user@host"):
        remote_from_parameters(node(runOn="remote host", remoteHost="ana@gpu:port"))
    # ssh would read these as options (a ProxyCommand runs on this computer): refused when the run starts
    for host in ("-V", "-oProxyCommand=sh@gpu", "ana@-oProxyCommand=sh"):
        with pytest.raises(InputError, match="may not begin with '-'"):
            remote_from_parameters(node(runOn="remote host", remoteHost=host))
    with pytest.raises(InputError, match="may not begin with '-'"):  # also a run.json saved with one
        RemoteSettings.from_dict({"host": "-oProxyCommand=sh@gpu", "command": "tcurlora"})
    # Values that begin with "-" reach the worker as values, never as flags of their own
    odd = RemoteSettings("gpu", "-x", "-F.conf", "./-runs")
    assert odd.worker_args() == [
        "--remote=gpu",
        "--remote-command=-x",
        "--ssh-config=-F.conf",
        "--remote-folder=./-runs",
    ]


@pytest.mark.slow
def test_remote_run_equals_local(mrml, hippocampus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local worker computes as the remote one does
    server = start_sshd(tmp_path / "sshd")
    try:
        remote_folder = tmp_path / "remote-runs"
        remote = RemoteSettings(
            server.target, server.remote_command, str(server.ssh_config), str(remote_folder)
        )
        pairs, _ = load_training_scene(hippocampus_dir, 2)
        settings = fast_settings(3)
        settings.seed = 5
        local_run = FineTuneRun(pairs, settings, "local", tmp_path / "w1", curves=False).start()
        remote_run = FineTuneRun(
            pairs, settings, "remote", tmp_path / "w2", curves=False, remote=remote
        ).start()
        assert read_json_object(tmp_path / "w2" / RUN_INFO_FILE, "run info")["remote"] == remote.to_dict()
        for run in (local_run, remote_run):
            run.wait(timeout=300)
            assert run.state == DONE, f"{run.error_text()}\n" + "\n".join(run.worker.tail)
        kinds = [e["event"] for e in remote_run.events]
        assert "started" in kinds and "progress" in kinds and kinds[-1] == "done", kinds
        entries = {e.name: e for e in library.list_adapters()}
        assert sorted(entries) == ["local", "remote"], entries
        a, b = (load_file(str(Path(entries[n].path) / ADAPTER_WEIGHTS_FILE)) for n in ("local", "remote"))
        assert sorted(a) == sorted(b) and a
        for key in a:
            assert (a[key] == b[key]).all(), key
        assert list(remote_folder.iterdir()) == [], "the remote run folder was not removed"
    finally:
        server.stop()
