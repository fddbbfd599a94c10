"""The shape of the code: every module stands alone, and none grows too big."""

from __future__ import annotations

import concurrent.futures
import pathlib
import subprocess
import sys

import pytest

SERVER = pathlib.Path(__file__).resolve().parent.parent / "server"
MAX_LINES = 300


def _modules() -> list[str]:
    names = []
    for path in sorted(SERVER.rglob("*.py")):
        parts = path.relative_to(SERVER.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _modules()


def test_the_modules_are_found() -> None:
    assert {
        "server.web.app",
        "server.process.cli",
        "server.web.state",
        "server.web.transports.ws",
    } <= set(MODULES)


def _import_alone(module: str) -> str:
    """What importing ``module`` first, in a fresh interpreter, printed on failure."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=SERVER.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "" if done.returncode == 0 else f"{module}: {done.stderr.strip()}"


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """No import cycle that only some import orders survive.

    ``server.__main__`` is left out: importing it runs the server.
    """
    alone = [module for module in MODULES if module != "server.__main__"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failures = [failure for failure in pool.map(_import_alone, alone) if failure]
    assert not failures, "\n\n".join(failures)


def test_the_app_state_keys_import_nothing_of_the_server_at_run_time() -> None:
    code = (
        "import sys, server.web.state; "
        "print(sorted(m for m in sys.modules if m.startswith('server.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=SERVER.parent, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['server.web', 'server.web.state']"


@pytest.mark.parametrize("module", MODULES)
def test_module_is_at_most_300_lines(module: str) -> None:
    path = SERVER.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = SERVER.parent / module.replace(".", "/") / "__init__.py"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it along its concepts"
