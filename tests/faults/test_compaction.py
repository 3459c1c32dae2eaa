"""History compacted (and the database defragmented) past a listener's position loses nothing.

A cursor-based listener resumes by range reads of what changed since its cursor; a live watch that
comes back to "required revision has been compacted" reads again the same way. Compaction affects the
whole store, so these tests run on an etcd of their own.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from etcd_helpers import running_etcd
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.listen import Cursor, Position, listen, wait
from aviso_workflows.store import Notification

BOUND = 30.0  # seconds: the longest any step of these tests may take
DATE = "20240301"


@pytest.fixture(scope="module")
def own_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_etcd(tmp_path_factory.mktemp("etcd-compaction")) as info:
        yield info.client_url


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))


def mars(step: int, date: str = DATE, **extra: Any) -> dict[str, Any]:
    return {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
            "stream": "oper", "step": step, **extra}


def day(store: Store, date: str) -> Any:
    raw = mars(0, date)
    del raw["step"]
    return store.request(raw)


def compact_and_defragment(store: Store) -> int:
    """Compact all history up to now and defragment the database; returns the compacted revision."""
    revision = store.current_revision()
    store.gateway.compact(revision, physical=True)
    answer = requests.post(store.gateway.url("maintenance/defragment"), json={}, timeout=BOUND)
    answer.raise_for_status()
    return revision


def history_is_gone(store: Store, revision: int) -> bool:
    answer = requests.post(store.gateway.url("kv/range"), timeout=BOUND,
                           json={"key": "Lw==", "revision": revision - 1})  # "/" at a compacted revision
    return answer.status_code != 200 and "compacted" in answer.text


def steps(notifications: list[Notification]) -> list[int]:
    return [int(n.request["step"]) for n in notifications]


def test_a_cursor_resumes_after_compaction_and_defragmentation_without_a_loss(
        own_etcd: str, isolated: None) -> None:
    store = Store([own_etcd])
    date = "20240302"
    cursor = Cursor("compacted")
    store.notify(mars(0, date))
    handled = list(listen(store, [day(store, date)], after=Position(store.current_revision() - 1), cursor=cursor,
                          until_revision=store.current_revision()))
    assert steps(handled) == [0]

    for step in range(6, 61, 6):  # posted while the listener is stopped, then history is compacted
        store.notify(mars(step, date))
    store.notify(mars(0, date, expver=2))  # another request's key: not for this listener
    compacted = compact_and_defragment(store)
    assert history_is_gone(store, compacted) and cursor.load() is not None
    assert cursor.load().revision < compacted  # type: ignore[union-attr]

    resumed = list(listen(store, [day(store, date)], cursor=cursor, until_revision=store.current_revision()))

    assert steps(resumed) == list(range(6, 61, 6))
    assert [n.revision for n in resumed] == sorted(n.revision for n in resumed)


class CuttableProxy:
    """A TCP proxy to etcd on loopback whose connections can be cut and refused for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=BOUND)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until ``restore()``."""
        self.refusing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def restore(self) -> None:
        self.refusing.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(BOUND)


@pytest.fixture
def proxy(own_etcd: str) -> Iterator[CuttableProxy]:
    cuttable = CuttableProxy(int(own_etcd.rsplit(":", 1)[1]))
    yield cuttable
    cuttable.close()


class Collector:
    """A live listener through the proxy, on a thread."""

    def __init__(self, store: Store, request: Any) -> None:
        self.received: list[Notification] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        start = Position(store.current_revision())
        self.thread = threading.Thread(target=self._run, args=(store, request, start), daemon=True)
        self.thread.start()

    def _run(self, store: Store, request: Any, start: Position) -> None:
        try:
            for notification in listen(store, [request], after=start, stop=self.stop, poll=0.05):
                self.received.append(notification)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def has(self, count: int) -> bool:
        """True once ``count`` notifications arrived (the listener's error, if it failed, raised)."""
        if self.error is not None:
            raise self.error
        return len(self.received) >= count

    def until(self, count: int) -> list[Notification]:
        eventually(lambda: self.has(count), what=f"{count} notifications reached the listener", timeout=BOUND)
        time.sleep(0.3)  # not a synchronisation: the window in which anything delivered twice would arrive
        self.stop.set()
        self.thread.join(BOUND)
        if self.error is not None:
            raise self.error
        return self.received


def test_a_watch_compacted_past_while_disconnected_reads_again_and_misses_nothing(
        own_etcd: str, proxy: CuttableProxy, isolated: None, caplog: pytest.LogCaptureFixture) -> None:
    date = "20240303"
    direct = Store([own_etcd])
    listener_store = Store([proxy.url], timeout=2.0)
    collector = Collector(listener_store, day(listener_store, date))  # from now: later posts reach it
    direct.notify(mars(0, date))
    eventually(lambda: collector.has(1), what="the first post reached the listener before the cut")

    with caplog.at_level(logging.INFO, logger="aviso_workflows"):
        proxy.cut()
        for step in range(6, 121, 6):  # while the listener is cut off
            direct.notify(mars(step, date))
        compacted = compact_and_defragment(direct)
        proxy.restore()
        received = collector.until(21)

    assert steps(received) == list(range(0, 121, 6))
    assert any("compacted" in r.getMessage() for r in caplog.records), "the watch never met the compacted history"
    assert history_is_gone(direct, compacted)


def test_a_waiter_compacted_past_while_disconnected_is_released(
        own_etcd: str, proxy: CuttableProxy, isolated: None) -> None:
    date = "20240304"
    direct = Store([own_etcd])
    waiter_store = Store([proxy.url], timeout=2.0)
    request = waiter_store.request({**mars(0, date), "step": [0, 6, 12]})
    outcome: list[Any] = []
    progress: list[str] = []

    def run() -> None:
        try:
            outcome.append(wait(waiter_store, request, timeout=BOUND,
                                on_progress=lambda _found, _total, n: progress.append(n.request["step"])))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            outcome.append(error)

    waiting = threading.Thread(target=run, daemon=True)
    waiting.start()
    direct.notify(mars(0, date))  # found by the waiter's first read or by its watch, whichever comes first
    eventually(lambda: progress == ["0"] or outcome, what="the waiter found step 0 before the cut")
    proxy.cut()
    direct.notify({**mars(0, date), "step": [6, 12]})
    direct.notify(mars(18, date))  # more history after the keys, then all of it compacted
    compact_and_defragment(direct)
    proxy.restore()
    waiting.join(BOUND + 5)

    assert len(outcome) == 1 and isinstance(outcome[0], list), outcome
    assert steps(outcome[0]) == [0, 6, 12]


def test_a_watch_back_from_a_cut_delivers_every_post_of_a_key_made_meanwhile(
        own_etcd: str, proxy: CuttableProxy, isolated: None) -> None:
    date = "20240305"
    direct = Store([own_etcd])
    listener_store = Store([proxy.url], timeout=2.0)
    collector = Collector(listener_store, day(listener_store, date))  # from now: later posts reach it
    direct.notify(mars(0, date), location="file:///a")
    eventually(lambda: collector.has(1), what="the first post reached the listener before the cut")

    proxy.cut()  # the watch resumes with the history it missed, several puts of one key in one answer
    direct.notify(mars(0, date), location="file:///b")
    direct.notify(mars(6, date))
    direct.notify(mars(0, date), location="file:///c")
    proxy.restore()
    received = collector.until(4)

    assert [(int(n.request["step"]), n.location) for n in received] == [
        (0, "file:///a"), (0, "file:///b"), (6, None), (0, "file:///c")]
