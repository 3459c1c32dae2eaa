"""A day at operational volume, compressed: dissemination to 4 destinations and the mars chain, posted
with ``Store.notify`` while 1 000 waiters and 20 listeners (4 of them slow) follow, then replays of
the morning, noon and evening of the posting period.

Run at two sizes in one run (each on an etcd of its own) to see how each figure grows with volume:
by default 10 080 and 100 800 notifications (``scale.py RESULTS 2016`` for a quick run at one size).

Measured: notify throughput, waiter release after their key's notify returned (p50, p99), listeners'
delay to the last notification after the producer finished (fast and slow), replay time and requests
of 1 % windows, peak RSS and TCP connections of this process to etcd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from common import (
    MARS,
    Figure,
    connections_to,
    counted,
    peak_rss_mb,
    percentile,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.listen import Position, listen
from aviso_workflows.status_chain import replay
from aviso_workflows.wait import wait_async

SIZES = [10_080, 100_800]
DESTINATIONS = ["SA", "SB", "SC", "SD"]
KEYS_PER_POST = 5
WAITERS = 1000
LISTENERS_PER_DESTINATION = 5  # one of each destination's five is slow
SLOW_PAUSE = 0.0005  # seconds a slow listener spends on each notification
DATE = "20300501"
BOUND = 900.0


def diss(destination: str, step: str) -> dict[str, Any]:
    return {**MARS, "destination": destination, "target": "E1", "date": DATE, "step": step}


class Day:
    """What the producer did: when each mars step's notify returned, and the posting period."""

    def __init__(self) -> None:
        self.mars_posted: dict[int, float] = {}
        self.started = self.ended = 0.0
        self.started_utc = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self.ended_utc = self.started_utc


