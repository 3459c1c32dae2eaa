"""The transport's cost: etcd's HTTP/JSON gateway (the store's ``gateway`` transport) beside etcd's own gRPC API
(through ``aetcd``), on the same etcd, in one run.

- batched writes: transactions of 128 puts of notification-sized keys and values, one writer at a
  time and four at once; keys per second;
- watch fan-out: 10 watchers on one prefix, each receiving every one of the keys written (from
  history, so the writes do not limit it); events delivered per second over all watchers.

``aetcd``'s own asyncio client is the gRPC side here (the store uses only the stubs aetcd ships, with
grpcio's blocking channels; ``floors.py`` measures the store over both transports).

Usage: transport.py RESULTS.json [TRANSACTIONS]
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import Figure, private_etcd, pyplot, reported, results_path, save_plot, write_results

from aviso_workflows.config import StoreConfig
from aviso_workflows.etcd import put_op
from aviso_workflows.etcd_transport import open_gateway

TRANSACTIONS = 200
OPS = 128  # etcd's default limit of operations per transaction
WRITERS = 4
WATCHERS = 10
ROUNDS = 3  # each figure is the best of this many rounds (a busy machine only slows a round down)


def key(prefix: str, txn: int, op: int) -> str:
    return (f"{prefix}date=20300101,target=E1,class=od,expver=0001,domain=g,time=00,stream=oper,"
            f"step={txn * OPS + op}")


VALUE = "file:///data/forecast/20300101/00/od/oper/E1.grib"


# -- the HTTP gateway --------------------------------------------------------------------------------
def gateway_config(url: str) -> StoreConfig:
    """The store's settings over the HTTP gateway (the default, ``auto``, speaks gRPC where it can)."""
    return StoreConfig(endpoints=(url,), transport="gateway")


def gateway_writes(url: str, prefix: str, transactions: int, writers: int) -> float:
    gateway = open_gateway(gateway_config(url))

    def write(part: int) -> None:
        for txn in range(part, transactions, writers):
            gateway.txn([], [put_op(key(prefix, txn, op), VALUE) for op in range(OPS)])

    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    return transactions * OPS / (time.perf_counter() - started)


def gateway_fanout(url: str, prefix: str, start: int, events: int) -> float:
    gateway = open_gateway(gateway_config(url))
    counts = [0] * WATCHERS

    def watch(index: int) -> None:
        stream = gateway.watch(prefix, start, idle_timeout=30)
        try:
            for batch in stream:
                counts[index] += len(batch.puts)
                if counts[index] >= events:
                    return
        finally:
            stream.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(WATCHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert min(counts) >= events, f"gateway watchers got {counts} of {events}"
    return WATCHERS * events / (time.perf_counter() - started)


# -- gRPC (aetcd) ------------------------------------------------------------------------------------
def grpc_client(url: str) -> Any:
    import aetcd

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=30)


async def grpc_writes(url: str, prefix: str, transactions: int, writers: int) -> float:
    async with grpc_client(url) as client:
        async def write(part: int) -> None:
            for txn in range(part, transactions, writers):
                puts = [client.transactions.put(key(prefix, txn, op).encode(), VALUE.encode()) for op in range(OPS)]
                await client.transaction([], puts, [])

        await client.status()  # connected before the clock starts, as the gateway's session is after one request
        started = time.perf_counter()
        await asyncio.gather(*(write(part) for part in range(writers)))
        return transactions * OPS / (time.perf_counter() - started)


async def grpc_fanout(url: str, prefix: str, start: int, events: int) -> float:
    async with grpc_client(url) as client:
        await client.status()

        async def watch() -> int:
            got = 0
            watcher = await client.watch_prefix(prefix.encode(), start_revision=start)
            async for _ in watcher:
                got += 1
                if got >= events:
                    break
            await watcher.cancel()
            return got

        started = time.perf_counter()
        counts = await asyncio.wait_for(asyncio.gather(*(watch() for _ in range(WATCHERS))), 300)
        assert min(counts) >= events, f"gRPC watchers got {counts} of {events}"
        return WATCHERS * events / (time.perf_counter() - started)


# -- the run -----------------------------------------------------------------------------------------
def best(measure: Callable[[int], float]) -> float:
    return max(measure(round_) for round_ in range(ROUNDS))


