"""Helpers of the ecFlow tests: watch a suite on the server, read job output."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aviso_workflows.ecflow.server import EcflowServer


class Watcher:
    """Polls a suite on the server: node states, meters, labels, and when each node was first seen in a state."""

    def __init__(self, server: EcflowServer) -> None:
        self.client = server.client()
        self.first_seen: dict[tuple[str, str], float] = {}
        self.meter_when_active: dict[str, int] = {}

    def defs(self) -> Any:
        self.client.sync_local()
        return self.client.get_defs()

    def state(self, path: str) -> str:
        node = self.defs().find_abs_node(path)
        assert node is not None, f"{path} is not on the server"
        return str(node.get_state())

    def meter(self, path: str, name: str) -> int:
        return int(self.defs().find_abs_node(path).find_meter(name).value())

    def label(self, path: str, name: str) -> str:
        return str(self.defs().find_abs_node(path).find_label(name).new_value())

    def record(self, on_poll: Callable[[Any], None] | None = None) -> Any:
        defs = self.defs()
        now = time.monotonic()
        for node in defs.get_all_nodes():
            self.first_seen.setdefault((node.get_abs_node_path(), str(node.get_state())), now)
        if on_poll is not None:
            on_poll(defs)
        return defs

    def until(self, condition: Callable[[Any], bool], timeout: float, what: str,
              on_poll: Callable[[Any], None] | None = None) -> None:
        """Poll every 0.1 s until ``condition(defs)``; fail with the states seen after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            defs = self.record(on_poll)
            if condition(defs):
                return
            if time.monotonic() > deadline:
                states = {n.get_abs_node_path(): str(n.get_state()) for n in defs.get_all_nodes()}
                pytest.fail(f"{what} did not happen within {timeout:g} s; states: {states}")
            time.sleep(0.1)

    def when(self, path: str, state: str) -> float:
        return self.first_seen[(path, state)]


def node_state(defs: Any, path: str) -> str:
    node = defs.find_abs_node(path)
    return str(node.get_state()) if node is not None else "missing"


def job_output(home: Path, path: str, try_number: int = 1) -> str:
    """The job output of ``path``'s try (pyflow writes it under ECF_HOME/<path>.<try>)."""
    return (home / "out" / f"{path.lstrip('/')}.{try_number}").read_text()


def server_log(server: EcflowServer) -> list[str]:
    """The lines of the server's log (``<host>.<port>.ecf.log`` in its home)."""
    logs = list(server.home.glob(f"*.{server.port}.ecf.log"))
    return logs[0].read_text(errors="replace").splitlines() if logs else []


def log_lines(server: EcflowServer, marker: str, path: str, since: int = 0) -> list[str]:
    """Log lines from line ``since`` on holding ``marker`` (``chd:meter``, `` aborted:``) about exactly ``path``."""
    return [line for line in server_log(server)[since:]
            if marker in line and (f"{path} " in line or line.endswith(path))]


def job_processes(server: EcflowServer, path: str) -> list[str]:
    """Command lines of the processes still running for task ``path`` of this server (found by environment)."""
    wanted = {f"ECF_PORT={server.port}".encode(), f"ECF_NAME={path}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = set((entry / "environ").read_bytes().split(b"\0"))
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if wanted <= environment:
            found.append(f"{entry.name}: {command}")
    return found


def no_job_processes_within(server: EcflowServer, path: str, timeout: float, what: str) -> None:
    """Wait until no process of task ``path`` runs; fail naming the ones still running after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while remaining := job_processes(server, path):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s; still running: {remaining}")
        time.sleep(0.05)


def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll every 0.05 s until ``condition()``; the seconds it took, or fail after ``timeout`` s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - start
