"""`python -m tcurlora` exits with the command's code and keeps a user's OpenMP wait policy (run in this
interpreter with runpy, so the fast tests reach the entry module without starting a new Python)."""

from __future__ import annotations

import os
import runpy
import sys

import pytest


def run_entry(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["tcurlora", *argv])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("tcurlora", run_name="__main__")
    return exited.value.code


def test_a_user_error_exits_2_with_one_line_naming_the_input(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert run_entry(monkeypatch, "info", str(tmp_path / "nowhere")) == 2
    assert capsys.readouterr().err.startswith(
        f"tcurlora info: error: {tmp_path / 'nowhere'}: no such base model"
    )
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_wait_policy_the_user_set_is_kept(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert run_entry(monkeypatch, "info", str(tmp_path / "nowhere")) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
