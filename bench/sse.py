"""Many SSE watchers on one ``aviso-workflows serve``, against direct waits on etcd.

``serve`` runs as a subprocess in front of a private etcd. N watchers (``POST /api/v1/watch``, as pyaviso 2
opens them) stream from it, all from one asyncio loop of this process through httpx; each filters on the
same class and date, so one post releases them all. The time from ``Store.notify`` (one etcd transaction)
to each watcher reading its ``live-notification`` is the release latency. The same number of direct waits
(``aviso_workflows.wait.wait_async``, one shared etcd watch) are released by a post of their own in the same
run. Rounds alternate between the two forms; the medians of the rounds' percentiles are reported. The
serve process's resident memory (its process and any children) is read with no watcher and with N.

Usage: sse.py RESULTS.json [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from common import (
    MARS,
    Figure,
    at_most,
    percentile,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store, server
from aviso_workflows.listen import HUB
from aviso_workflows.serve.cli import ServeFailed, start_serve_process
from aviso_workflows.wait import wait_async

SSE_DATE = "20300401"
WAIT_DATE = "20300402"
ROUNDS = 3
BOUND = 120.0  # seconds for any phase


# -- the serve process ------------------------------------------------------------------------------
@contextmanager
def running_serve(etcd_url: str) -> Iterator[tuple[str, int]]:
    """``serve`` started as the project starts it (:func:`start_serve_process`) on a free loopback port, its
    output in a temporary log; its URL and pid (whose process tree is measured). Stopped by its pid."""
    with tempfile.TemporaryDirectory(prefix="aviso-bench-serve-") as folder:
        try:
            served = start_serve_process(etcd_url, server.free_port(), log=Path(folder) / "serve.log")
        except ServeFailed as error:
            raise SystemExit(str(error)) from None
        try:
            yield served.url, served.process.pid
        finally:
            served.stop()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn workers, if any), MB."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def tree_cpu_seconds(pid: int) -> float:
    """Processor time (user + system) used so far by ``pid`` and its children, seconds."""
    ticks = 0
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found + [g for c in found for g in _children(c)]


# -- SSE watchers -----------------------------------------------------------------------------------
class Watchers:
    """N streams on /api/v1/watch; each records when it reads each notification."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self.open = 0
        self.received: list[list[float]] = [[] for _ in range(count)]
        self.tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0, read=None))

    async def start(self) -> float:
        started = time.monotonic()
        self.tasks = [asyncio.create_task(self._watch(i)) for i in range(self.count)]
        while self.open < self.count:
            failed = [t for t in self.tasks if t.done()]
            if failed:
                failed[0].result()
                raise RuntimeError("a watcher ended before it was released")
            if time.monotonic() - started > BOUND:
                raise TimeoutError(f"only {self.open} of {self.count} watchers opened")
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def _watch(self, index: int) -> None:
        body = {"event_type": "mars", "identifier": {"class": MARS["class"], "date": SSE_DATE}}
        async with self.client.stream("POST", f"{self.url}/api/v1/watch", json=body) as response:
            response.raise_for_status()
            event, data = "", ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    self._dispatch(index, event, json.loads(data))
                    event, data = "", ""

    def _dispatch(self, index: int, event: str, data: dict[str, Any]) -> None:
        if event == "live-notification" and data.get("type") == "connection_established":
            self.open += 1
        elif event == "live-notification" and "id" in data:
            self.received[index].append(time.perf_counter())

    async def released(self, round_index: int) -> list[float]:
        """When each watcher read the ``round_index``-th notification (waits for all of them)."""
        started = time.monotonic()
        while any(len(r) <= round_index for r in self.received):
            if time.monotonic() - started > BOUND:
                missing = sum(len(r) <= round_index for r in self.received)
                raise TimeoutError(f"{missing} watchers were not released")
            await asyncio.sleep(0.005)
        return [r[round_index] for r in self.received]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()


async def sse_round(store: Store, watchers: Watchers, round_index: int, pid: int) -> tuple[list[float], float, float]:
    """Ms from the post to each watcher's read; the processor seconds serve and this process spent meanwhile."""
    serve_cpu, own_cpu = tree_cpu_seconds(pid), time.process_time()
    posted = time.perf_counter()
    await asyncio.to_thread(store.notify, "mars", {**MARS, "date": SSE_DATE, "step": round_index},
                            location=f"file:///sse/{round_index}")
    latencies = [(t - posted) * 1000 for t in await watchers.released(round_index)]
    return latencies, tree_cpu_seconds(pid) - serve_cpu, time.process_time() - own_cpu


