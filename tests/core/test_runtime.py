"""The runtime of a store identity: one shared watch per prefix for all its stores, and a close that ends it all."""

from __future__ import annotations

from core_helpers import joined, mars
from threads import run_in_thread
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.config import StoreConfig
from aviso_workflows.runtime import Runtime, runtime_for

BOUND = 20.0


class _Quiet:
    """A subscriber that ignores whatever it is given (it only holds a watch open)."""

    def on_puts(self, *_: object) -> None:
        return None

    on_resync = on_failure = on_puts


def _own_store(etcd_url: str, tag: str) -> Store:
    """A store of an identity no other test has (a header of its own), so its runtime is its own."""
    return Store(config=StoreConfig(endpoints=(etcd_url,), headers={"x-aviso-runtime-test": tag}))


def test_stores_of_one_identity_share_a_runtime_and_its_close_ends_its_watches(etcd_url: str,
                                                                             unique_date: str) -> None:
    store, twin = _own_store(etcd_url, unique_date), _own_store(etcd_url, unique_date)
    runtime = runtime_for(store)
    assert runtime_for(twin) is runtime, "one runtime per identity"
    assert runtime_for(_own_store(etcd_url, unique_date + "-other")) is not runtime
    raw = mars(unique_date, step=0)
    holder = _Quiet()
    held = runtime.hub.join(store.config, "/ec/mars/", holder, None)
    assert held.wait_ready(BOUND)
    thread, outcome = run_in_thread(lambda: twin.wait(raw, timeout=BOUND))
    eventually(lambda: held.subscriber_count == 2, what="the wait joins the watch held open")
    assert runtime.watches() == [held], "the twin store's wait shares the runtime's watch"
    store.notify(raw)
    assert [n.key for n in joined(thread, outcome, BOUND)] == [store.request(raw).keys()[0]]
    runtime.close()
    assert not held.alive and runtime.watches() == []
    assert runtime_for(store) is not runtime, "a closed runtime is out of the registry: the next one is new"


def test_a_runtime_made_by_hand_closes_what_it_holds(etcd_url: str, unique_date: str) -> None:
    with Runtime(_own_store(etcd_url, unique_date)) as runtime:
        watch = runtime.hub.join(runtime.store.config, "/ec/mars/", _Quiet(), None)
        assert watch.wait_ready(BOUND) and watch.alive
        closed: list[str] = []
        runtime.part("probe", lambda: _Part(closed))
        assert runtime.part("probe", lambda: _Part(["a second one"])).closed is closed, "one part per key"
    assert not watch.alive and closed == ["closed"]


class _Part:
    def __init__(self, closed: list[str]) -> None:
        self.closed = closed

    def close(self) -> None:
        self.closed.append("closed")
