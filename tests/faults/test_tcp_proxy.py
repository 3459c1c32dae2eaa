"""The fault-injection TCP proxy, against the real etcd: it forwards, delays etcd's answers on demand, and counts."""

from __future__ import annotations

import time

from tcp_proxy import TcpProxy

from aviso_workflows import Store

DELAY = 0.3  # seconds
FAST = 0.25  # seconds: a loopback read without delay takes milliseconds


def _notification(date: str) -> dict[str, object]:
    return {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper",
            "step": 0}


def _timed_get(store: Store, date: str) -> float:
    """Seconds one read takes; it must still find the notification, so the bytes really went through the proxy."""
    started = time.monotonic()
    found = store.get(_notification(date))
    elapsed = time.monotonic() - started
    assert len(found) == 1
    return elapsed


def test_store_works_through_the_proxy(store: Store, delaying_proxy: TcpProxy, unique_date: str) -> None:
    # `store` is only requested for its isolated state dir and config; all traffic goes through the proxy,
    # over the HTTP gateway: the proxy counts HTTP/1 requests
    proxied = Store([delaying_proxy.url], transport="gateway")
    proxied.notify(_notification(unique_date))

    assert _timed_get(proxied, unique_date) < FAST
    stats = delaying_proxy.stats()
    assert stats["connections"] > 0
    assert stats["requests"] >= 2  # the notify and the read at least


def test_delay_slows_reads_and_can_be_lifted(store: Store, delaying_proxy: TcpProxy, unique_date: str) -> None:
    proxied = Store([delaying_proxy.url])
    proxied.notify(_notification(unique_date))
    _timed_get(proxied, unique_date)  # connect (and warm up) before timing

    delaying_proxy.set_delay(DELAY)
    assert _timed_get(proxied, unique_date) >= DELAY  # a lower bound: only an applied delay can reach it

    delaying_proxy.set_delay(0)
    assert _timed_get(proxied, unique_date) < FAST


def test_stop_ends_the_process(etcd_url: str) -> None:
    with TcpProxy.start(etcd_url) as proxy:
        process = proxy.process
    assert process.returncode == 0  # SIGTERM was handled: a clean exit, not a kill