def produce(url: str, total: int, day: Day) -> None:
    """Every destination's posts in a thread of its own; the mars steps the waiters want, spread over the day."""
    posts = total // KEYS_PER_POST // len(DESTINATIONS)
    every = max(1, posts // (WAITERS // 10))

    def destination_chain(index: int) -> None:
        store = Store([url])
        for post in range(posts):
            first = post * KEYS_PER_POST
            store.notify("dissemination", diss(DESTINATIONS[index], f"{first}/to/{first + KEYS_PER_POST - 1}"),
                         location=f"file:///{post}.grib")
            if index == 0 and post % every == 0 and post // every < WAITERS // 10:
                mars_batch(store, post // every, day)

    day.started, day.started_utc = time.monotonic(), _utc()
    with ThreadPoolExecutor(len(DESTINATIONS)) as pool:
        list(pool.map(destination_chain, range(len(DESTINATIONS))))
    store = Store([url])
    for batch in range(len(day.mars_posted) // 10, WAITERS // 10):  # any left over
        mars_batch(store, batch, day)
    day.ended, day.ended_utc = time.monotonic(), _utc()


def mars_batch(store: Store, batch: int, day: Day) -> None:
    store.notify("mars", {**MARS, "date": DATE, "step": f"{batch * 10}/to/{batch * 10 + 9}"})
    posted = time.monotonic()
    for step in range(batch * 10, batch * 10 + 10):
        day.mars_posted[step] = posted


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Waiters:
    """WAITERS asyncio waits in a loop of their own thread, one mars step each."""

    def __init__(self, url: str) -> None:
        self.released: dict[int, float] = {}
        self.store = Store([url])
        self.thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    async def _one(self, step: int) -> None:
        await wait_async(self.store, self.store.request("mars", {**MARS, "date": DATE, "step": step}), timeout=BOUND)
        self.released[step] = time.monotonic()

    async def _all(self) -> None:
        await asyncio.gather(*(self._one(step) for step in range(WAITERS)))


class Listener:
    """A listener on one destination counting what it got; a slow one pauses on each notification."""

    def __init__(self, url: str, destination: str, expected: int, slow: bool, start: Position) -> None:
        self.count, self.expected, self.slow, self.last = 0, expected, slow, 0.0
        self.stop = threading.Event()
        store = Store([url])
        request = store.request("dissemination", {k: v for k, v in diss(destination, "0").items() if k != "step"})
        self.thread = threading.Thread(target=self._run, args=(store, request, start), daemon=True)

    def _run(self, store: Store, request: Any, start: Position) -> None:
        with closing(listen(store, [request], after=start, stop=self.stop)) as stream:
            for _ in stream:
                self.count += 1
                if self.slow:
                    time.sleep(SLOW_PAUSE)
                if self.count >= self.expected:
                    self.last = time.monotonic()
                    return


def until(check: Callable[[], bool], what: str, gauge: Callable[[], None]) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {BOUND:g} s")
        gauge()
        time.sleep(0.2)


def replays(url: str, day: Day) -> dict[str, dict[str, float]]:
    """1 % windows of the posting period at its start, middle and end, over all four destinations."""
    length = day.ended_utc - day.started_utc
    window = length / 100
    found: dict[str, dict[str, float]] = {}
    for name, fraction in (("morning", 0.0), ("noon", 0.5), ("evening", 0.99)):
        store = Store([url])
        requests = counted(store)
        start = day.started_utc + length * fraction
        request = store.request("dissemination", {k: v for k, v in diss(DESTINATIONS[0], "0").items()
                                                  if k not in ("step", "destination")} | {"destination": DESTINATIONS})
        began = time.perf_counter()
        posts = replay(store, [request], start, start + window)
        found[name] = {"seconds": time.perf_counter() - began, "requests": requests(), "notifications": len(posts)}
    return found


def one_size(total: int) -> dict[str, Any]:
    with private_etcd() as info:
        url, connections = info.client_url, [0]

        def gauge() -> None:
            connections[0] = max(connections[0], connections_to(info.port))

        start = Position(Store([url]).current_revision())
        expected = total // KEYS_PER_POST // len(DESTINATIONS) * KEYS_PER_POST
        listeners = [Listener(url, d, expected, slow=i == 0, start=start)
                     for d in DESTINATIONS for i in range(LISTENERS_PER_DESTINATION)]
        waiters = Waiters(url)
        for thread in [waiters.thread, *(listener.thread for listener in listeners)]:
            thread.start()
        day = Day()
        producer = threading.Thread(target=produce, args=(url, total, day), daemon=True)
        producer.start()
        until(lambda: not producer.is_alive(), "posted", gauge)
        until(lambda: len(waiters.released) >= WAITERS, "all waiters released", gauge)
        until(lambda: all(listener.last for listener in listeners), "all listeners done", gauge)
        windows = replays(url, day)
    release = [waiters.released[s] - day.mars_posted[s] for s in range(WAITERS)]
    return {"total": total, "posting_s": day.ended - day.started,
            "throughput": total / (day.ended - day.started), "release_p50": percentile(release, 0.5),
            "release_p99": percentile(release, 0.99),
            "fast_behind": max(x.last for x in listeners if not x.slow) - day.ended,
            "slow_behind": max(x.last for x in listeners if x.slow) - day.ended,
            "replays": windows, "peak_rss": peak_rss_mb(), "connections": connections[0]}


def figures(results: list[dict[str, Any]]) -> list[Figure]:
    rows: list[Figure] = []
    for result in results:
        tag = f"{result['total']:,}".replace(",", " ") + " notifications"
        rows += [
            reported(f"{tag}: notify throughput (4 destinations + mars, with readers)", result["throughput"],
                     "notifications/s"),
            reported(f"{tag}: waiter release p50 (1 000 waits)", result["release_p50"] * 1000, "ms"),
            reported(f"{tag}: waiter release p99", result["release_p99"] * 1000, "ms"),
            reported(f"{tag}: fast listeners done after the producer", max(0.0, result["fast_behind"]), "s"),
            reported(f"{tag}: slow listeners done after the producer", max(0.0, result["slow_behind"]), "s"),
            reported(f"{tag}: peak RSS (all of it in one process)", result["peak_rss"], "MB"),
            reported(f"{tag}: TCP connections to etcd", result["connections"], "connections"),
        ]
        for name, window in result["replays"].items():
            rows.append(reported(f"{tag}: replay of the {name} 1 % window, 4 destinations", window["seconds"], "s"))
            rows.append(reported(f"{tag}: replay of the {name} window: requests", window["requests"], "requests"))
    return rows


def plot(results: list[dict[str, Any]]) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    sizes = [str(r["total"]) for r in results]
    axes[0].bar(sizes, [r["throughput"] for r in results])
    axes[0].set_title("notify throughput (notifications/s)", fontsize=9)
    axes[1].bar(sizes, [r["release_p99"] * 1000 for r in results])
    axes[1].set_title("waiter release p99 (ms)", fontsize=9)
    for offset, name in ((-0.27, "morning"), (0, "noon"), (0.27, "evening")):
        axes[2].bar([i + offset for i in range(len(results))], [r["replays"][name]["seconds"] for r in results],
                    width=0.27, label=name)
    axes[2].set_xticks(range(len(results)), sizes)
    axes[2].set_title("replay of a 1 % window, 4 destinations (s)", fontsize=9)
    axes[2].legend(fontsize=7)
    for axis in axes:
        axis.set_xlabel("notifications in the day")
    save_plot(figure, "scale")


def main() -> None:
    sizes = [int(a) for a in sys.argv[2:]] or SIZES
    results = [one_size(total) for total in sizes]
    for result in results:
        print(result, file=sys.stderr)
    write_results(results_path(), figures(results), [
        f"Scale: a compressed day of {sizes[-1]} notifications posted at {results[-1]['throughput']:.0f}/s while "
        f"{WAITERS} waiters and {len(DESTINATIONS) * LISTENERS_PER_DESTINATION} listeners followed; waiters "
        f"released p99 {results[-1]['release_p99'] * 1000:.0f} ms after their notify returned."])
    plot(results)


if __name__ == "__main__":
    main()
