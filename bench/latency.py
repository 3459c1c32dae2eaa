"""Notify → release latency of our ``wait``, ``listen`` and ``AvisoTrigger``, and of pyaviso 1.0.2's ``listen``.

One producer posts at a steady rate; each post is for one consumer, taken in turn, so the three of ours
are measured interleaved on the same etcd in the same minute. Latency runs from the moment ``notify`` is
called (it reads the status key, then writes one transaction) to the moment the consumer is released.
pyaviso polls (every second at its fastest): it gets a post every ``PYAVISO_EVERY`` seconds meanwhile,
from a listener process of its own, and is released when its echo trigger prints the notification.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    MARS,
    PYAVISO,
    Figure,
    airflow_environment,
    at_least,
    at_most,
    percentile,
    private_etcd,
    pyaviso_env,
    pyaviso_home,
    pyplot,
    reported,
    results_path,
    save_plot,
    wait_until,
    write_results,
)
from etcd3gw.client import Etcd3Client

from aviso_workflows import Store
from aviso_workflows.listen import HUB

ROUNDS = int(os.environ.get("AVISO_BENCH_ROUNDS", "1000"))  # notifications per consumer of ours
PERIOD = 0.012  # seconds between two posts
PYAVISO_EVERY = 0.73  # seconds between two posts for pyaviso (not a multiple of its 1 s poll)
PYAVISO_SAMPLES = (40, 60)  # at least, at most
RELEASE_BOUND = 10.0  # seconds a consumer may take before the run is declared broken
DATES = {"wait": "20300101", "listen": "20300102", "AvisoTrigger": "20300103", "pyaviso": "20300104"}
PREFIX = "/ec/mars/"
FLOOR_PREFIX = "/floor/"


def request_of(consumer: str, step: int | str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {**MARS, "date": DATES[consumer]}
    if step is not None:
        fields["step"] = step
    return fields


class Releases:
    """When each key was released, and a way to wait for it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, key: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def released(self, key: str) -> None:
        self.at.setdefault(key, time.monotonic())
        self._event(key).set()

    def wait(self, key: str, timeout: float) -> float:
        if not self._event(key).wait(timeout):
            raise TimeoutError(f"{key} was not released within {timeout:g} s")
        return self.at[key]


def subscribers() -> int:
    return sum(w.subscriber_count for w in HUB.watches() if w.prefix == PREFIX)


class Notifier:
    """Posts with our notify (one transaction: the data key and the status key)."""

    name = ""
    store: Store

    def post(self, step: int) -> str:
        """Post the consumer's key of ``step``; returns the key."""
        request = self.store.request("mars", request_of(self.name, step))
        self.store.notify(request)
        return request.keys()[0]


class WaitConsumer(Notifier):
    """A blocking ``Store.wait`` per key, each in its own thread (as a script or an ecFlow task would)."""

    name = "wait"

    def __init__(self, store: Store, releases: Releases) -> None:
        self.store, self.releases = store, releases

    def arm(self, step: int) -> None:
        key = self.store.request("mars", request_of(self.name, step)).keys()[0]

        def body() -> None:
            self.store.wait("mars", request_of(self.name, step), timeout=RELEASE_BOUND * 3)
            self.releases.released(key)

        threading.Thread(target=body, daemon=True).start()


