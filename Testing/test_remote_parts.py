"""The parts of a remote run and of a torchrun run that need no SSH server or second process: how events'
remote paths come back as local ones, the remote folder's stable name, the remote worker's error, and what
a rank reports when its peers are gone. The slow tests (test_remote, test_distributed) run the real thing."""

from __future__ import annotations

from pathlib import Path

from tcurlora.distributed import DistributedError
from tcurlora.distributed_runs import _lost_peers
from tcurlora.errors import InputError
from tcurlora.remote.run import RemoteWorkerError
from tcurlora.remote.transfer import rewrite_paths, run_id


def test_remote_paths_in_events_become_local_ones_and_nothing_else_changes():
    mapping = [("/remote/run-1/out", "/home/me/adapter"), ("/remote/run-1/in", "/data")]
    event = {
        "path": "/remote/run-1/out/adapter_config.json",
        "files": ["/remote/run-1/in/case.nii.gz", "/remote/run-1/outside", "/remote/run-1/out"],
        "iteration": 3,
        "note": "/remote/run-1/output-other",  # only whole path components are prefixes
    }
    assert rewrite_paths(event, mapping) == {
        "path": "/home/me/adapter/adapter_config.json",
        "files": ["/data/case.nii.gz", "/remote/run-1/outside", "/home/me/adapter"],
        "iteration": 3,
        "note": "/remote/run-1/output-other",
    }


def test_the_remote_folder_name_is_stable_per_output_and_host(tmp_path):
    first = run_id(tmp_path / "adapter", "gpu-box")
    assert first == run_id(tmp_path / "x" / ".." / "adapter", "gpu-box")  # a resumed run finds its folder
    assert first.startswith("run-") and len(first) == 20
    assert len({first, run_id(tmp_path / "other", "gpu-box"), run_id(tmp_path / "adapter", "gpu-2")}) == 3


def test_the_remote_workers_error_keeps_its_kind_path_and_exit_code():
    event = {"message": "label has 3 classes", "kind": "input_error", "path": "/d/l.nii.gz", "exit_code": 2}
    error = RemoteWorkerError(event)
    assert (str(error), error.kind, error.exit_code) == ("/d/l.nii.gz: label has 3 classes", "input_error", 2)
    unknown = RemoteWorkerError({})
    assert (str(unknown), unknown.kind, unknown.exit_code) == ("the remote worker failed", "internal", 1)


def test_a_rank_whose_peers_are_gone_says_so_but_keeps_its_own_errors():
    lost = _lost_peers(RuntimeError("Connection closed by peer"), "; the last checkpoint is kept")
    assert isinstance(lost, DistributedError)
    assert str(lost).startswith("process 0 of 1 lost its peers (RuntimeError: Connection closed by peer)")
    assert str(lost).endswith("; the last checkpoint is kept")
    own = InputError("bad label", Path("/d/l.nii.gz"))
    assert _lost_peers(own) is own
    memory = RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    assert _lost_peers(memory) is memory
