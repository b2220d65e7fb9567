"""10 SIGKILLs at random moments of a real fine-tune leave no temporary folder once the next run has
started. Cheap: one helper process imports torch/MONAI once and forks each fine-tune (a real process
running `tcurlora finetune`), so a kill costs a second, not an interpreter start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trust_testing import tiny_job, write_job

from tcurlora.filenames import ADAPTER_FILES

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

HELPER = r"""
import json, os, random, signal, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
import tcurlora.finetuning, tcurlora.finetuning_setup, tcurlora.data.loader  # noqa: E401,F401 - imported once, before fork
from tcurlora.cli import main

job, final_job, folder, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)


def temporaries():
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".old-" in p.name)


def start(job_file):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fine-tune: a real process, killed for real
        os.close(read)
        os.dup2(write, 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        code = 1
        try:
            code = main(["finetune", "--job", job_file])
        finally:
            os._exit(code)
    os.close(write)
    return pid, os.fdopen(read)


left = []
for kill in range(10):
    pid, events = start(job)
    began = time.monotonic()
    if kill % 2 == 0:  # a random moment: start-up, data loading, a step or a checkpoint write
        time.sleep(rng.uniform(0.0, 1.5))
    else:  # a random moment while a temporary exists (a checkpoint being written)
        while time.monotonic() - began < 4.0 and not temporaries():
            time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    events.close()
    left.append(temporaries())

pid, events = start(final_job)
at_start = None
lines = []
for line in events:
    lines.append(line)
    if '"started"' in line and at_start is None:
        at_start = temporaries()
_, status = os.waitpid(pid, 0)
print(json.dumps({"left": left, "at_start": at_start, "exit": os.waitstatus_to_exitcode(status),
                  "last": lines[-1] if lines else None, "after": sorted(p.name for p in folder.iterdir())}))
"""


def test_killed_runs_leave_no_temporary_folder_once_the_next_run_has_started(tmp_path, hippocampus_dir):
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "adapter"
    job = write_job(
        tmp_path / "job.json", tiny_job(hippocampus_dir, output, iterations=100_000, checkpoint_every=1)
    )
    final = write_job(tmp_path / "final.json", tiny_job(hippocampus_dir, output, checkpoint_every=0))
    result = subprocess.run(
        [sys.executable, "-c", HELPER, str(job), str(final), str(folder), "14"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(report["left"]), f"no kill hit a write, the test proves nothing: {report['left']}"
    assert report["at_start"] == [], f"the next run did not sweep: {report['at_start']}"
    assert report["exit"] == 0 and '"done"' in report["last"], report["last"]
    assert report["after"] == ["adapter"], report["after"]
    assert sorted(p.name for p in output.iterdir()) == sorted(ADAPTER_FILES)
