"""An embedded etcd of a test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aviso_workflows import server


@contextmanager
def running_etcd(data_dir: Path) -> Iterator[server.ServerInfo]:
    """An embedded etcd on a free loopback port with its data in ``data_dir``, stopped by its pid at the end."""
    info = server.start(data_dir, port=server.free_port())
    try:
        yield info
    finally:
        server.stop(data_dir)
