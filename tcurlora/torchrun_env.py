"""What torchrun tells a process through its environment, read without importing torch (the CLI's
entry point asks before torch is loaded)."""

from __future__ import annotations

import os

# torchrun's variables, not passed to an isolated run's worker process (it is a 1-process run).
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
)


def launched() -> bool:
    """True when this process is one of several started by torchrun (RANK set, WORLD_SIZE > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return int(os.environ["RANK"]) if launched() else 0


def env_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched() else 1
