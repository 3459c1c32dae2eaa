"""Small helpers shared by the core tests (requests on a test's own date, snapshots of etcd)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from threads import joined as join_within
from waiting import eventually, waits_following

from aviso_workflows import Store
from aviso_workflows.etcd import KeyValue

WAIT_BOUND = 10.0  # seconds: no test waits longer than this for something that should be immediate


def mars(date: str, /, **fields: Any) -> dict[str, Any]:
    """A complete mars request on ``date`` (fields override the defaults)."""
    raw: dict[str, Any] = {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
                           "stream": "oper", "step": 0}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def diss(date: str, /, **fields: Any) -> dict[str, Any]:
    """A complete dissemination request on ``date`` (destination COM, target E1 unless given)."""
    fields = {"destination": "COM", "target": "E1", **fields}
    raw = mars(date, **fields)
    raw["event"] = "dissemination"
    return {k: v for k, v in raw.items() if v is not None}


def destination_for(date: str, tag: str = "T") -> str:
    """A dissemination destination no other test uses (its own status key and watch prefix)."""
    return f"{tag}{date}"


def mars_key(date: str, step: int | str = 0, time_: str = "00") -> str:
    """The data key pyaviso writes for the default mars request."""
    return f"/ec/mars/date={date},class=od,expver=0001,domain=g,time={time_},stream=oper,step={step}"


def everything(store: Store, prefix: str) -> list[KeyValue]:
    """Every key under ``prefix`` now."""
    return store.gateway.range_all(prefix)[1]


class Snapshot:
    """The store's revision and the keys under some prefixes, to prove that nothing was written."""

    def __init__(self, store: Store, *prefixes: str) -> None:
        self.store = store
        self.prefixes = prefixes or ("/",)
        self.revision = store.current_revision()
        self.keys = self._keys()

    def _keys(self) -> dict[str, tuple[str, int]]:
        return {kv.key: (kv.value, kv.mod_revision) for p in self.prefixes for kv in everything(self.store, p)}

    def assert_unchanged(self) -> None:
        assert self.store.current_revision() == self.revision, "something was written"
        assert self._keys() == self.keys


def status_of(kv: KeyValue | None) -> dict[str, Any]:
    assert kv is not None, "no status key"
    return json.loads(kv.value)


def joined(thread: threading.Thread, outcome: dict[str, Any], bound: float = WAIT_BOUND) -> Any:
    """Join within ``bound`` seconds (10 by default) and return the result (re-raising the thread's error)."""
    return join_within(thread, outcome, bound)


def security_helpers() -> ModuleType:
    """The security tests' helpers: their ``AuthProxy`` forwards only ``POST /v3/kv/range``, as Aviso's
    read proxy does (a store behind it finds its watch refused and polls)."""
    folder = str(Path(__file__).resolve().parent.parent / "security")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import security_helpers as helpers

    return helpers


def waits_on(store: Store, raw: Any, fixtures: pytest.FixtureRequest) -> int:
    """How many waits for ``raw`` follow ``store`` now, on any backend of ``any_store``: on etcd the
    subscribers of its confirmed shared watch; on the aviso-server double (no shared watch: one stream per
    wait, subscribed before the server reads history) the streams it has open."""
    if store.config.endpoints[0].startswith("aviso+"):
        return int(fixtures.getfixturevalue("aviso_double").open_streams)
    return waits_following(store, raw)


def until_waiting(store: Store, raw: Any, fixtures: pytest.FixtureRequest, count: int = 1) -> None:
    """Wait (bounded) until ``count`` waits for ``raw`` follow ``store`` (see :func:`waits_on`)."""
    eventually(lambda: waits_on(store, raw, fixtures) >= count, what=f"{count} wait(s) for {raw} following the store")


class QuietSubscriber:
    """A subscriber of a shared watch that ignores what it is given (for tests that only join and leave, or
    look at the watch itself)."""

    def on_puts(self, puts: list[KeyValue], revision: int) -> None:
        pass

    def on_resync(self) -> None:
        pass

    def on_failure(self, error: Exception) -> None:
        pass
