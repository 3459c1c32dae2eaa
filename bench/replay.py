"""Replay of a time window (``listen --from/--to``) in a day of operational volume.

A simulated day: 100 800 dissemination notifications (20 160 transactions of 5 keys, 4 destinations,
posted evenly from 00:00 to 24:00 with pyaviso's status records). Then 1 % windows (14.4 minutes) at
the start, the middle and the end of the day are replayed, for one destination and for all four,
timed (the median of three replays, the windows taking turns) and with every request to etcd counted.
For comparison, the walk of the status chain one GET per status (what pyaviso 1.0.2 does, and what
this package did before the search) is timed on the earliest window, the worst place for it.

``replay.py RESULTS [NOTIFICATIONS]``: a smaller number gives a quick run.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import (
    Figure,
    at_most,
    counted,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.errors import HistoryCompacted
from aviso_workflows.etcd import KeyValue, put_op
from aviso_workflows.status_chain import STATUS_TIME_FORMAT, replay, revision_window, status_record

FULL = 100_800
DESTINATIONS = ["DA", "DB", "DC", "DD"]
KEYS_PER_POST = 5
DAY = dt.datetime(2029, 6, 1)
WINDOW = dt.timedelta(seconds=864)  # 1 % of a day
#: Where the windows start, in the day.
WINDOWS = {"morning (start)": dt.timedelta(0), "noon (middle)": dt.timedelta(hours=12),
           "evening (newest)": dt.timedelta(days=1) - WINDOW}
WALK_BUDGET = 120.0  # seconds: a walk of the chain one GET per status is stopped there
REPEATS = 3  # replays of each window; the median time is reported


def notifications() -> int:
    return int(sys.argv[2]) if len(sys.argv) > 2 else FULL


def post_chain(store: Store, destination: str, posts: int) -> None:
    """One destination's posts of the day, each one transaction as pyaviso writes it."""
    previous: tuple[int, dict[str, Any]] | None = None
    status_key = f"/ec/diss/{destination}/"
    for index in range(posts):
        when = DAY + dt.timedelta(days=1) * (index + 0.5) / posts
        record = _record(previous, when)
        puts = [put_op(f"/ec/diss/{destination}/date=20290601,target=E1,class=od,expver=0001,domain=g,time=00,"
                       f"stream=oper,step={index * KEYS_PER_POST + k}", f"file:///{index}.grib")
                for k in range(KEYS_PER_POST)]
        answer = store.gateway.txn([], [*puts, put_op(status_key, json.dumps(record))])
        previous = (int(answer["header"]["revision"]), record)


def _record(previous: tuple[int, dict[str, Any]] | None, when: dt.datetime) -> dict[str, Any]:
    record: dict[str, Any] = {"date_time": when.strftime(STATUS_TIME_FORMAT), "engine": "ETCD_REST"}
    if previous is not None:
        record["prev_rev"] = previous[0]
        if "last_prev_day_rev" in previous[1]:
            record["last_prev_day_rev"] = previous[1]["last_prev_day_rev"]
    return record


def post_day(store: Store, total: int) -> float:
    started = time.perf_counter()
    per_destination = total // KEYS_PER_POST // len(DESTINATIONS)
    with ThreadPoolExecutor(len(DESTINATIONS)) as pool:
        list(pool.map(lambda d: post_chain(store, d, per_destination), DESTINATIONS))
    return time.perf_counter() - started


def request(store: Store, destinations: list[str]) -> Any:
    return store.request({"event": "dissemination", "destination": destinations, "target": "E1", "class": "od",
                          "expver": 1, "domain": "g", "date": "20290601", "time": 0, "stream": "oper"})


