"""A real ecflow_server per test module, on a free port with its home in a temp dir, reached on localhost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ecflow_helpers import Watcher

from aviso_workflows.ecflow import server as ecflow_server_module
from aviso_workflows.ecflow.server import EcflowServer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "suites"))
BIN = Path(sys.executable).parent
DEBIAN_PACKAGES = ("ecflow-server", "ecflow-client", "python3-ecflow")

pytestmark = pytest.mark.ecflow


def _install_ecflow() -> None:
    """Install Debian's ecFlow when missing and we may (root with apt-get); fail otherwise."""
    if ecflow_server_module.ecflow_available():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
                       check=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not ecflow_server_module.ecflow_available():
        pytest.fail("ecFlow is missing: run scripts/setup.sh (installs " + " ".join(DEBIAN_PACKAGES) + ")")


@pytest.fixture(scope="module")
def ecflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcflowServer]:
    """A running ecflow_server on localhost; terminated and waited for at the end of the module."""
    _install_ecflow()
    home = tmp_path_factory.mktemp("ecflow")
    server = ecflow_server_module.start(home / "server")
    yield server
    server.stop()
    assert server.process.poll() is not None


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Scripts and job output of one test's suite."""
    return tmp_path / "suite"


@pytest.fixture(autouse=True)
def job_environment(etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs and commands find the project's executables and the test etcd."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", etcd_url)


@pytest.fixture
def watcher(ecflow_server: EcflowServer) -> Watcher:
    return Watcher(ecflow_server)
