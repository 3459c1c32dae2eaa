"""Connections to etcd: threads of one process share a bounded pool for their requests; watch streams,
which hold a connection for as long as they run, have their own and never exhaust that pool.

Counted by a TCP proxy in front of etcd (every connection it accepted), so nothing is estimated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing

import pytest
from core_helpers import WAIT_BOUND, destination_for, diss, mars
from tcp_proxy import TcpProxy
from threads import joined, run_in_thread

from aviso_workflows import Store
from aviso_workflows.etcd import POOL_SIZE
from aviso_workflows.listen import Position, listen

WAITERS = 200
#: Connections a shared watch may use besides the pool: its stream, and one more if it had to reconnect.
WATCH_CONNECTIONS = 2


@pytest.fixture
def proxy(etcd_url: str) -> Iterator[TcpProxy]:
    with TcpProxy.start(etcd_url) as running:
        yield running


def test_threaded_waits_share_a_bounded_pool(proxy: TcpProxy, store: Store, unique_date: str) -> None:
    waiting = Store([proxy.url])  # a store identity of its own: only this test's connections go through the proxy
    store.notify(mars(unique_date, step=f"0/to/{WAITERS // 2 - 1}"))  # half is there at once, half comes later
    outcomes = [run_in_thread(lambda step=step: waiting.wait(mars(unique_date, step=step), timeout=4 * WAIT_BOUND))
                for step in range(WAITERS)]
    store.notify(mars(unique_date, step=f"{WAITERS // 2}/to/{WAITERS - 1}"))
    found = [joined(thread, outcome, 5 * WAIT_BOUND) for thread, outcome in outcomes]
    assert [n[0].request["step"] for n in found] == [str(step) for step in range(WAITERS)]
    opened = proxy.stats()["connections"]
    assert opened <= POOL_SIZE + WATCH_CONNECTIONS, f"{WAITERS} threads opened {opened} connections"


def test_waits_starting_together_share_their_reads(proxy: TcpProxy, store: Store, unique_date: str) -> None:
    """With etcd slow to answer, threads queue behind the read under way and are all served by the next one."""
    store.notify(mars(unique_date, step=f"0/to/{WAITERS - 1}"))
    waiting = Store([proxy.url])
    waiting.current_revision()
    proxy.set_delay(0.1)
    before = proxy.stats()["requests"]
    outcomes = [run_in_thread(lambda step=step: waiting.wait(mars(unique_date, step=step), timeout=4 * WAIT_BOUND))
                for step in range(WAITERS)]
    found = [joined(thread, outcome, 5 * WAIT_BOUND) for thread, outcome in outcomes]
    assert len(found) == WAITERS
    sent = proxy.stats()["requests"] - before
    assert sent <= WAITERS // 4, f"{WAITERS} waits sent {sent} requests"


def test_watch_streams_never_exhaust_the_pool(proxy: TcpProxy, store: Store, unique_date: str) -> None:
    """More listeners than the pool has connections, each streaming: requests of other threads still go through."""
    listening = Store([proxy.url])
    streams = POOL_SIZE + 4
    stop = threading.Event()
    destinations = [destination_for(unique_date, tag=f"P{i}") for i in range(streams)]
    start = Position(store.current_revision())

    def first_of(destination: str) -> str:
        request = listening.request(diss(unique_date, destination=destination, step=None))
        with closing(listen(listening, [request], after=start, stop=stop)) as stream:
            return next(stream).request["destination"]

    outcomes = [run_in_thread(lambda d=destination: first_of(d)) for destination in destinations]
    try:
        for destination in destinations:
            store.notify(diss(unique_date, destination=destination, step=1))
        assert sorted(joined(thread, outcome, 3 * WAIT_BOUND) for thread, outcome in outcomes) == sorted(destinations)
        thread, outcome = run_in_thread(lambda: listening.get(diss(unique_date, destination=destinations[0], step=1)))
        assert len(joined(thread, outcome, WAIT_BOUND)) == 1, "a plain read next to the streams"
    finally:
        stop.set()
    opened = proxy.stats()["connections"]
    assert opened <= streams * WATCH_CONNECTIONS + POOL_SIZE, f"{streams} streams: {opened} connections"
