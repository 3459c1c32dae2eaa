"""wait: catch-up, release within milliseconds, any, timeout, no gap, one shared watch per prefix."""

from __future__ import annotations

import threading
import time

import pytest
from backend_fixture import any_store_fixture, aviso_double_fixture  # noqa: F401 - the backends' fixtures
from core_helpers import destination_for, diss, joined, mars, mars_key, until_waiting, waits_on
from threads import run_in_thread
from waiting import counting_reads, eventually, eventually_async, until_following

from aviso_workflows import Store, WaitTimeout
from aviso_workflows.listen import HUB, PrefixWatch

RELEASE_BOUND = 1.0  # seconds from the last post to the release (measured ~2 ms; generous for loaded CI)


def _watches(prefix: str) -> list[PrefixWatch]:
    return [w for w in HUB.watches() if w.prefix == prefix]


def test_released_at_once_for_keys_already_posted(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step="0/to/24/by/6"), location="file:///f")
    started = time.monotonic()
    found = any_store.wait(mars(unique_date, step="0/to/24/by/6"), timeout=5)
    assert time.monotonic() - started < RELEASE_BOUND
    assert [n.key for n in found] == [mars_key(unique_date, s) for s in (0, 6, 12, 18, 24)]
    assert {n.location for n in found} == {"file:///f"}
    assert found[0].request == {"date": unique_date, "class": "od", "expver": "0001", "domain": "g", "time": "00",
                                "stream": "oper", "step": "0"}


def test_released_at_once_every_time(any_store: Store, unique_date: str) -> None:
    """Ending a wait stops its watch promptly, even one whose stream is still being opened."""
    for step in range(10):
        any_store.notify(mars(unique_date, step=step))
        started = time.monotonic()
        assert len(any_store.wait(mars(unique_date, step=step), timeout=5)) == 1
        assert time.monotonic() - started < RELEASE_BOUND, f"iteration {step} took too long"


