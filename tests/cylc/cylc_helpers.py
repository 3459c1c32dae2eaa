"""Where Cylc is and how tests run it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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