def timed_replay(url: str, destinations: list[str], start: dt.datetime) -> dict[str, float]:
    store = Store([url])
    requests = counted(store)
    began = time.perf_counter()
    found = replay(store, [request(store, destinations)], start, start + WINDOW)
    took = time.perf_counter() - began
    return {"seconds": took, "requests": requests(), "notifications": len(found)}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median time of the runs of one window, with the most requests and the fewest notifications any
    of them saw (the same in every run unless something is wrong)."""
    return {"seconds": statistics.median(r["seconds"] for r in runs), "requests": max(r["requests"] for r in runs),
            "notifications": min(r["notifications"] for r in runs)}


def walk(store: Store, status_key: str, start: dt.datetime) -> tuple[float, int, bool]:
    """The chain walked back one GET per status to ``start`` (seconds, GETs, finished within the budget)."""
    began = time.perf_counter()
    _, status = store.gateway.get(status_key)
    gets = 1
    while status is not None and time.perf_counter() - began < WALK_BUDGET:
        record = status_record(status)
        if dt.datetime.strptime(record["date_time"], STATUS_TIME_FORMAT) < start or not record.get("prev_rev"):
            return time.perf_counter() - began, gets, True
        try:
            status = _get(store, status_key, int(record["prev_rev"]))
        except HistoryCompacted:
            break
        gets += 1
    return time.perf_counter() - began, gets, False


def _get(store: Store, key: str, revision: int) -> KeyValue | None:
    return store.gateway.get(key, revision=revision)[1]


def measure(url: str, total: int) -> dict[str, Any]:
    store = Store([url])
    posting = post_day(store, total)
    results: dict[str, Any] = {"posting": posting, "revision": store.current_revision(), "windows": {}}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"one": [], "four": []} for name in WINDOWS}
    for _ in range(REPEATS):  # the windows take turns: a busy moment of the machine skews one run, not a window
        for name, offset in WINDOWS.items():
            runs[name]["one"].append(timed_replay(url, DESTINATIONS[:1], DAY + offset))
            runs[name]["four"].append(timed_replay(url, DESTINATIONS, DAY + offset))
    for name, sizes in runs.items():
        results["windows"][name] = {size: median_run(timed) for size, timed in sizes.items()}
        print(f"{name}: {results['windows'][name]}", file=sys.stderr, flush=True)
    edges = counted(store)
    began = time.perf_counter()
    revision_window(store, f"/ec/diss/{DESTINATIONS[0]}/", DAY, DAY + WINDOW)
    results["search"] = {"seconds": time.perf_counter() - began, "requests": edges()}
    results["walk"] = walk(Store([url]), f"/ec/diss/{DESTINATIONS[0]}/", DAY)
    return results


def figures(result: dict[str, Any], total: int) -> list[Figure]:
    windows = result["windows"]
    walk_seconds, walk_gets, finished = result["walk"]
    newest = windows["evening (newest)"]["one"]["seconds"]
    rows = [reported(f"posting the day ({total} notifications)", result["posting"], "s")]
    for name, sizes in windows.items():
        one, four = sizes["one"], sizes["four"]
        rows += [
            at_most(f"replay 1 % window, {name}, one destination", one["seconds"], "s", 1.0),
            at_most(f"replay 1 % window, {name}, one destination: requests", one["requests"], "requests", 100),
            at_most(f"replay 1 % window, {name}, one destination: ÷ newest window", one["seconds"] / newest, "×", 1.5),
            reported(f"replay 1 % window, {name}, 4 destinations", four["seconds"], "s"),
            reported(f"replay 1 % window, {name}, 4 destinations: requests", four["requests"], "requests"),
        ]
    rows.append(reported("window search alone (both edges, one chain, earliest window): reads",
                         result["search"]["requests"], "requests"))
    rows.append(reported("window search alone (both edges, one chain, earliest window): time",
                         result["search"]["seconds"], "s"))
    walked = "walk of the chain one GET per status (as pyaviso 1.0.2 does), earliest window" + \
        ("" if finished else f" (stopped after {WALK_BUDGET:g} s)")
    rows.append(reported(walked, walk_seconds, "s"))
    rows.append(reported(walked + ": requests", walk_gets, "requests"))
    return rows


def plot(result: dict[str, Any]) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(result["windows"])
    for offset, size, label in ((-0.2, "one", "one destination"), (0.2, "four", "4 destinations")):
        xs = [i + offset for i in range(len(names))]
        left.bar(xs, [result["windows"][n][size]["seconds"] for n in names], width=0.4, label=label)
        right.bar(xs, [result["windows"][n][size]["requests"] for n in names], width=0.4, label=label)
    left.axhline(1.0, color="grey", linestyle=":", label="target (one destination)")
    right.axhline(100, color="grey", linestyle=":", label="target (one destination)")
    for axis, unit in ((left, "seconds"), (right, "requests to etcd")):
        axis.set_xticks(range(len(names)), names)
        axis.set_ylabel(unit)
        axis.legend(fontsize=7)
    walk_seconds, walk_gets, _ = result["walk"]
    figure.suptitle(f"Replay of a 1 % window (walk one GET per status, morning: {walk_seconds:.1f} s, "
                    f"{walk_gets} GETs)", fontsize=9)
    save_plot(figure, "replay")


def main() -> None:
    total = notifications()
    with private_etcd() as info:
        result = measure(info.client_url, total)
    write_results(results_path(), figures(result, total), [
        f"Replay: a 1 % window of a day of {total} notifications ({result['revision']} revisions) is found by "
        f"a binary search over the status key's revisions ({result['search']['requests']} reads for both edges "
        f"of one chain), then read at its last status with ranged reads (a window near the head: one finite "
        f"watch over its history); the walk one GET per status "
        f"took {result['walk'][0]:.1f} s and {result['walk'][1]} GETs for the earliest window."])
    plot(result)


if __name__ == "__main__":
    main()
