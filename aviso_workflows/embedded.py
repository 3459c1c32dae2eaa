"""Where the embedded etcd is (server.py runs it): its default port, its data directory and the state file
that says whether it runs. The lowest layer, so the config can default to its address without the server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 2379
DEFAULT_ENDPOINT = f"http://127.0.0.1:{DEFAULT_PORT}"
STATE_FILE = "server.json"


@dataclass(frozen=True)
class ServerInfo:
    """A running (or last started) embedded etcd."""

    pid: int
    client_url: str
    peer_url: str
    data_dir: str

    @property
    def port(self) -> int:
        """Client port."""
        return int(self.client_url.rsplit(":", 1)[1])


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/aviso-workflows/etcd`` (``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "aviso-workflows" / "etcd"


def read_state(data_dir: Path) -> ServerInfo | None:
    """The server last started on ``data_dir`` (running or not), or None."""
    try:
        return ServerInfo(**json.loads((data_dir / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def is_our_etcd(info: ServerInfo) -> bool:
    """The pid is alive and is the etcd started on this data directory (not a recycled pid)."""
    try:
        command = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(command) and command[0].endswith(b"etcd") and info.data_dir.encode() in b" ".join(command)


def status(data_dir: str | Path | None = None) -> ServerInfo | None:
    """The server running on ``data_dir``, or None."""
    info = read_state(Path(data_dir or default_data_dir()).resolve())
    return info if info is not None and is_our_etcd(info) else None


def endpoint() -> str:
    """The running embedded server's address, else its default one."""
    running = status()
    return running.client_url if running is not None else DEFAULT_ENDPOINT
