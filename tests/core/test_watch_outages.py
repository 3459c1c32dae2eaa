"""A watch source tells its outage listeners when it loses etcd and when it has it again; every shared watch of
the process relays its outages to one registry. A private etcd is stopped and started under the watch."""

from __future__ import annotations

import queue
from pathlib import Path

from core_helpers import QuietSubscriber, destination_for
from etcd_helpers import running_etcd

from aviso_workflows import server
from aviso_workflows.config import StoreConfig
from aviso_workflows.watch import OUTAGES, PrefixWatch

BOUND = 30.0  # seconds: the longest any step below may take (the watch retries every 2 s at most)



class _Heard:
    """What one listener was told, in order (told on the watch's thread)."""

    def __init__(self) -> None:
        self.said: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()

    def on_outage(self, error: Exception) -> None:
        self.said.put(("outage", error))

    def on_reconnected(self, seconds: float) -> None:
        self.said.put(("reconnected", seconds))

    def next(self) -> tuple[str, object]:
        return self.said.get(timeout=BOUND)


class _HeardOfWatches(_Heard):
    def __init__(self, watch: PrefixWatch) -> None:
        super().__init__()
        self.watch = watch

    def on_outage(self, watch: PrefixWatch, error: Exception) -> None:  # type: ignore[override]
        if watch is self.watch:
            super().on_outage(error)

    def on_reconnected(self, watch: PrefixWatch, seconds: float) -> None:  # type: ignore[override]
        if watch is self.watch:
            super().on_reconnected(seconds)


def test_listeners_hear_of_an_outage_once_and_of_its_end(tmp_path: Path, unique_date: str) -> None:
    with running_etcd(tmp_path / "etcd") as info:
        watch = PrefixWatch(StoreConfig(endpoints=(info.client_url,)), f"/ec/diss/{destination_for(unique_date, 'O')}/")
        early, everywhere = _Heard(), _HeardOfWatches(watch)
        watch.add_outage_listener(early)
        OUTAGES.add(everywhere)
        watch.add(QuietSubscriber(), None)
        watch.start()
        try:
            assert watch.wait_ready(BOUND)
            server.stop(tmp_path / "etcd")
            kind, error = early.next()
            assert kind == "outage" and isinstance(error, Exception)
            assert everywhere.next() == ("outage", error)
            late = _Heard()
            watch.add_outage_listener(late)  # added during the outage: told of it at once
            assert late.next() == ("outage", error)
            server.start(tmp_path / "etcd", info.port)
            for listener in (early, everywhere, late):
                kind, seconds = listener.next()
                assert kind == "reconnected" and isinstance(seconds, float) and seconds > 0
            assert early.said.empty(), "one outage, told once"
        finally:
            OUTAGES.remove(everywhere)
            watch.stop()
