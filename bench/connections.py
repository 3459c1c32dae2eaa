"""Many blocking waits in one process: N ``Store.wait`` in threads beside N ``wait_async`` in one asyncio loop.

Every waiter waits for a key of its own (all under one status key, so they share one watch). Measured
for each form, in a fresh process of its own: the time from starting the waiters until every one has
read and joined the shared watch, the TCP connections to etcd at their highest while they start and
wait (from /proc/net/tcp), the threads, and the time from the last post until all were released.
Threaded waits share the store's pool of ``POOL_SIZE`` connections (a thread finding them busy waits
for one); watch streams have their own.

Each form runs three times, taking turns; the medians are reported (connections: the highest seen).

Usage: connections.py RESULTS.json [N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from common import (
    MARS,
    Figure,
    at_most,
    connections_to,
    os_threads,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.etcd import POOL_SIZE
from aviso_workflows.listen import HUB
from aviso_workflows.wait import wait_async

DATE = "20300301"
BOUND = 300.0  # seconds for any phase
FORMS = ("threads", "asyncio")
ROUNDS = 3


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (connections and threads: their highest)."""
    highest = ("connections", "threads")
    return {name: max(r[name] for r in runs) if name in highest else statistics.median(r[name] for r in runs)
            for name in runs[0]}


def subscribers() -> int:
    return sum(w.subscriber_count for w in HUB.watches())


def counting_reads() -> Callable[[], int]:
    """Requests whose first read finished (``Store.read`` for threads, ``Store.read_many`` for asyncio)."""
    done = [0]
    read, read_many = Store.read, Store.read_many

    def counted_read(self: Store, request: Any, **options: Any) -> Any:
        try:
            return read(self, request, **options)
        finally:
            done[0] += 1

    def counted_many(self: Store, requests: Any, **options: Any) -> Any:
        try:
            return read_many(self, requests, **options)
        finally:
            done[0] += len(requests)

    Store.read = counted_read  # type: ignore[method-assign]
    Store.read_many = counted_many  # type: ignore[method-assign]
    return lambda: done[0]


class Peak:
    """The highest connection and thread counts seen."""

    def __init__(self, port: int) -> None:
        self.port, self.connections, self.threads = port, 0, 0

    def sample(self) -> None:
        self.connections = max(self.connections, connections_to(self.port))
        self.threads = max(self.threads, os_threads())


def until(check: Callable[[], bool], peak: Peak, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {BOUND:g} s")
        peak.sample()
        time.sleep(0.005)


def post_all(url: str, count: int) -> float:
    store = Store([url])
    store.notify("mars", {**MARS, "date": DATE, "step": f"0/to/{count - 1}"})
    return time.monotonic()


def threaded(url: str, port: int, count: int) -> dict[str, float]:
    store, reads, peak = Store([url]), counting_reads(), Peak(port)
    released: list[float] = []
    started = time.monotonic()

    def one(step: int) -> None:
        store.wait("mars", {**MARS, "date": DATE, "step": step}, timeout=BOUND)
        released.append(time.monotonic())

    threads = [threading.Thread(target=one, args=(step,), daemon=True) for step in range(count)]
    for thread in threads:
        thread.start()
    until(lambda: reads() >= count and subscribers() >= count, peak, "all waiting")
    armed = time.monotonic() - started
    last_post = post_all(url, count)
    until(lambda: len(released) >= count, peak, "all released")
    return {"armed_s": armed, "release_s": max(released) - last_post, "connections": peak.connections,
            "threads": peak.threads}


def in_asyncio(url: str, port: int, count: int) -> dict[str, float]:
    store, reads, peak = Store([url]), counting_reads(), Peak(port)

    async def run() -> dict[str, float]:
        started = time.monotonic()
        tasks = [asyncio.create_task(wait_async(store, store.request("mars", {**MARS, "date": DATE, "step": step}),
                                                timeout=BOUND)) for step in range(count)]
        while reads() < count or subscribers() < count:
            if time.monotonic() - started > BOUND:
                raise TimeoutError("not all waiting")
            peak.sample()
            await asyncio.sleep(0.005)
        armed = time.monotonic() - started
        last_post = await asyncio.to_thread(post_all, url, count)
        await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
        return {"armed_s": armed, "release_s": time.monotonic() - last_post, "connections": peak.connections,
                "threads": peak.threads}

    return asyncio.run(run())


def bare_threads(count: int) -> dict[str, float]:
    """Only starting ``count`` threads that wait on an event: the floor of any threaded form here."""
    ready = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=ready.wait, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    took = time.monotonic() - started
    ready.set()
    return {"armed_s": took}


def child(form: str, count: int) -> None:
    if form == "bare":
        print("RESULT " + json.dumps(bare_threads(count)), flush=True)
        return
    with private_etcd() as etcd:
        measure = threaded if form == "threads" else in_asyncio
        result = measure(etcd.client_url, etcd.port, count)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(form: str, count: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", form, str(count)], capture_output=True, text=True,
                          timeout=3 * BOUND)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{form} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def figures(results: dict[str, dict[str, float]], count: int) -> list[Figure]:
    threads, loop = results["threads"], results["asyncio"]
    return [
        at_most(f"{count} threaded waits: TCP connections to etcd ({POOL_SIZE} pooled + the watch stream)",
                threads["connections"], "connections", POOL_SIZE + 1, loop["connections"]),
        at_most(f"{count} threaded waits: time until all wait ÷ asyncio form's", threads["armed_s"] / loop["armed_s"],
                "×", 1.5),
        reported(f"{count} threaded waits: time until all wait", threads["armed_s"], "s"),
        reported(f"{count} asyncio waits: time until all wait", loop["armed_s"], "s"),
        reported(f"{count} threaded waits: last post → all released", threads["release_s"], "s"),
        reported(f"{count} asyncio waits: last post → all released", loop["release_s"], "s"),
        reported(f"{count} threaded waits: threads", threads["threads"], "threads"),
        reported(f"starting {count} threads that do nothing (the floor of any threaded form)",
                 results["bare"]["armed_s"], "s"),
    ]


def plot(results: dict[str, dict[str, float]], count: int) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for axis, (field, title) in zip(axes, (("armed_s", "until all wait (s)"),
                                           ("connections", "TCP connections to etcd"))):
        axis.bar(list(FORMS), [results[form][field] for form in FORMS], color=["tab:blue", "tab:orange"])
        axis.set_title(f"{count} waits: {title}", fontsize=9)
    axes[1].axhline(POOL_SIZE + 1, color="grey", linestyle="--", linewidth=1, label=f"target ≤ {POOL_SIZE + 1}")
    axes[1].legend(fontsize=7)
    save_plot(figure, "connections")


def main() -> None:
    if sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    # the forms take turns, ROUNDS times each: the median of each is compared (a busy machine skews one run)
    rounds = [{form: run_child(form, count) for form in (*FORMS, "bare")} for _ in range(ROUNDS)]
    results = {form: median_run([r[form] for r in rounds]) for form in (*FORMS, "bare")}
    print(json.dumps(results), file=sys.stderr)
    write_results(results_path(), figures(results, count), [
        f"Threaded waits: {count} `Store.wait` in threads share the store's {POOL_SIZE} pooled connections and "
        f"one watch stream ({results['threads']['connections']} connections at most, "
        f"{results['threads']['armed_s']:.2f} s until all wait; the asyncio form: "
        f"{results['asyncio']['connections']} connections, {results['asyncio']['armed_s']:.2f} s)."])
    plot(results, count)


if __name__ == "__main__":
    main()
