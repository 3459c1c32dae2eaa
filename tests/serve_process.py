"""``aviso-workflows serve`` as a subprocess of a test: on a free loopback port, in front of an etcd, with a
state of its own; stopped by its PID. (A module of its own name, not conftest, so that folders collected in one
pytest call do not shadow each other's helpers.)
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from aviso_workflows.serve.cli import start_serve_process
from aviso_workflows.server import free_port

START_SECONDS = 20.0
STOP_SECONDS = 10.0


class Serve:
    """One ``aviso-workflows serve`` process; ``kill()`` and ``start()`` again keep its port."""

    def __init__(self, etcd_url: str, state: Path, *options: str) -> None:
        self.etcd_url = etcd_url
        self.options = list(options)
        self.port = free_port()
        self.log = state / f"serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        state.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AVISO_WORKFLOWS")}
        self.env.update(AVISO_WORKFLOWS_CONFIG=str(state / "no-config.yaml"),
                        AVISO_WORKFLOWS_STATE_DIR=str(state / "serve-state"))

    @property
    def endpoint(self) -> str:
        return f"aviso+http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        self.process = start_serve_process(self.etcd_url, self.port, self.options, log=self.log, env=self.env,
                                           timeout=START_SECONDS).process
        return self

    def kill(self) -> None:
        """SIGKILL: the streams are cut without a closing event."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
