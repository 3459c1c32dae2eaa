"""N deferred sensors: N ``AvisoTrigger.run()`` coroutines in one asyncio loop, as Airflow's triggerer runs them.

Every trigger waits for a key of its own. Once all are waiting, a producer process posts all the keys
(one batched notify, in transactions of 128 operations) and prints when its last transaction returned;
the figure is the time from then until the last trigger fired. Memory, threads and TCP connections
to etcd are those of this process (it runs only the triggers); the producer is another process.

Usage: concurrency.py RESULTS.json N [N ...]   (each N runs in a fresh process of its own)
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

from common import (
    MARS,
    Figure,
    airflow_environment,
    at_most,
    connections_to,
    os_threads,
    peak_rss_mb,
    private_etcd,
    pyplot,
    reported,
    results_path,
    rss_mb,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.listen import HUB

DATE = "20300201"
ARM_BOUND = 600.0  # seconds for all triggers to start waiting
RELEASE_BOUND = 120.0  # seconds for all to fire after the last post
PRODUCER = Path(__file__).with_name("producer.py")
GAUGE_EVERY = 1.0  # seconds between two looks at connections and threads while the triggers start
ARMED_TARGET = 3.0  # seconds for 10 000 triggers to be waiting
RELEASE_TARGET = 0.1  # seconds from the last post until the last of 10 000 triggers fired


def subscribers() -> int:
    return sum(w.subscriber_count for w in HUB.watches())


class Gauges:
    """Highest number of connections to etcd and threads seen while sampling."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.threads = 0

    def sample(self) -> None:
        self.connections = max(self.connections, connections_to(self.port))
        self.threads = max(self.threads, os_threads())



