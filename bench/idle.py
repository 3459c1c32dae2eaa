"""An idle listener: how many requests it makes, and how stale its saved position gets, while other
prefixes of the store are busy.

One listener with a cursor follows a quiet dissemination prefix (nothing is ever posted there) through
a counting TCP proxy, over the HTTP gateway (where the proxy sees each request); a producer posts a few
times a second to mars, directly to etcd, so the store's revision moves on. The listener moves its
cursor only when etcd tells its watch that nothing happened (a progress notification): with the embedded
etcd's interval (``server.PROGRESS_INTERVAL``, 30 s) it should need no request at all and lag by at most
that; with etcd's own default (10 minutes) its watch hears nothing for ``IDLE_TIMEOUT`` (75 s) and
reconnects, from the revision it started at. Both settings run side by side, each on an etcd of its own.

Usage: idle.py RESULTS.json   (BENCH_IDLE_SECONDS sets how long each listener is watched; 180 by default)
"""

from __future__ import annotations

import bisect
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import (
    MARS,
    ROOT,
    Figure,
    at_most,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    wait_until,
    write_results,
)

from aviso_workflows import Store, server
from aviso_workflows.listen import Cursor
from aviso_workflows.watch import IDLE_TIMEOUT

RUN_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "180"))
BUSY_EVERY = 0.25  # seconds between two posts to the busy prefix
SAMPLE_EVERY = 1.0  # seconds between two looks at the cursor
COUNT_EVERY = 5.0  # seconds between two looks at the proxy's counts
START_BOUND = 30.0  # seconds for the listener to save its cursor and open its watch
#: name of a setting → the etcd's progress notification interval
SETTINGS = {"progress every 30 s (embedded etcd)": server.PROGRESS_INTERVAL,
            "progress every 10 min (etcd's default)": "10m"}
#: the listener's request: a destination nobody posts to, so its watch prefix stays quiet
QUIET = {**MARS, "destination": "QUIET", "target": "E1"}