async def direct_round(store: Store, count: int, round_index: int) -> list[float]:
    """``count`` direct waits for one key, armed, then released by its post: ms from post to each release."""
    request = store.request("mars", {**MARS, "date": WAIT_DATE, "step": round_index})
    done: list[float] = []
    tasks = [asyncio.create_task(wait_async(store, request, timeout=BOUND)) for _ in range(count)]
    for task in tasks:
        task.add_done_callback(lambda _: done.append(time.perf_counter()))
    started = time.monotonic()
    while sum(w.subscriber_count for w in HUB.watches()) < count:
        if time.monotonic() - started > BOUND:
            raise TimeoutError("not all direct waits armed")
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    posted = time.perf_counter()
    await asyncio.to_thread(store.notify, "mars", {**MARS, "date": WAIT_DATE, "step": round_index},
                            location=f"file:///wait/{round_index}")
    await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
    return [(t - posted) * 1000 for t in done]


# -- the run ----------------------------------------------------------------------------------------
async def measure(store: Store, url: str, pid: int, count: int) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    rss_idle = tree_rss_mb(pid)
    watchers = Watchers(url, count)
    try:
        opened = await watchers.start()
        await asyncio.sleep(1.0)
        rss_watching = tree_rss_mb(pid)
        sse: list[list[float]] = []
        direct: list[list[float]] = []
        serve_cpu: list[float] = []
        client_cpu: list[float] = []
        for round_index in range(ROUNDS):
            latencies, serve_seconds, client_seconds = await sse_round(store, watchers, round_index, pid)
            sse.append(latencies)
            serve_cpu.append(serve_seconds)
            client_cpu.append(client_seconds)
            await asyncio.sleep(0.5)
            direct.append(await direct_round(store, count, round_index))
            await asyncio.sleep(0.5)
        rss_after = tree_rss_mb(pid)
    finally:
        await watchers.close()
    return {"opened": opened, "rss_idle": rss_idle, "rss_watching": rss_watching, "rss_after": rss_after,
            "sse": sse, "direct": direct, "serve_cpu": statistics.median(serve_cpu),
            "client_cpu": statistics.median(client_cpu)}


def summary(rounds: list[list[float]], fraction: float) -> float:
    return statistics.median(percentile(r, fraction) for r in rounds)


def raise_file_limit(needed: int) -> None:
    """Each watcher is a socket here and one in serve (a child inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def plot(result: dict[str, Any], count: int) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sse = sorted(v for r in result["sse"] for v in r)
    direct = sorted(v for r in result["direct"] for v in r)
    for values, label in ((sse, f"{count} SSE watchers (serve)"), (direct, f"{count} direct waits (etcd)")):
        left.plot(values, [i / len(values) for i in range(len(values))], label=label)
    left.set_xlabel("release latency after notify (ms)")
    left.set_ylabel("fraction released")
    left.set_title("Release after one post (all rounds)")
    left.legend()
    right.bar(["no watcher", f"{count} watchers"], [result["rss_idle"], result["rss_watching"]])
    right.set_ylabel("serve resident memory (MB)")
    right.set_title("serve memory")
    save_plot(fig, "sse")


def main() -> None:
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    raise_file_limit(2 * count + 256)
    with private_etcd() as info, running_serve(info.client_url) as (url, pid):
        store = Store([info.client_url])
        result = asyncio.run(measure(store, url, pid, count))
    sse50, sse95 = summary(result["sse"], 0.5), summary(result["sse"], 0.95)
    direct50, direct95 = summary(result["direct"], 0.5), summary(result["direct"], 0.95)
    per_watcher_kb = (result["rss_watching"] - result["rss_idle"]) * 1024 / count
    figures: list[Figure] = [
        reported(f"SSE release p50 ({count} watchers)", sse50, "ms"),
        reported(f"SSE release p95 ({count} watchers)", sse95, "ms"),
        reported("SSE first watcher released", summary(result["sse"], 0.0), "ms"),
        reported(f"direct wait release p50 ({count} waits)", direct50, "ms"),
        reported(f"direct wait release p95 ({count} waits)", direct95, "ms"),
        at_most("SSE p50 / direct wait p50", sse50 / direct50, "×", 2.0),
        reported(f"{count} watchers opened in", result["opened"], "s"),
        reported("serve processor time per post to all watchers", result["serve_cpu"] * 1000, "ms"),
        reported("watchers' (client) processor time per post", result["client_cpu"] * 1000, "ms"),
        reported("serve memory, no watcher", result["rss_idle"], "MB"),
        reported(f"serve memory, {count} watchers", result["rss_watching"], "MB"),
        reported("serve memory per watcher", per_watcher_kb, "KB"),
    ]
    notes = [f"SSE: {count} streams from one asyncio loop (httpx) on one `serve` process; each round posts one "
             f"notification that releases all of them; direct: {count} `wait_async` on etcd in the same process "
             f"and run. Medians over {ROUNDS} rounds; the watchers' own parsing of {count} events in one Python "
             "loop is part of the SSE figure."]
    write_results(results_path(), figures, notes)
    plot(result, count)
    for figure in figures:
        print(f"{figure.name:<45} {figure.value:>10} {figure.unit}  {figure.target or ''}")


if __name__ == "__main__":
    main()
