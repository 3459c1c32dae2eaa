"""Memory of a slow listener while a producer posts at full speed.

A producer thread posts as fast as it can (batches of 127 keys: with the status key, one transaction of
128 operations) while a ``listen`` consumer sleeps 1 ms per notification, so the store runs ever further
ahead of the listener. The process's resident memory is sampled every 0.5 s, with the backlog (posts not
delivered yet). Once the producer stops, the consumer stops sleeping (at its own pace the backlog would
take minutes) and the listener must deliver every post, once, in write order, within CATCH_UP_BOUND;
one that does not is reported as such. A listener queues at most ``capacity`` notifications; etcd
answers a watch that is behind with up to 1 000 revisions at once, which the stream hands on in parts of
whole revisions, so the size of the largest part is recorded too. Each capacity runs in a fresh process
of its own (so memory freed by one run cannot be reused by the next), one after the other against one etcd.

Usage: memory.py RESULTS.json   (BENCH_MEMORY_SECONDS shortens or lengthens the producer's run)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import MARS, Figure, at_least, private_etcd, pyplot, reported, results_path, save_plot, write_results

from aviso_workflows import Store, watch
from aviso_workflows.etcd import WATCH_CHUNK
from aviso_workflows.follow import DEFAULT_CAPACITY, Feed
from aviso_workflows.listen import Position
from aviso_workflows.notification import Notification

PRODUCE_SECONDS = float(os.environ.get("BENCH_MEMORY_SECONDS", "20"))
BATCH = 127  # keys per post: with the status key, one transaction of max_txn_ops (128) operations
CONSUMER_PAUSE = 0.001  # seconds the slow consumer spends on each notification
SAMPLE_EVERY = 0.5  # seconds between two looks at the resident memory
CATCH_UP_BOUND = 90.0  # seconds the listener may take to deliver the backlog once the producer stopped
START_BOUND = 30.0  # seconds for the listener's watch to deliver a first notification
CAPACITIES = (1_000, DEFAULT_CAPACITY)
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
FIRST_DATE = dt.date(2040, 1, 1)


def rss_now_mb() -> float:
    """Resident memory of this process now (MB), from /proc/self/statm (its second field, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_MB


class Gauge:
    """The largest feed (one etcd watch answer) the listener's watch handed on.

    Wraps one method of the engine in this process only, to explain the memory figures.
    """

    largest_feed = 0

    @classmethod
    def install(cls) -> None:
        put = watch.Channel.put

        def counted_put(channel: watch.Channel, feed: Feed, give_up: Any) -> None:
            cls.largest_feed = max(cls.largest_feed, len(feed.puts))
            put(channel, feed, give_up)

        watch.Channel.put = counted_put  # type: ignore[method-assign,assignment]


def batch_request(store: Store, index: int) -> Any:
    """Post ``index``: the 127 steps of a date of its own (no key is posted twice, so every post is new)."""
    date = (FIRST_DATE + dt.timedelta(days=index)).strftime("%Y%m%d")
    return store.request("mars", {**MARS, "date": date, "step": f"0/to/{BATCH - 1}"})


class Consumer:
    """The slow listener: counts what it is given per revision and checks that it comes in write order.

    It keeps no notification (its own memory would hide the listener's): a count per revision, the
    last place seen and whether any came out of order.
    """

    def __init__(self, store: Store, capacity: int, start: Position) -> None:
        self.slow = threading.Event()
        self.slow.set()
        self.stop = threading.Event()
        self.delivered = 0
        self.per_revision: dict[int, int] = {}
        self.out_of_order = 0
        self._last: Any = start.order
        listener = store.listen(store.request("mars", dict(MARS)), after=start, stop=self.stop, capacity=capacity)
        self.thread = threading.Thread(target=self._consume, args=(listener,), name="slow-listener", daemon=True)
        self.thread.start()

    def _consume(self, listener: Any) -> None:
        for notification in listener:
            self._count(notification)
            if self.slow.is_set():
                time.sleep(CONSUMER_PAUSE)

    def _count(self, notification: Notification) -> None:
        place = notification.order
        if place <= self._last:
            self.out_of_order += 1
        self._last = place
        self.per_revision[notification.revision] = self.per_revision.get(notification.revision, 0) + 1
        self.delivered += 1


class Producer:
    """Posts batches back to back until told to stop; remembers each post's revision."""

    def __init__(self, store: Store, first_index: int) -> None:
        self.store = store
        self.index = first_index
        self.revisions: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="producer", daemon=True)

    def _produce(self) -> None:
        while not self.stop.is_set():
            result = self.store.notify(batch_request(self.store, self.index))
            self.revisions.extend(result.revisions)
            self.index += 1

    @property
    def posted(self) -> int:
        return len(self.revisions) * BATCH


