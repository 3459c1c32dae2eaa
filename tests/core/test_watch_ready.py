"""A shared watch is ready for its waiters only once etcd has confirmed it, over either transport.

A post landing between the watch's start revision and etcd's creation of the watch reaches the watch only
through etcd's sync of unsynced watchers (every 100 ms): a waiter must read what exists after the creation,
not before. A delaying proxy in front of etcd holds every answer back, so the order is plain to see.
"""

from __future__ import annotations

import pytest
from core_helpers import QuietSubscriber, destination_for
from tcp_proxy import TcpProxy

from aviso_workflows.config import StoreConfig
from aviso_workflows.watch import PrefixWatch

BOUND = 10.0  # seconds: the longest any step below may take
DELAY = 0.3  # seconds the proxy holds each answer of etcd: far longer than a thread switch



@pytest.mark.parametrize("transport", ["grpc", "gateway"])
def test_a_watch_is_ready_only_after_etcds_created_answer(delaying_proxy: TcpProxy, unique_date: str,
                                                           transport: str) -> None:
    delaying_proxy.set_delay(DELAY)
    config = StoreConfig(endpoints=(delaying_proxy.url,), transport=transport)
    watch = PrefixWatch(config, f"/ec/diss/{destination_for(unique_date, 'R')}/")
    watch.add(QuietSubscriber(), None)
    watch.start()
    try:
        assert watch.wait_ready(BOUND)
        assert watch.confirmed, "ready before etcd's answer creating the watch came through the proxy"
        assert watch.next_revision > 0, "the start revision was read before the watch"
    finally:
        watch.stop()
