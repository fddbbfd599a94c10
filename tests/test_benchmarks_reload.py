"""The ``reload`` scenario, small: the chat server's clients come back after a
SIGHUP as the same visitors (their session cookie), on new workers, with
nothing lost; the bare broadcaster opens as many from scratch.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLIENTS = 40


def test_a_small_reload_brings_every_client_back_as_the_same_visitor(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "reload.json"
    command = [sys.executable, "-m", "benchmarks.loadgen", "--scenario", "reload"]
    command += ["--clients", str(CLIENTS), "--transport", "mixed", "--targets", "chat,bare"]
    command += ["--settle", "0.2", "--drain-timeout", "3", "--reload-timeout", "30"]
    command += ["--no-progress", "--json", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(path.read_text())["cases"][0]["results"]
    chat, bare = results["chat"], results["bare"]
    for figures in (chat, bare):
        assert figures["clients"] == figures["back"] == CLIENTS, figures
        assert figures["duplicates"] == figures["http_503"] == 0, figures
    assert chat["lost"] == 0, chat
    # Each was given a session cookie and came back with it: the same visitor.
    assert chat["details"]["clients given no cookie"] == 0, chat["details"]
    assert chat["details"]["clients back as another visitor"] == 0, chat["details"]
