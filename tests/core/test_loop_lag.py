"""The event loop stays responsive while a thousand asyncio waiters are released.

Airflow's triggerer runs every deferred sensor's ``wait_async`` in one event loop; a loop held for long
delays every other trigger and the triggerer's heartbeat. A probe task sleeps 5 ms again and again and
records how late it wakes up, while notifications posted from a thread (127 keys per transaction)
release 1 000 waiters, each waiting for a key of its own. Both ways a waiter hears of posts are
covered: the shared etcd watch, and reading every ``poll_interval`` through a proxy that refuses
watches (as Aviso's authenticating proxy does).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from core_helpers import mars, mars_key, security_helpers
from waiting import counting_reads

from aviso_workflows import Store
from aviso_workflows.config import StoreConfig
from aviso_workflows.listen import HUB, wait_async
from aviso_workflows.notification import Notification
from aviso_workflows.watch import PrefixWatch

WAITERS = 1_000
BATCH = 127  # keys per post: with the status key, one transaction of 128 operations
PROBE_SLEEP = 0.005  # seconds the probe asks to sleep each time
MAX_LAG = 0.050  # seconds the probe may wake up late, at most
BOUND = 120.0  # seconds any phase of the test may take
POLL = 0.2  # seconds between two reads of a waiter through the proxy
TOKEN = "tok-loop-lag-7c21"
#: Seconds between two posts. Every waiter that one answer (a watch answer, or a poll) releases is
#: released in one turn of the loop, about 0.1 ms each: the bound holds for the 127 waiters of one post,
#: so posts are spaced for each answer to carry one post, a poll's included (polls every POLL seconds).
GAP = {False: 0.05, True: 1.5 * POLL}


@pytest.fixture(autouse=True)
def earlier_tests_heap_frozen() -> Iterator[None]:
    """The objects of every earlier test of the session left out of the garbage collector's walks: a full
    collection of that heap stops every thread for a few hundred ms (0.2 s with three million objects here),
    which is not the loop held by the code these tests measure."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


class Probe:
    """Sleeps PROBE_SLEEP seconds in a loop and keeps the largest delay past it (the loop's lag)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            asked = loop.time()
            await asyncio.sleep(PROBE_SLEEP)
            self.lags.append(loop.time() - asked - PROBE_SLEEP)

    async def stop(self) -> float:
        """Stop probing; the largest lag seen (seconds)."""
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, BOUND)
        return max(self.lags)


@pytest.fixture
def polling_store(etcd_url: str) -> Iterator[Store]:
    """A store behind the security tests' proxy: it forwards only ``POST /v3/kv/range``, so waiters
    find their watch refused and read every POLL seconds instead."""
    with security_helpers().AuthProxy(etcd_url, tokens=[TOKEN]) as proxy:
        yield Store(config=StoreConfig(endpoints=(proxy.url,), poll_interval=POLL, token=TOKEN))


def shared_watch(store: Store) -> PrefixWatch | None:
    """The waiters' shared watch on the mars prefix (one per store identity and prefix)."""
    return next((w for w in HUB.watches() if w.prefix == "/ec/mars/" and w.config == store.config), None)


def armed(store: Store, reads: list[int], polling: bool) -> bool:
    """Every waiter is subscribed and has read what exists; the watch streams or polls as expected."""
    watch = shared_watch(store)
    return watch is not None and watch.subscriber_count >= WAITERS and reads[0] >= WAITERS \
        and watch.polling == polling


async def until(check: Any, what: str) -> None:
    """Wait (bounded) for ``check()`` without holding the loop."""
    async with asyncio.timeout(BOUND):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


def post_all(producer: Store, date: str, gap: float) -> threading.Thread:
    """Post steps 0..WAITERS-1 in batches of BATCH keys (one transaction each), ``gap`` seconds apart,
    from a thread."""

    def body() -> None:
        for first in range(0, WAITERS, BATCH):
            last = min(first + BATCH, WAITERS) - 1
            producer.notify(mars(date, step=f"{first}/to/{last}"))
            time.sleep(gap)

    thread = threading.Thread(target=body, name="producer", daemon=True)
    thread.start()
    return thread


async def released_under_probe(waiting: Store, producer: Store, date: str, polling: bool) -> tuple[float, float]:
    """Arm WAITERS waiters, then post their keys under the probe; the largest lag while arming and
    while releasing (seconds).

    Only the release is held to MAX_LAG: starting a thousand coroutines in one go runs their first steps
    in one turn of the loop, which is the caller's choice.
    """
    reads = counting_reads(waiting)
    requests = [waiting.request(mars(date, step=step)) for step in range(WAITERS)]  # not the waiters' work
    arming = Probe()
    arming.start()
    waiters = [asyncio.create_task(wait_async(waiting, request, timeout=BOUND)) for request in requests]
    try:
        await until(lambda: armed(waiting, reads, polling), "every waiter is waiting")
        assert not any(w.done() for w in waiters), "a waiter ended before its key was posted"
        arming_lag = await arming.stop()
        releasing = Probe()
        releasing.start()
        poster = post_all(producer, date, GAP[polling])
        found: list[list[Notification]] = await asyncio.wait_for(asyncio.gather(*waiters), BOUND)
        releasing_lag = await releasing.stop()
        await asyncio.to_thread(poster.join, BOUND)
    finally:  # a failed run leaves no waiter, hence no shared watch, behind
        for waiter in waiters:
            waiter.cancel()
        await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), BOUND)
    assert [[n.key for n in each] for each in found] == [[mars_key(date, step)] for step in range(WAITERS)]
    assert shared_watch(waiting) is None, "the shared watch ends with its last waiter"
    return arming_lag, releasing_lag


@pytest.mark.timeout(300)
async def test_streaming_waiters_leave_the_loop_responsive(store: Store, unique_date: str) -> None:
    arming_lag, releasing_lag = await released_under_probe(store, store, unique_date, polling=False)
    print(f"streaming: max loop lag {arming_lag * 1000:.1f} ms arming (reported), {releasing_lag * 1000:.1f} ms "
          f"releasing")
    assert releasing_lag <= MAX_LAG, f"the loop was held {releasing_lag * 1000:.0f} ms while waiters were released"


@pytest.mark.timeout(300)
async def test_polling_waiters_leave_the_loop_responsive(store: Store, polling_store: Store,
                                                         unique_date: str) -> None:
    arming_lag, releasing_lag = await released_under_probe(polling_store, store, unique_date, polling=True)
    print(f"polling: max loop lag {arming_lag * 1000:.1f} ms arming (reported), {releasing_lag * 1000:.1f} ms "
          f"releasing")
    assert releasing_lag <= MAX_LAG, f"the loop was held {releasing_lag * 1000:.0f} ms while waiters were released"