class CollectorClock:
    """Time spent in the garbage collector's collections (and how many were full ones) while it runs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._began = 0.0

    def _heard(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._began
        self.full += info["generation"] == 2

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._heard)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._heard)


async def one_trigger(request: dict[str, Any], fired: list[float]) -> None:
    from aviso_workflows.airflow import AvisoTrigger

    events = cast(AsyncGenerator[Any, None], AvisoTrigger(event="mars", request=request).run())
    event = await anext(events)
    if event.payload.get("status") != "success":
        raise RuntimeError(f"trigger failed: {event.payload}")
    fired.append(time.monotonic())
    await events.aclose()  # as the triggerer does once a trigger fired


async def measure(store: Store, etcd_url: str, port: int, count: int) -> dict[str, float]:
    requests = [store.request("mars", {**MARS, "date": DATE, "step": step}).as_dict() for step in range(count)]
    reads = count_reads()
    fired: list[float] = []
    gauges = Gauges(port)
    from aviso_workflows.airflow.hooks import AvisoHook

    await AvisoHook().aget_conn()  # Airflow's first connection lookup loads its secrets backends: not ours to time
    tracked_before = len(gc.get_objects())
    started = last_look = time.monotonic()
    with CollectorClock() as collector:
        tasks = [asyncio.create_task(one_trigger(request, fired)) for request in requests]
        while subscribers() < count or reads() < count:
            if time.monotonic() - started > ARM_BOUND:
                raise TimeoutError(f"only {subscribers()} of {count} triggers subscribed, {reads()} read")
            if time.monotonic() - last_look > GAUGE_EVERY:  # reading /proc/net/tcp takes a while: now and then
                gauges.sample()
                last_look = time.monotonic()
            await asyncio.sleep(0.01)
        armed = time.monotonic() - started
    gauges.sample()
    armed_rss = rss_mb()
    # Objects the collector tracks per waiting trigger: what each of its full collections walks (counted
    # after the clock stopped; the garbage not yet collected is counted too, so it is an upper bound).
    per_trigger = (len(gc.get_objects()) - tracked_before) / count
    with CollectorClock() as release_collector:  # a full collection of this heap takes about as long as the target
        producer = await asyncio.create_subprocess_exec(sys.executable, str(PRODUCER), etcd_url, DATE, str(count),
                                                        stdout=subprocess.PIPE)
        output, _ = await asyncio.wait_for(producer.communicate(), RELEASE_BOUND)
        posted = json.loads(output)
        await asyncio.wait_for(asyncio.gather(*tasks), RELEASE_BOUND)
    gauges.sample()
    return {"count": count, "armed_s": armed, "release_s": max(fired) - posted["last"],
            "first_release_s": min(fired) - posted["last"], "post_s": posted["last"] - posted["first"],
            "rss_mb": max(armed_rss, rss_mb()), "peak_rss_mb": peak_rss_mb(), "connections": gauges.connections,
            "threads": gauges.threads, "gc_s": collector.seconds, "gc_full": collector.full,
            "release_gc_s": release_collector.seconds, "release_gc_full": release_collector.full,
            "objects_per_trigger": per_trigger}


def count_reads() -> Any:
    """A counter of the requests whose store read finished in this process (to know when every trigger waits)."""
    done = [0]
    original = Store.read_many

    def counted(self: Store, requests: Any, **options: Any) -> Any:
        try:
            return original(self, requests, **options)
        finally:
            done[0] += len(requests)

    Store.read_many = counted  # type: ignore[method-assign]
    return lambda: done[0]


def child(count: int) -> None:
    """Measure one N in this process and print the result as JSON."""
    with private_etcd() as etcd:
        airflow_environment(etcd.client_url)
        import aviso_workflows.airflow  # noqa: F401 - Airflow's import takes seconds: before the clock starts
        store = Store([etcd.client_url])
        result = asyncio.run(measure(store, etcd.client_url, etcd.port, count))
    print("RESULT " + json.dumps(result), flush=True)


def run_child(count: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", str(count)], capture_output=True, text=True,
                          timeout=ARM_BOUND + 2 * RELEASE_BOUND + 120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"N={count} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def figures(results: list[dict[str, float]]) -> list[Figure]:
    found: list[Figure] = []
    for result in results:
        n = int(result["count"])
        tag = f"N={n:,}".replace(",", " ")
        if n >= 10_000:
            found.append(at_most(f"{tag} triggers: time until all are waiting", result["armed_s"], "s", ARMED_TARGET))
            found.append(at_most(f"{tag} triggers: last post → all released", result["release_s"], "s",
                                 RELEASE_TARGET))
            found.append(at_most(f"{tag} triggers: TCP connections to etcd", result["connections"], "connections", 4))
            found.append(at_most(f"{tag} triggers: peak RSS", result["peak_rss_mb"], "MB", 300))
        else:
            found.append(reported(f"{tag} triggers: time until all are waiting", result["armed_s"], "s"))
            found.append(reported(f"{tag} triggers: last post → all released", result["release_s"], "s"))
            found.append(reported(f"{tag} triggers: TCP connections to etcd", result["connections"], "connections"))
            found.append(reported(f"{tag} triggers: peak RSS", result["peak_rss_mb"], "MB"))
        found.append(reported(f"{tag} triggers: threads", result["threads"], "threads"))
        found.append(reported(f"{tag} triggers: garbage collection until all are waiting "
                              f"({int(result['gc_full'])} full collections)", result["gc_s"], "s"))
        found.append(reported(f"{tag} triggers: garbage collection from the posting until all fired "
                              f"({int(result['release_gc_full'])} full collections)", result["release_gc_s"], "s"))
        found.append(reported(f"{tag} triggers: objects the collector tracks per waiting trigger",
                              result["objects_per_trigger"], "objects"))
        found.append(reported(f"{tag} triggers: posting all keys (batched notify)", result["post_s"], "s"))
    return found


def plot(results: list[dict[str, float]]) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    labels = [f"{int(r['count']):,}" for r in results]
    panels = [("armed_s", "until all are waiting (s)", ARMED_TARGET),
              ("release_s", "last post → all released (s)", RELEASE_TARGET), ("peak_rss_mb", "peak RSS (MB)", 300),
              ("connections", "TCP connections to etcd", 4)]
    for axis, (field, title, target) in zip(axes, panels):
        axis.bar(labels, [r[field] for r in results], color="tab:blue")
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target ≤ {target}")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("deferred triggers in one loop")
        axis.legend(fontsize=7)
    save_plot(figure, "concurrency")


def main() -> None:
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    counts = [int(n) for n in sys.argv[2:]] or [1000, 10_000]
    results = [run_child(n) for n in counts]
    plot(results)
    write_results(results_path(), figures(results), [
        "Deferred sensors: the triggers of one loop share one connection lookup and one Store, their first "
        "reads share transactions of 128 ranges and all of them share one watch; the time until all are "
        "waiting is the triggers' own Python work in one loop (and the garbage collector's full collections "
        "as the heap grows by tens of objects per trigger). Connections are this process's TCP connections "
        "to etcd (the watch and two reader threads); the producer is another process."])


if __name__ == "__main__":
    main()
