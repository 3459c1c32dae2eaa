"""Where Cylc is and how tests run it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
CYLC_BIN = ROOT / ".venv-cylc" / "bin"
CYLC = CYLC_BIN / "cylc"


def cylc_missing() -> str | None:
    """Why the Cylc tests cannot run here, or None."""
    if not os.access(CYLC, os.X_OK):
        return f"{CYLC} is missing: run make setup (scripts/setup.sh installs cylc-flow 8.5.4 there)"
    if shutil.which("rsync") is None:
        return "rsync is missing (cylc install needs it): run make setup as root or install rsync"
    return None


def cylc(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one cylc command; its output is captured."""
    return subprocess.run([str(CYLC), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(path: Path, seconds: float, process: subprocess.Popen[str] | None = None) -> None:
    """Until the job has written its whole line to ``path`` (the shell creates the file before it writes)."""

    def written() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args!r} ended with {process.returncode} before {path.name} was written")
        return path.exists() and path.read_text().endswith("\n")

    eventually(written, what=f"{path.name} written", timeout=seconds, every=0.05)


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A process of ours in its own process group, ended by its pid (and waited for) at the end."""
    with open(log, "w") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
