"""What travels over the connection: the job's inputs staged into the remote run folder (tar), the remote job
with its paths rewritten, the outputs brought back, and the remote paths in events turned into local ones."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from tcurlora.remote.host import RemoteError, RemoteHost
from tcurlora.remote.ssh import SshConnection, q


def upload_tree(connection: SshConnection, local_dir: Path, remote_dir: str) -> None:
    """Copy `local_dir`'s content (symlinks followed) into `remote_dir` over the connection."""
    tar = subprocess.Popen(["tar", "-C", str(local_dir), "-chf", "-", "."], stdout=subprocess.PIPE)
    try:
        connection.run(
            f"mkdir -p {q(remote_dir)} && tar -C {q(remote_dir)} -xf -", timeout=3600, input=tar.stdout.read()
        )
    finally:
        tar.stdout.close()
        tar.wait()
    if tar.returncode != 0:
        raise RemoteError(f"staging {local_dir} failed (tar exit {tar.returncode})")


def download(connection: SshConnection, remote_parent: str, name: str, local_parent: Path) -> bool:
    """Copy `remote_parent/name` into `local_parent/name` (replacing it); False when absent remotely."""
    # `./NAME`: a name that begins with "-" (`-Ifoo_seg.nii.gz`) is a file for every tar, never an option.
    member = q(f"./{name}")
    script = f"cd {q(remote_parent)} 2>/dev/null && [ -e {member} ] || exit 3; tar -cf - {member}"
    result = subprocess.run(connection.command(script), capture_output=True, timeout=3600)
    if result.returncode == 3:
        return False
    if result.returncode != 0:
        raise RemoteError(
            f"{connection.host}: fetching {remote_parent}/{name} failed: "
            f"{result.stderr.decode('utf-8', 'replace').strip()}"
        )
    local_parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=local_parent))
    try:
        subprocess.run(["tar", "-C", str(temp), "-xf", "-"], input=result.stdout, check=True)
        target = local_parent / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (temp / name).rename(target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return True


def run_id(output: Path, host: RemoteHost) -> str:
    """The remote run folder's name: stable for one local output, so a resumed run finds its checkpoint."""
    digest = hashlib.sha256(f"{output.resolve()}|{host}".encode()).hexdigest()[:16]
    return f"run-{digest}"


class _Stager:
    """Links local inputs into a staging folder's `inputs/<slot>/` and returns their remote relative paths."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage

    def link(self, path: str | Path, slot: str) -> str:
        source = Path(path)
        target = self.stage / "inputs" / slot / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
        return str(target.relative_to(self.stage))

    def channels(self, value: str | list[str], slot: str) -> str | list[str]:
        return self.link(value, slot) if isinstance(value, str) else [self.link(p, slot) for p in value]

    def reference(self, value: str | None, slot: str) -> str | None:
        """A model or adapter: a local path is staged, a name (built-in, preset) is passed as it is."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return self.link(path, slot) if path.is_absolute() and path.exists() else value


def stage_finetune(job: FinetuneJob, stage: Path) -> dict[str, Any]:
    """Link the job's inputs into `stage/inputs` and return the remote job (paths relative to its folder)."""
    data = job.to_dict()
    stager = _Stager(stage)
    for index, case in enumerate(data["cases"] or []):
        case["image"] = stager.channels(case["image"], f"case{index}")
        case["label"] = stager.link(case["label"], f"case{index}/label")
    if data["data"] is not None:
        data["data"] = stager.link(data["data"], "data")
    if data.get("unlabeled") is not None:  # files or folders of unlabeled volumes (semi-supervised)
        data["unlabeled"] = [
            stager.link(path, f"unlabeled{index}") for index, path in enumerate(data["unlabeled"])
        ]
    data["base_model"] = stager.reference(data["base_model"], "base")
    data["output"] = f"out/{job.output.name}"
    data["force"] = False
    return data


def stage_segment(job: SegmentJob, stage: Path) -> dict[str, Any]:
    """The same for a segment job: one remote output per input, `out/<index>/<local file name>`."""
    data = job.to_dict()
    stager = _Stager(stage)
    data["inputs"] = [stager.channels(item, f"input{i}") for i, item in enumerate(data["inputs"])]
    data["base_model"] = stager.reference(data["base_model"], "base")
    data["adapter"] = stager.reference(data["adapter"], "adapter")
    data["outputs"] = [f"out/{i}/{path.name}" for i, path in enumerate(job.output_paths())]
    data["output_dir"] = None
    data["force"] = False
    return data


def rewrite_paths(value: Any, mapping: Sequence[tuple[str, str]]) -> Any:
    """Remote path prefixes in an event replaced by local ones."""
    if isinstance(value, str):
        for remote, local in mapping:
            if value == remote or value.startswith(remote + "/"):
                return local + value[len(remote) :]
        return value
    if isinstance(value, dict):
        return {k: rewrite_paths(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_paths(v, mapping) for v in value]
    return value