class TriggerConsumer(Notifier):
    """Airflow's deferrable path: ``AvisoTrigger.run()`` in an asyncio loop, as the triggerer runs it."""

    name = "AvisoTrigger"

    def __init__(self, store: Store, releases: Releases) -> None:
        from aviso_workflows.airflow import AvisoTrigger

        self.store, self.releases = store, releases
        self.trigger_class = AvisoTrigger
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _fire(self, step: int, key: str) -> None:
        request = self.store.request("mars", request_of(self.name, step)).as_dict()
        trigger = self.trigger_class(event="mars", request=request)
        event = await anext(trigger.run())
        if event.payload.get("status") == "success":
            self.releases.released(key)

    def arm(self, step: int) -> None:
        key = self.store.request("mars", request_of(self.name, step)).keys()[0]
        asyncio.run_coroutine_threadsafe(self._fire(step, key), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ListenConsumer(Notifier):
    """One long-lived ``Store.listen`` following every step of its date."""

    name = "listen"

    def __init__(self, store: Store, releases: Releases) -> None:
        self.store = store
        self.stop = threading.Event()
        request = store.request("mars", request_of(self.name))

        def body() -> None:
            for notification in store.listen(request, stop=self.stop, poll=0.1):
                releases.released(notification.key)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def arm(self, step: int) -> None:
        """Always armed."""

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


class EtcdFloor:
    """The floor under every consumer: a bare etcd put seen through etcd3gw's own watch (no layout, no status)."""

    name = "etcd floor"

    def __init__(self, port: int, releases: Releases) -> None:
        self.client = Etcd3Client(host="127.0.0.1", port=port, api_path="/v3/")
        self.events, self.cancel = self.client.watch_prefix(FLOOR_PREFIX)
        self.releases = releases
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        for event in self.events:
            key = event["kv"]["key"]
            self.releases.released(key.decode() if isinstance(key, bytes) else str(key))

    def arm(self, step: int) -> None:
        """Always armed."""

    def post(self, step: int) -> str:
        key = f"{FLOOR_PREFIX}{step}"
        self.client.put(key, "file:///x")
        return key

    def close(self) -> None:
        self.cancel()
        self.thread.join(10)


class PyavisoListener:
    """``aviso listen`` of pyaviso 1.0.2 in its own process; its echo trigger's output marks each release."""

    def __init__(self, store: Store, home: Path, releases: Releases) -> None:
        listener = home / "listener.yaml"
        listener.write_text(json.dumps({"listeners": [{"event": "mars", "request": request_of("pyaviso"),
                                                        "triggers": [{"type": "echo"}]}]}))
        self.log = open(home / "pyaviso.log", "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen([str(PYAVISO), "listen", str(listener), "--now"], env=pyaviso_env(home),
                                        text=True, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        self.store, self.releases = store, releases
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        document: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                document = []
            document.append(line)
            if line.rstrip() == "}":  # the end of one indented notification
                try:
                    notification = json.loads("".join(document))
                    key = self.store.request("mars", notification["request"]).keys()[0]
                except (ValueError, KeyError, TypeError):
                    continue
                self.releases.released(key)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


class Run:
    """The producer: a post every PERIOD seconds for each consumer of ours in turn, one for pyaviso now and then."""

    def __init__(self, store: Store, port: int, home: Path) -> None:
        self.store = store
        self.releases = Releases()
        self.ours: list[WaitConsumer | ListenConsumer | TriggerConsumer | EtcdFloor] = [
            WaitConsumer(store, self.releases), ListenConsumer(store, self.releases),
            TriggerConsumer(store, self.releases), EtcdFloor(port, self.releases)]
        self.peer = PyavisoListener(store, home, self.releases)
        self.latencies: dict[str, list[float]] = {c.name: [] for c in self.ours}
        self.after_write: dict[str, list[float]] = {c.name: [] for c in self.ours}
        self.peer_posts: dict[str, float] = {}
        self.notify_ms: list[float] = []
        self.next_tick = self.next_peer = time.monotonic()

    def measure(self) -> None:
        try:
            self._warm_up()
            self.next_tick = self.next_peer = time.monotonic()
            for index in range(ROUNDS * len(self.ours)):
                self._round(self.ours[index % len(self.ours)], index // len(self.ours))
                if time.monotonic() >= self.next_peer and len(self.peer_posts) < PYAVISO_SAMPLES[1]:
                    self._post_for_peer()
            while len(self.peer_posts) < PYAVISO_SAMPLES[0]:
                time.sleep(max(0.0, self.next_peer - time.monotonic()))
                self._post_for_peer()
            self.latencies["pyaviso"] = [(self.releases.wait(key, RELEASE_BOUND) - posted) * 1000
                                         for key, posted in self.peer_posts.items()]
        finally:
            self._close()

    def _warm_up(self) -> None:
        """Post one key per consumer until it is seen (pyaviso needs a few seconds to start polling)."""
        for consumer in self.ours:
            consumer.arm(ROUNDS)
        pyaviso = Notifier()
        pyaviso.name, pyaviso.store = "pyaviso", self.store
        warm_ups: list[tuple[Notifier | EtcdFloor, int]] = [*((c, ROUNDS) for c in self.ours), (pyaviso, 100_000)]
        for sender, step in warm_ups:
            for _ in range(40):
                key = sender.post(step)
                try:
                    self.releases.wait(key, 1.5)
                    break
                except TimeoutError:
                    continue
            else:
                raise TimeoutError(f"{sender.name} never saw its warm-up notification")

    def _round(self, consumer: WaitConsumer | ListenConsumer | TriggerConsumer | EtcdFloor, step: int) -> None:
        before = subscribers()
        consumer.arm(step)
        if isinstance(consumer, (WaitConsumer, TriggerConsumer)):
            wait_until(lambda: subscribers() > before, RELEASE_BOUND, what="the waiter to subscribe")
        self.next_tick = max(self.next_tick + PERIOD, time.monotonic() + 0.003)  # the waiter's first read
        time.sleep(max(0.0, self.next_tick - time.monotonic()))
        posted = time.monotonic()
        key = consumer.post(step)
        written = time.monotonic()
        if not isinstance(consumer, EtcdFloor):
            self.notify_ms.append((written - posted) * 1000)
        released = self.releases.wait(key, RELEASE_BOUND)
        self.latencies[consumer.name].append((released - posted) * 1000)
        self.after_write[consumer.name].append((released - written) * 1000)

    def _post_for_peer(self) -> None:
        posted = time.monotonic()
        request = self.store.request("mars", request_of("pyaviso", len(self.peer_posts)))
        self.store.notify(request)
        self.peer_posts[request.keys()[0]] = posted
        self.next_peer = time.monotonic() + PYAVISO_EVERY

    def _close(self) -> None:
        self.peer.close()
        for consumer in self.ours:
            close: Callable[[], None] | None = getattr(consumer, "close", None)
            if close is not None:
                close()


OURS = ("wait", "listen", "AvisoTrigger")


def figures(run: Run) -> list[Figure]:
    latencies = run.latencies
    peer = latencies["pyaviso"]
    peer_p50, peer_p99 = percentile(peer, 0.5), percentile(peer, 0.99)
    found: list[Figure] = []
    for name in OURS:
        p50, p99 = percentile(latencies[name], 0.5), percentile(latencies[name], 0.99)
        found.append(at_most(f"notify→release p50, {name} (n={len(latencies[name])})", p50, "ms", 5, peer_p50))
        found.append(at_most(f"notify→release p99, {name}", p99, "ms", 10, peer_p99))
    floor = latencies[EtcdFloor.name]
    found.append(reported("etcd floor: bare put → etcd3gw watch event, p50", percentile(floor, 0.5), "ms"))
    found.append(reported("etcd floor: bare put → etcd3gw watch event, p99", percentile(floor, 0.99), "ms"))
    found.append(reported("notify call (one transaction) p50", percentile(run.notify_ms, 0.5), "ms"))
    for name in OURS:
        found.append(reported(f"release after the notify call returned, p50, {name}",
                              percentile(run.after_write[name], 0.5), "ms"))
    slowest_p50 = max(percentile(latencies[n], 0.5) for n in OURS)
    found.append(at_least(f"pyaviso listen p50 (n={len(peer)}, 1 s polling) / our slowest p50",
                          peer_p50 / slowest_p50, "×", 100))
    return found


def notes(run: Run) -> list[str]:
    floor = run.latencies[EtcdFloor.name]
    after = ", ".join(f"{name} {percentile(run.after_write[name], 0.5):.2f} ms" for name in OURS)
    return [f"Latency: our consumers are released within a fraction of a millisecond of the notify call "
            f"returning (p50: {after}); the rest is etcd writing the transaction. A bare etcd put seen by "
            f"etcd3gw's own watch took p50 {percentile(floor, 0.5):.1f} ms, p99 {percentile(floor, 0.99):.1f} ms "
            f"in the same run (≈ 2 ms and 4 ms measured earlier on these machines), so the 5 ms / 10 ms "
            f"targets hold only where etcd itself is that fast. The ratio to pyaviso follows our p50."]


def plot(latencies: dict[str, list[float]]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for name, values in latencies.items():
        ordered = sorted(values)
        axis.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post",
                  label=f"{name} (p50 {percentile(values, 0.5):.1f} ms, n={len(values)})")
    axis.axvline(5, color="grey", linestyle=":", linewidth=1)
    axis.axvline(10, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("notify → release (ms, log scale); dotted 5 ms, dashed 10 ms")
    axis.set_ylabel("fraction released")
    axis.set_title("Notification latency, one etcd, one run")
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    save_plot(figure, "latency")


def main() -> None:
    with private_etcd() as etcd, tempfile.TemporaryDirectory(prefix="aviso-bench-pyaviso-") as directory:
        airflow_environment(etcd.client_url)
        store = Store([etcd.client_url])
        run = Run(store, etcd.port, pyaviso_home(etcd.port, Path(directory)))
        run.measure()
    plot(run.latencies)
    write_results(results_path(), figures(run), notes(run))


if __name__ == "__main__":
    main()