def tcp_proxy() -> Any:
    """tests/tcp_proxy.py's TcpProxy: a proxy process that counts connections and HTTP requests."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tcp_proxy import TcpProxy

    return TcpProxy


class Setting:
    """One etcd, an idle listener on it through a counting proxy, and a producer posting to it directly."""

    def __init__(self, name: str, etcd: server.ServerInfo, directory: Path, clock: float) -> None:
        self.name = name
        self.clock = clock
        self.proxy = tcp_proxy().start(etcd.client_url)
        self.direct = Store([etcd.client_url])
        self.cursor = Cursor("idle", directory=directory)
        self.stop = threading.Event()
        self.heard = 0
        self.posts: list[tuple[int, float]] = []  # (revision, seconds) of each busy post
        self.lag: list[tuple[float, int, float]] = []  # (seconds, revisions behind, seconds behind)
        self.counts: list[tuple[float, int, int]] = []  # (seconds, connections, requests) since the baseline
        self.baseline: dict[str, Any] = {}
        # The listener speaks the HTTP gateway: the proxy counts HTTP/1 requests, and over gRPC every call is a
        # stream of one HTTP/2 connection that it cannot tell apart. Both transports share the watch's code
        # (watch.WatchLoop: its idle timeout, its reconnects from the revision it had reached).
        listener = Store([self.proxy.url], transport="gateway")
        self.threads = [threading.Thread(target=self._listen, args=(listener,), daemon=True),
                        threading.Thread(target=self._produce, daemon=True)]

    def start(self) -> None:
        """Start the listener, wait until its watch is open, then count from there; start the producer."""
        self.threads[0].start()
        wait_until(lambda: self.cursor.load() is not None and self.proxy.stats()["requests"] >= 2, START_BOUND,
                   every=0.1, what="the idle listener's watch")
        time.sleep(1.0)  # the watch request is under way: it belongs to the start, not to the idle time
        self.baseline = self.proxy.stats()
        self.baseline["at"] = self.now()
        self.threads[1].start()

    def now(self) -> float:
        return time.monotonic() - self.clock

    def _listen(self, store: Store) -> None:
        request = store.request("dissemination", QUIET)
        for _ in store.listen(request, cursor=self.cursor, stop=self.stop):
            self.heard += 1  # nothing is posted to QUIET: this stays 0

    def _produce(self) -> None:
        step = 0
        while not self.stop.wait(BUSY_EVERY):
            result = self.direct.notify("mars", {**MARS, "date": "20300101", "step": step})
            self.posts.append((result.revisions[-1], self.now()))
            step += 1

    def sample_lag(self) -> None:
        """How far the cursor is behind the store: in revisions, and in seconds since the first post it lacks."""
        saved = self.cursor.load()
        current = self.direct.current_revision()
        if saved is None:
            return
        posts = list(self.posts)
        first_missed = bisect.bisect_right([revision for revision, _ in posts], saved.revision)
        behind = self.now() - posts[first_missed][1] if first_missed < len(posts) else 0.0
        self.lag.append((self.now(), current - saved.revision, behind))

    def sample_counts(self) -> None:
        stats = self.proxy.stats()
        self.counts.append((self.now(), stats["connections"] - self.baseline["connections"],
                            stats["requests"] - self.baseline["requests"]))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            if thread.ident is not None:  # the producer starts only once the listener watches
                thread.join(10)
        self.proxy.stop()

    def summary(self) -> dict[str, Any]:
        minutes = (self.counts[-1][0] - self.baseline["at"]) / 60
        return {"name": self.name, "connections_per_min": self.counts[-1][1] / minutes,
                "requests_per_min": self.counts[-1][2] / minutes, "minutes": minutes,
                "start_requests": self.baseline["requests"], "lag_revisions": self.lag[-1][1],
                "lag_seconds": self.lag[-1][2], "max_lag_seconds": max(s[2] for s in self.lag),
                "posts": len(self.posts), "heard": self.heard}


def start_etcd(stack: ExitStack, interval: str) -> server.ServerInfo:
    """An etcd of this run whose progress notifications come every ``interval`` (read when it starts)."""
    default = server.PROGRESS_INTERVAL
    server.PROGRESS_INTERVAL = interval
    try:
        return stack.enter_context(private_etcd())
    finally:
        server.PROGRESS_INTERVAL = default


def observe(settings: list[Setting]) -> None:
    """Look at every setting's cursor every SAMPLE_EVERY s and at its proxy's counts every COUNT_EVERY s."""
    ends = max(s.baseline["at"] for s in settings) + RUN_SECONDS
    next_count = 0.0
    while (now := settings[0].now()) < ends:
        for setting in settings:
            setting.sample_lag()
        if now >= next_count:
            for setting in settings:
                setting.sample_counts()
            next_count = now + COUNT_EVERY
        time.sleep(SAMPLE_EVERY)
    for setting in settings:
        setting.sample_lag()
        setting.sample_counts()


def measure() -> list[Setting]:
    clock = time.monotonic()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aviso-bench-idle-") as directory:
        settings: list[Setting] = []
        for index, (name, interval) in enumerate(SETTINGS.items()):
            etcd = start_etcd(stack, interval)
            setting = Setting(name, etcd, Path(directory) / str(index), clock)
            stack.callback(setting.close)  # before its etcd stops: the stack unwinds in reverse
            settings.append(setting)
        for setting in settings:
            setting.start()
        observe(settings)
        return settings


def figures(results: list[dict[str, Any]]) -> list[Figure]:
    found: list[Figure] = []
    for result in results:
        tag = f"idle listener, {result['name']}"
        progress = result["name"] == next(iter(SETTINGS))
        if progress:  # the embedded etcd's setting: the watch never needs a new request, the cursor keeps up
            found.append(at_most(f"{tag}: HTTP requests", result["requests_per_min"], "/min", 0.5))
            found.append(at_most(f"{tag}: cursor behind the store at most", result["max_lag_seconds"], "s", 35))
        else:
            found.append(reported(f"{tag}: HTTP requests", result["requests_per_min"], "/min"))
            found.append(reported(f"{tag}: cursor behind the store at most", result["max_lag_seconds"], "s"))
        found.append(reported(f"{tag}: TCP connections", result["connections_per_min"], "/min"))
        found.append(reported(f"{tag}: cursor behind the store at the end ({result['posts']} posts elsewhere "
                              f"in {result['minutes']:.1f} min)", result["lag_revisions"], "revisions"))
    return found


def notes(results: list[dict[str, Any]]) -> list[str]:
    quick, slow = results
    return [f"Idle listener: one listener with a cursor on a prefix nobody posts to, through a counting TCP "
            f"proxy, for {quick['minutes']:.1f} min after its start ({quick['start_requests']} requests: the "
            f"store's revision and the watch), while another prefix got {1 / BUSY_EVERY:g} posts a second. With "
            f"progress notifications every 30 s (the embedded etcd) it made {quick['requests_per_min']:.2f} "
            f"requests a minute and its cursor was never more than {quick['max_lag_seconds']:.0f} s behind. "
            f"With etcd's default (every 10 minutes) its watch hears nothing for {IDLE_TIMEOUT:g} s and "
            f"reconnects: {slow['requests_per_min']:.2f} requests and {slow['connections_per_min']:.2f} "
            f"connections a minute, and the cursor stays where the listener started ({slow['lag_revisions']} "
            f"revisions, {slow['lag_seconds']:.0f} s behind at the end), so a restart replays all of that "
            f"history; an etcd serving idle listeners wants `--experimental-watch-progress-notify-interval`."]


def plot(settings: list[Setting]) -> None:
    plt = pyplot()
    figure, (stale, requests) = plt.subplots(1, 2, figsize=(10, 3.8))
    for setting in settings:
        line, = stale.plot([s[0] for s in setting.lag], [s[2] for s in setting.lag], label=setting.name)
        requests.step([c[0] for c in setting.counts], [c[2] for c in setting.counts], where="post",
                      color=line.get_color(), label=f"{setting.name}: requests")
        requests.step([c[0] for c in setting.counts], [c[1] for c in setting.counts], where="post",
                      color=line.get_color(), linestyle=":", label=f"{setting.name}: connections")
    stale.set_title("idle cursor: age of the oldest post it has not passed", fontsize=9)
    stale.set_ylabel("seconds behind the store")
    requests.set_title("the idle listener's traffic since its watch opened", fontsize=9)
    requests.set_ylabel("count")
    for axis in (stale, requests):
        axis.set_xlabel("seconds")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    save_plot(figure, "idle")


def main() -> None:
    settings = measure()
    results = [setting.summary() for setting in settings]
    plot(settings)
    write_results(results_path(), figures(results), notes(results))
    for result in results:
        print(result, file=sys.stderr)


if __name__ == "__main__":
    main()
