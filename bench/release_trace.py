"""Where a release's time goes: a blocking wait released by a one-key notify over gRPC, timed at each hand-over.

Per round (measured as ``floors.py`` measures a release: the waiter takes feeds, its shared watch kept open),
the first moment of each step: the notify's transaction leaving, the watch thread receiving etcd's answer, the
feed put in the waiter's inbox, the waiting thread taking it, the wait returning. Each is stamped by wrapping the
package's function at that point (instrumentation: the wrappers add a few µs each). Also, for how ``floors.py``
measures:

- how often a waiter was still making its first read 3 ms after it subscribed (the fixed pause floors.py used
  before it waited for the waiter to take feeds: such a post raced the read);
- etcd's gRPC put → watch floor with the releases' shared watch kept open, and stopped at each wait's end (the
  stop runs in the runtime's stopping thread while the next floor is measured).

Usage: release_trace.py RESULTS.json
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import floors
from common import Figure, private_etcd, reported, results_path, taking_feeds, wait_until, write_results

from aviso_workflows import Store
from aviso_workflows import wait as wait_module
from aviso_workflows.backends import etcd as etcd_backend
from aviso_workflows.config import StoreConfig
from aviso_workflows.etcd_grpc import GrpcGateway, GrpcWatchStream
from aviso_workflows.follow import Fed

ROUNDS = int(os.environ.get("AVISO_BENCH_ROUNDS", "300"))
PAUSED_ROUNDS = 100  # rounds posted 3 ms after the subscription
FLOOR_ROUNDS = 150  # floors.py rounds per way of handling the watch
YEAR = 2060
#: The steps of a release, in the order they happen, each from the one before (the first from notify called).
STEPS = ("transaction sent", "watch answer received", "feed in the waiter's inbox", "waiting thread woke",
         "wait returned")
STAMPS: dict[str, float] = {}


def stamp(name: str) -> None:
    STAMPS.setdefault(name, time.perf_counter())


def stamped_before(owner: type, name: str, step: str) -> None:
    """Stamp ``step`` each time ``owner.name`` is called (the first call of a round counts)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamp(step)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def instrument() -> None:
    stamped_before(GrpcGateway, "put_if_unchanged", STEPS[0])
    stamped_before(etcd_backend._Inbox, "_put", STEPS[2])
    batch = GrpcWatchStream._batch

    def received(self: GrpcWatchStream, response: Any) -> Any:
        if response.events:
            stamp(STEPS[1])
        return batch(self, response)

    GrpcWatchStream._batch = received  # type: ignore[method-assign]
    do = wait_module._do  # what the waiting thread does for its machine (the inbox itself stays as it is:
    # common.taking_feeds knows a waiting thread by the inbox's frame)

    def done(*args: Any) -> Any:
        event = do(*args)
        if isinstance(event, Fed) and event.feed is not None and STEPS[2] in STAMPS:
            stamp(STEPS[3])
        return event

    wait_module._do = done  # type: ignore[assignment]


def one_release(store: Store, step: int, ready: Callable[[threading.Thread], bool]) -> tuple[dict[str, float], bool]:
    """The stamps of one release (ms from notify called) and whether the waiter was taking feeds at the post."""
    fields = floors.release_fields("grpc", step, YEAR)
    before = floors.subscribers()
    def waiter() -> None:
        store.wait("mars", fields, timeout=floors.RELEASE_BOUND)
        stamp(STEPS[4])

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    wait_until(lambda: floors.subscribers() > before, floors.RELEASE_BOUND, what="the waiter to subscribe")
    wait_until(lambda: ready(thread), floors.RELEASE_BOUND, every=0.0002, what="the waiter to be ready")
    taking = taking_feeds(thread.ident)
    STAMPS.clear()
    started = time.perf_counter()
    store.notify(store.request("mars", fields))
    thread.join(floors.RELEASE_BOUND)
    return {name: (at - started) * 1000 for name, at in STAMPS.items()}, taking


def segments(rounds: list[dict[str, float]]) -> list[Figure]:
    """The median of each step's time from the step before, over the rounds that stamped both."""
    found: list[Figure] = []
    previous = "notify called"
    for name in STEPS:
        spans = [r[name] - r.get(previous, 0.0) for r in rounds if name in r and (previous in r or not found)]
        found.append(reported(f"p50 {previous} → {name} (n={len(spans)})", statistics.median(spans), "ms"))
        previous = name
    return found


def floor_p50(url: str, port: int, keep: bool) -> float:
    floors.KEEP_WATCH, floors.ROUNDS, floors.BATCHES = keep, FLOOR_ROUNDS, 0
    samples = floors.measure(url, port, ("grpc",), YEAR + (10 if keep else 20))  # dates not posted yet
    return statistics.median(samples["grpc put→watch"])


def paused_3_ms(_: threading.Thread) -> bool:
    """Ready after 3 ms, whatever the waiter does (how floors.py posted before)."""
    time.sleep(0.003)
    return True


def measure(url: str, port: int) -> list[Figure]:
    store = Store(config=StoreConfig(endpoints=(url,), transport="grpc"))
    with floors.kept_open(store, "grpc", YEAR):
        paused = [one_release(store, 5000 + step, paused_3_ms)[1] for step in range(PAUSED_ROUNDS)]
        instrument()
        rounds = [one_release(store, 1000 + step, lambda thread: taking_feeds(thread.ident))[0]
                  for step in range(-20, ROUNDS)][20:]
    kept, stopped = floor_p50(url, port, keep=True), floor_p50(url, port, keep=False)
    return [*segments(rounds),
            reported("rounds whose waiter was still reading 3 ms after it subscribed",
                     paused.count(False) / len(paused), "fraction"),
            reported("gRPC put→watch p50, the releases' watch kept open", kept, "ms"),
            reported("gRPC put→watch p50, the watch stopped at each wait's end", stopped, "ms")]


def main() -> None:
    with private_etcd() as info:
        found = measure(info.client_url, info.port)
    write_results(results_path(), found, [f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores"])
    for figure in found:
        print(f"{figure.name}: {figure.value} {figure.unit}")
    sys.stdout.flush()
    os._exit(0)  # the store's watch threads would keep the process up


if __name__ == "__main__":
    main()