class Sampler:
    """Resident memory and backlog every SAMPLE_EVERY seconds, in a thread of its own."""

    def __init__(self, producer: Producer, consumer: Consumer) -> None:
        self.producer, self.consumer = producer, consumer
        self.started = time.monotonic()
        self.baseline = rss_now_mb()
        self.samples: list[tuple[float, float, int]] = []  # (seconds, RSS growth in MB, backlog)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            backlog = self.producer.posted - self.consumer.delivered
            self.samples.append((time.monotonic() - self.started, rss_now_mb() - self.baseline, backlog))


def wait_for(check: Any, bound: float, what: str) -> float:
    """Poll ``check()`` every 10 ms until true; returns the seconds it took, raises after ``bound``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > bound:
            raise TimeoutError(f"{what} not within {bound:g} s")
        time.sleep(0.01)
    return time.monotonic() - started


def warm_up(store: Store, consumer: Consumer) -> int:
    """One post before the clock starts: the listener's watch runs and the code paths are loaded."""
    store.notify(batch_request(store, 0))
    wait_for(lambda: consumer.delivered >= BATCH, START_BOUND, "the listener's first notifications")
    return 1


def catch_up(consumer: Consumer, expected: int, bound: float) -> float:
    """Seconds until the consumer has ``expected`` notifications, or ``bound`` if it never gets there:
    a listener too slow to catch up is a result to report, not a reason to abort the run."""
    try:
        return wait_for(lambda: consumer.delivered >= expected, bound, "the listener catching up")
    except TimeoutError:
        return bound


def verdict(producer: Producer, consumer: Consumer, warm_up_posts: int) -> dict[str, Any]:
    """What was delivered of the producer's posts: all of them, each once, in write order?"""
    expected = {revision: BATCH for revision in producer.revisions}
    seen = {r: n for r, n in consumer.per_revision.items() if r in expected}
    delivered = consumer.delivered - warm_up_posts
    unknown = sum(n for r, n in consumer.per_revision.items() if r not in expected) - warm_up_posts
    duplicated = unknown > 0 or any(n > BATCH for n in seen.values())
    return {"delivered": delivered, "out_of_order": consumer.out_of_order, "duplicated": duplicated,
            "every_post_once_in_order": seen == expected and not duplicated and consumer.out_of_order == 0}


def measure(url: str, capacity: int) -> dict[str, Any]:
    """One run: warm up, produce for PRODUCE_SECONDS, then let the listener catch up at full speed."""
    Gauge.install()
    store = Store([url])
    consumer = Consumer(store, capacity, Position(store.current_revision()))
    producer = Producer(store, warm_up(store, consumer))
    warm_up_posts = consumer.delivered
    sampler = Sampler(producer, consumer)
    producer.thread.start()
    time.sleep(PRODUCE_SECONDS)
    producer.stop.set()
    producer.thread.join(30)
    stopped_at = time.monotonic() - sampler.started
    delivered_while_producing = consumer.delivered - warm_up_posts
    consumer.slow.clear()  # catching up at the consumer's pace would take minutes: at full speed now
    took = catch_up(consumer, warm_up_posts + producer.posted, CATCH_UP_BOUND)
    time.sleep(0.5)  # anything delivered twice would show up now
    sampler.stop.set()
    consumer.stop.set()
    sampler.thread.join(5)
    consumer.thread.join(10)
    outcome = verdict(producer, consumer, warm_up_posts)
    return {"capacity": capacity, "samples": sampler.samples, "baseline_mb": sampler.baseline,
            "peak_growth_mb": max(s[1] for s in sampler.samples), "producer_stopped_s": stopped_at,
            "posted": producer.posted, "posts": len(producer.revisions),
            "delivered_while_producing": delivered_while_producing,
            "backlog_at_stop": producer.posted - delivered_while_producing, "catch_up_s": took,
            "caught_up": outcome["delivered"] >= producer.posted,
            "catch_up_rate": (outcome["delivered"] - delivered_while_producing) / took,
            "largest_watch_answer": Gauge.largest_feed, **outcome}


def child(url: str, capacity: int) -> None:
    print("RESULT " + json.dumps(measure(url, capacity)), flush=True)