def has_aetcd() -> bool:
    return importlib.util.find_spec("aetcd") is not None


def measure(url: str, transactions: int) -> dict[str, float]:
    gateway = open_gateway(gateway_config(url))
    gateway.current_revision()
    grpc = has_aetcd()  # without it (a venv without the gRPC transport) only the gateway is measured
    results = {
        "http_write_1": best(lambda r: gateway_writes(url, f"/bench/h1/{r}/", transactions, 1)),
        "http_write_4": best(lambda r: gateway_writes(url, f"/bench/h4/{r}/", transactions, WRITERS)),
    }
    if grpc:
        results["grpc_write_1"] = best(lambda r: asyncio.run(grpc_writes(url, f"/bench/g1/{r}/", transactions, 1)))
        results["grpc_write_4"] = best(lambda r: asyncio.run(grpc_writes(url, f"/bench/g4/{r}/", transactions,
                                                                          WRITERS)))
    start = gateway.current_revision() + 1
    gateway_writes(url, "/bench/watch/", transactions, 1)
    events = transactions * OPS
    results["http_fanout"] = best(lambda r: gateway_fanout(url, "/bench/watch/", start, events))
    if grpc:
        results["grpc_fanout"] = best(lambda r: asyncio.run(grpc_fanout(url, "/bench/watch/", start, events)))
    return results


def figures(result: dict[str, float]) -> list[Figure]:
    rows = []
    for name, label in (("write_1", "batched writes (128 puts a transaction), one writer"),
                        ("write_4", f"batched writes, {WRITERS} writers at once"),
                        ("fanout", f"watch fan-out, {WATCHERS} watchers of one prefix (events delivered)")):
        unit = "keys/s" if "write" in name else "events/s"
        rows.append(reported(f"{label}: HTTP gateway", result[f"http_{name}"], unit))
        if f"grpc_{name}" in result:
            rows.append(reported(f"{label}: gRPC (aetcd)", result[f"grpc_{name}"], unit))
            rows.append(reported(f"{label}: gRPC ÷ gateway", result[f"grpc_{name}"] / result[f"http_{name}"], "×"))
    return rows


def plot(result: dict[str, float]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    names = [("write_1", "writes, 1 writer"), ("write_4", f"writes, {WRITERS} writers"),
             ("fanout", f"fan-out, {WATCHERS} watchers")]
    for offset, transport, label in ((-0.2, "http", "HTTP gateway"), (0.2, "grpc", "gRPC (aetcd)")):
        axis.bar([i + offset for i in range(len(names))], [result.get(f"{transport}_{n}", 0) / 1000 for n, _ in names],
                 width=0.4, label=label)
    axis.set_xticks(range(len(names)), [label for _, label in names])
    axis.set_ylabel("thousand keys (events) per second")
    axis.set_title("etcd's HTTP gateway and its gRPC API, same etcd, one run", fontsize=9)
    axis.legend(fontsize=8)
    save_plot(figure, "transport")


def main() -> None:
    transactions = int(sys.argv[2]) if len(sys.argv) > 2 else TRANSACTIONS
    with private_etcd() as info:
        result = measure(info.client_url, transactions)
    print(result, file=sys.stderr)
    if not has_aetcd():
        write_results(results_path(), figures(result), ["Transport: aetcd is not installed (`pip install aetcd`): "
                                                          "only the HTTP gateway was measured."])
        plot(result)
        return
    ratios = {name: result[f"grpc_{name}"] / result[f"http_{name}"] for name in ("write_1", "write_4", "fanout")}
    verdict = ("more than 1.5× faster, so a gRPC transport behind the same Store would pay (the store speaks only "
               "the gateway so far)" if max(ratios.values()) > 1.5 else
               "not more than 1.5× faster for batched writes or fan-out, so the store keeps the HTTP gateway "
               "(which proxies that forward only HTTP also need)")
    write_results(results_path(), figures(result), [
        f"Transport: over gRPC (aetcd) etcd took batched writes {ratios['write_1']:.2f}× ({WRITERS} writers: "
        f"{ratios['write_4']:.2f}×) and delivered watch fan-out {ratios['fanout']:.2f}× as fast as over its HTTP "
        f"gateway, on the same etcd in one run: {verdict}."])
    plot(result)


if __name__ == "__main__":
    main()