def test_short_timeout_with_a_slow_etcd_is_a_timeout(store: Store, unique_date: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd answering slowly (e.g. a slow disk) makes a short wait time out, not report etcd unreachable."""
    first_revision = PrefixWatch.first_revision

    def slow(watch: PrefixWatch) -> int:
        time.sleep(0.4)
        return first_revision(watch)

    monkeypatch.setattr(PrefixWatch, "first_revision", slow)
    with pytest.raises(WaitTimeout):
        store.wait(mars(unique_date), timeout=0.1)


def test_released_within_milliseconds_of_the_last_post(any_store: Store, unique_date: str,
                                                      request: pytest.FixtureRequest) -> None:
    thread, outcome = run_in_thread(lambda: any_store.wait(mars(unique_date, step="0/6/12"), timeout=20))
    until_waiting(any_store, mars(unique_date, step="0/6/12"), request)
    any_store.notify(mars(unique_date, step=0))
    any_store.notify(mars(unique_date, step=6))
    time.sleep(0.3)  # not a synchronisation: a window in which two of the three keys must not release the wait
    assert thread.is_alive(), "released before every key was posted"
    any_store.notify(mars(unique_date, step=12), location="last")
    posted = time.monotonic()
    found = joined(thread, outcome)
    assert outcome["ended"] - posted < RELEASE_BOUND
    assert [n.request["step"] for n in found] == ["0", "6", "12"]
    assert found[-1].location == "last"


def test_any_releases_on_the_first_matching_key(any_store: Store, unique_date: str,
                                                request: pytest.FixtureRequest) -> None:
    thread, outcome = run_in_thread(lambda: any_store.wait(mars(unique_date, step="0/to/240"), mode="any", timeout=20))
    until_waiting(any_store, mars(unique_date, step="0/to/240"), request)
    any_store.notify(mars(unique_date, step=7, time=12))  # another time: does not match
    time.sleep(0.2)  # not a synchronisation: a window in which the key of another time must not release the wait
    assert thread.is_alive()
    any_store.notify(mars(unique_date, step=120))
    (found,) = joined(thread, outcome)
    assert found.request["step"] == "120"


def test_any_with_a_wildcard_request(any_store: Store, unique_date: str, request: pytest.FixtureRequest) -> None:
    wildcard = {"event": "mars", "date": unique_date, "stream": "enfo"}
    thread, outcome = run_in_thread(lambda: any_store.wait(wildcard, mode="any", timeout=20))
    until_waiting(any_store, wildcard, request)
    any_store.notify(mars(unique_date, stream="oper"))
    any_store.notify(mars(unique_date, stream="enfo", step=3))
    (found,) = joined(thread, outcome)
    assert (found.request["stream"], found.request["step"]) == ("enfo", "3")


def test_timeout_raises_with_what_was_found(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step=6))
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        any_store.wait(mars(unique_date, step="0/6/12"), timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 0.5 + RELEASE_BOUND
    assert [n.request["step"] for n in caught.value.found] == ["6"]
    assert "1/3" in str(caught.value)


def test_progress_is_reported_per_key(any_store: Store, unique_date: str) -> None:
    any_store.notify(mars(unique_date, step=0))
    seen: list[tuple[int, int, str]] = []
    thread, outcome = run_in_thread(lambda: any_store.wait(
        mars(unique_date, step="0/6"), timeout=10, on_progress=lambda f, t, n: seen.append((f, t, n.request["step"]))))
    eventually(lambda: seen, what="the wait reported step 0, posted before it started")
    any_store.notify(mars(unique_date, step=6))
    joined(thread, outcome)
    assert seen == [(1, 2, "0"), (2, 2, "6")]


def test_no_gap_between_read_and_watch(any_store: Store, unique_date: str) -> None:
    """A post racing the start of the wait is never missed: either the read or the watch sees it."""
    for step in range(20):
        barrier = threading.Barrier(2)

        def waiter(step: int = step, barrier: threading.Barrier = barrier) -> object:
            barrier.wait()
            return any_store.wait(mars(unique_date, step=step), timeout=5)

        thread, outcome = run_in_thread(waiter)
        barrier.wait()
        time.sleep(step * 0.0005)  # spread the post over the waiter's start-up
        any_store.notify(mars(unique_date, step=step))
        posted = time.monotonic()
        found = joined(thread, outcome, bound=6)
        assert [n.request["step"] for n in found] == [str(step)]
        assert outcome["ended"] - posted < RELEASE_BOUND, f"iteration {step} released late"


def test_waiters_in_one_process_share_one_watch_per_prefix(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    prefix = f"/ec/diss/{destination}/"
    waiters = [run_in_thread(lambda step=step: store.wait(diss(unique_date, destination=destination, step=step),
                                                          timeout=20)) for step in range(12)]
    eventually(lambda: _watches(prefix) and _watches(prefix)[0].subscriber_count == 12
               and _watches(prefix)[0].connections_opened, what="the 12 waiters subscribed to one watch", timeout=5)
    (watch,) = _watches(prefix)
    assert watch.connections_opened == 1
    other = Store([store.config.endpoints[0]])  # another store object on the same etcd shares it too
    waiters.append(run_in_thread(lambda: other.wait(diss(unique_date, destination=destination, step=99), timeout=20)))
    eventually(lambda: watch.subscriber_count == 13, what="the other store's waiter joined the watch", timeout=5)
    assert _watches(prefix) == [watch] and watch.connections_opened == 1
    store.notify(diss(unique_date, destination=destination, step=["0/to/11", 99]))
    for thread, outcome in waiters:
        assert len(joined(thread, outcome)) == 1
    assert _watches(prefix) == [], "the watch ends with its last subscriber"


def test_wait_across_destinations_watches_each_prefix(store: Store, unique_date: str) -> None:
    one, two = destination_for(unique_date, "A"), destination_for(unique_date, "B")
    thread, outcome = run_in_thread(lambda: store.wait(diss(unique_date, destination=f"{one}/{two}"), timeout=20))
    until_following(store, diss(unique_date, destination=f"{one}/{two}"))
    store.notify(diss(unique_date, destination=two))
    time.sleep(0.1)  # not a synchronisation: a window in which one destination's key must not release the wait
    assert thread.is_alive()
    store.notify(diss(unique_date, destination=one))
    assert {n.key.split("/")[3] for n in joined(thread, outcome)} == {one, two}


async def test_wait_async(any_store: Store, unique_date: str, request: pytest.FixtureRequest) -> None:
    import asyncio

    from aviso_workflows.listen import wait_async

    wanted = any_store.request(mars(unique_date, step="0/6"))
    task = asyncio.create_task(wait_async(any_store, wanted, timeout=10))
    await eventually_async(lambda: waits_on(any_store, wanted, request) >= 1, what="the async wait following the store")
    await asyncio.to_thread(any_store.notify, mars(unique_date, step="0/6"))
    found = await asyncio.wait_for(task, 10)
    assert [n.request["step"] for n in found] == ["0", "6"]


def _connections_to(port: int) -> int:
    """Established TCP connections from this process to ``port`` (from /proc: sockets we hold)."""
    import os
    from pathlib import Path

    ours = {os.readlink(fd)[8:-1] for fd in Path("/proc/self/fd").iterdir()
            if os.path.exists(fd) and os.readlink(fd).startswith("socket:[")}
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in ours:
                count += 1
    return count


async def test_async_waiters_share_one_watch_and_a_few_connections(store: Store, unique_date: str) -> None:
    """200 asyncio waiters, each with its own Store object as triggers have, follow one watch and open
    no connection of their own; one notify of all their keys releases every one of them.
    """
    import asyncio
    from urllib.parse import urlsplit

    from aviso_workflows.listen import wait_async

    destination = destination_for(unique_date, "W")
    prefix = f"/ec/diss/{destination}/"
    port = urlsplit(store.config.endpoints[0]).port or 0
    connections_before = _connections_to(port)
    stores = [Store([store.config.endpoints[0]]) for _ in range(200)]
    reads = [counting_reads(each) for each in stores]
    waiters = [asyncio.create_task(wait_async(each, each.request(diss(unique_date, destination=destination,
                                                                      step=step)), timeout=60))
               for step, each in enumerate(stores)]
    await eventually_async(lambda: _watches(prefix) and _watches(prefix)[0].subscriber_count == 200
                           and _watches(prefix)[0].connections_opened, what="the 200 waiters subscribed to one watch",
                           timeout=30, every=0.05)
    (watch,) = _watches(prefix)
    assert watch.subscriber_count == 200 and watch.connections_opened == 1
    await eventually_async(lambda: sum(count for count, in reads) >= 200, what="the 200 waiters' first reads")
    assert _connections_to(port) <= connections_before + 4, "waiters opened connections of their own"
    assert not any(w.done() for w in waiters)

    await asyncio.to_thread(store.notify, diss(unique_date, destination=destination, step="0/to/199"))
    found = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert sorted(int(n.request["step"]) for each in found for n in each) == list(range(200))
    assert watch.connections_opened == 1
    assert _watches(prefix) == [], "the watch ends with its last waiter"
