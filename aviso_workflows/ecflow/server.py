"""Start and stop a private ``ecflow_server`` (tests, demos): a free port, its home in a given directory.

The server binds every interface, so everything here talks to it on ``localhost`` only. A new server
starts halted and ignores SIGTERM: it is set running with ``restart_server`` and stopped with
``--terminate``, then waited for by its pid.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..server import port_is_free

HOST = "localhost"
#: ecflow_server refuses ports outside the registered range.
PORT_RANGE = (20000, 49151)
START_SECONDS = 30.0
STOP_SECONDS = 30.0


class EcflowServerError(RuntimeError):
    """The ecflow_server could not be started or stopped."""


@dataclass
class EcflowServer:
    """A running ecflow_server started by :func:`start`."""

    port: int
    home: Path
    process: subprocess.Popen[bytes]
    host: str = HOST

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def client(self) -> Any:
        """A new ``ecflow.Client`` on this server."""
        import ecflow

        return ecflow.Client(self.host, str(self.port))

    def environment(self) -> dict[str, str]:
        """Environment for ``ecflow_client`` commands aimed at this server."""
        return {**os.environ, "ECF_HOST": self.host, "ECF_PORT": str(self.port)}

    def stop(self) -> None:
        """Terminate the server and wait for its process to end."""
        stop(self)


def ecflow_available() -> bool:
    """True when ``ecflow_server``, ``ecflow_client`` and the Python module are all present."""
    if not (shutil.which("ecflow_server") and shutil.which("ecflow_client")):
        return False
    try:
        import ecflow  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    """A port in ecflow_server's accepted range that nothing listens on at 127.0.0.1 now."""
    chooser = random.SystemRandom()
    for _ in range(200):
        port = chooser.randint(*PORT_RANGE)
        if port_is_free(port):
            return port
    raise EcflowServerError(f"no free port found in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def start(home: str | Path, port: int | None = None, *, wait_seconds: float = START_SECONDS) -> EcflowServer:
    """Start ``ecflow_server`` with ``ECF_HOME=home`` on ``port`` (a free one by default), set it running."""
    directory = Path(home).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "ECF_HOME": str(directory), "ECF_PORT": str(port), "ECF_CHECKINTERVAL": "3600"}
    with open(directory / "ecflow_server.out", "ab") as output:
        process = subprocess.Popen(["ecflow_server", f"--port={port}"], cwd=directory, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = EcflowServer(port, directory, process)
    try:
        _wait_for_ping(server, wait_seconds)
        server.client().restart_server()
    except Exception:
        process.kill()
        process.wait(timeout=10)
        raise
    return server


def _wait_for_ping(server: EcflowServer, wait_seconds: float) -> None:
    until = time.monotonic() + wait_seconds
    client = server.client()
    while True:
        if server.process.poll() is not None:
            raise EcflowServerError(f"ecflow_server exited with {server.process.returncode}; "
                                    f"see {server.home / 'ecflow_server.out'}")
        try:
            client.ping()
            return
        except RuntimeError:
            if time.monotonic() > until:
                raise EcflowServerError(f"ecflow_server did not answer on {server.host}:{server.port} "
                                        f"within {wait_seconds:g} s") from None
            time.sleep(0.1)


def stop(server: EcflowServer, *, wait_seconds: float = STOP_SECONDS) -> None:
    """``ecflow_client --terminate=yes`` on localhost, then wait for the pid (killed if it lingers).

    Jobs this server started and that still run (an automatic retry, a client still trying to reach
    the server) are ended too, by their pids: they would otherwise keep retrying for a day.
    """
    if server.process.poll() is not None:
        return
    try:
        _terminate(server, wait_seconds)
    finally:
        end_jobs_of(server.port)


def end_jobs_of(port: int) -> list[int]:
    """End (SIGKILL) the job processes whose environment names this server's port; returns their pids."""
    marker = f"ECF_PORT={port}".encode()
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environment:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                ended.append(int(entry.name))
            except ProcessLookupError:
                pass
    return ended


def _terminate(server: EcflowServer, wait_seconds: float) -> None:
    subprocess.run(["ecflow_client", "--terminate=yes", f"--host={server.host}", f"--port={server.port}"],
                   env=server.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=wait_seconds, check=False)
    try:
        server.process.wait(timeout=wait_seconds)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
        raise EcflowServerError(f"ecflow_server (pid {server.pid}) ignored --terminate; killed it") from None