def run_child(url: str, capacity: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", url, str(capacity)], capture_output=True, text=True,
                          timeout=PRODUCE_SECONDS + CATCH_UP_BOUND + START_BOUND + 60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"capacity {capacity} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def label(capacity: int) -> str:
    name = f"capacity {capacity:,}".replace(",", " ")
    return name + " (default)" if capacity == DEFAULT_CAPACITY else name


def figures(results: list[dict[str, Any]]) -> list[Figure]:
    found: list[Figure] = []
    for result in results:
        tag = f"slow listener, {label(result['capacity'])}"
        found.append(reported(f"{tag}: peak RSS growth", result["peak_growth_mb"], "MB"))
        found.append(reported(f"{tag}: backlog when the producer stopped ({result['posted']} posted in "
                              f"{PRODUCE_SECONDS:g} s)", result["backlog_at_stop"], "notifications"))
        found.append(reported(f"{tag}: largest part of a watch answer handed on", result["largest_watch_answer"],
                              "puts"))
        found.append(reported(f"{tag}: catch-up rate at full speed", result["catch_up_rate"], "notifications/s"))
        found.append(reported(f"{tag}: catch-up time (at most {CATCH_UP_BOUND:g} s is waited for)",
                              result["catch_up_s"], "s"))
        share = 100 * result["delivered"] / result["posted"]
        in_order = share if result["out_of_order"] == 0 and not result["duplicated"] else 0.0
        found.append(at_least(f"{tag}: posts delivered (each once, in write order) within "
                              f"{CATCH_UP_BOUND:g} s of the producer stopping", in_order, "%", 100))
    return found


def notes(results: list[dict[str, Any]]) -> list[str]:
    growth = ", ".join(f"{label(r['capacity'])} {r['peak_growth_mb']:.0f} MB" for r in results)
    answers = max(r["largest_watch_answer"] for r in results)
    rates = ", ".join(f"{label(r['capacity'])} {r['catch_up_rate']:,.0f}/s" for r in results)
    late = [label(r["capacity"]) for r in results if not r["caught_up"]]
    missed = (f" {' and '.join(late).capitalize()} had not caught up {CATCH_UP_BOUND:g} s after the producer stopped."
              if late else " Every capacity caught up with every post, each once, in write order.")
    return [f"Slow listener: a producer thread posted batches of {BATCH} keys back to back for "
            f"{PRODUCE_SECONDS:g} s while the listener's consumer slept {CONSUMER_PAUSE * 1000:g} ms per "
            f"notification; then the consumer stopped sleeping. Resident memory grew at most {growth} (each "
            f"capacity in a fresh process). The capacity bounds the notifications a listener queues; a watch "
            f"far behind gets etcd's history in answers of up to 1 000 revisions, handed on in parts of about "
            f"{WATCH_CHUNK:,} puts of whole revisions (here up to {answers:,} puts in one part), and the listener "
            f"holds the rest of a part that does not fit in its queue while its watch waits: memory is the "
            f"capacity, one part and the answer as etcd sent it. Catch-up rate: "
            f"{rates}.{missed}"]


def plot(results: list[dict[str, Any]]) -> None:
    plt = pyplot()
    figure, (memory, behind) = plt.subplots(1, 2, figsize=(10, 3.8))
    for result in results:
        seconds = [s[0] for s in result["samples"]]
        line, = memory.plot(seconds, [s[1] for s in result["samples"]], label=label(result["capacity"]))
        behind.plot(seconds, [s[2] for s in result["samples"]], color=line.get_color(),
                    label=label(result["capacity"]))
        for axis in (memory, behind):
            axis.axvline(result["producer_stopped_s"], color=line.get_color(), linestyle=":", linewidth=1)
    memory.set_title("resident memory growth of the process", fontsize=9)
    memory.set_ylabel("MB above the start")
    behind.set_title("backlog: posted, not yet delivered", fontsize=9)
    behind.set_ylabel("notifications")
    for axis in (memory, behind):
        axis.set_xlabel("seconds (dotted: the producer stops, the consumer speeds up)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    save_plot(figure, "memory")


def main() -> None:
    if sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    with private_etcd() as etcd:
        results = [run_child(etcd.client_url, capacity) for capacity in CAPACITIES]
    plot(results)
    write_results(results_path(), figures(results), notes(results))
    for result in results:
        summary = {k: v for k, v in result.items() if k != "samples"}
        print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
