"""Which rows of the panels' "Run on" section are shown: the remote-host rows only for a remote run
(shown with "this computer" they suggest settings that do nothing)."""

from __future__ import annotations

# The widgets of the remote-host rows, the same names in TCURFineTune.ui and TCURSegmenter.ui.
REMOTE_ROW_WIDGETS = (
    "remoteHostLabel",
    "remoteHostLineEdit",
    "remoteCommandLabel",
    "remoteCommandLineEdit",
    "sshConfigLabel",
    "sshConfigLineEdit",
)


def remote_rows_visible(run_on: str) -> bool:
    """True only for "remote host" (TCURLoRACommon.remote.REMOTE_HOST)."""
    from TCURLoRACommon.remote import REMOTE_HOST

    return (run_on or "").strip() == REMOTE_HOST


def remote_row_visibility(run_on: str) -> dict[str, bool]:
    """Each remote-row widget's name and whether it is shown for `run_on`."""
    visible = remote_rows_visible(run_on)
    return {name: visible for name in REMOTE_ROW_WIDGETS}
