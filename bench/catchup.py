"""Catch-up check: is a year of data there? 365 dates × 41 steps (14 965 keys), all posted.

Compared side by side on the same keys: one ``Store.read`` of a request covering them all (its ranges
go 128 to a transaction), ``Store.value`` of the same request, one read per date (what the daily
catch-up DAG's sensors do, one run per day), and one GET per key (what a client without range reads
would do; pyaviso's ``value`` is one GET per key).
"""

from __future__ import annotations

import datetime as dt
import time

from common import (
    MARS,
    Figure,
    at_least,
    at_most,
    percentile,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store

DAYS = 365
STEPS = "0/to/240/by/6"  # 41 steps
FIRST_DAY = dt.date(2029, 1, 1)
REPEATS = 5
GET_BUDGET = 60.0  # seconds: past this, one GET per key is timed on the keys done so far and scaled


def dates() -> list[str]:
    return [(FIRST_DAY + dt.timedelta(days=day)).strftime("%Y%m%d") for day in range(DAYS)]


def post_year(store: Store) -> float:
    started = time.perf_counter()
    for date in dates():
        store.notify("mars", {**MARS, "date": date, "step": STEPS}, location=f"file:///{date}.grib")
    return time.perf_counter() - started


def one_get_per_key(store: Store, keys: list[str]) -> tuple[float, int]:
    """Seconds for one GET per key (scaled to all keys if the budget ran out) and how many were read."""
    started = time.perf_counter()
    found = 0
    for done, key in enumerate(keys, start=1):
        found += store.gateway.get(key)[1] is not None
        if time.perf_counter() - started > GET_BUDGET:
            return (time.perf_counter() - started) * len(keys) / done, done
    assert found == len(keys), f"only {found} of {len(keys)} keys found"
    return time.perf_counter() - started, len(keys)


def measure(store: Store) -> dict[str, float]:
    request = store.request("mars", {**MARS, "date": dates(), "step": STEPS})
    per_day = [store.request("mars", {**MARS, "date": date, "step": STEPS}) for date in dates()]
    results: dict[str, list[float]] = {"read": [], "value": [], "per day": []}
    for _ in range(REPEATS):
        started = time.perf_counter()
        found = store.read(request)[1]
        results["read"].append(time.perf_counter() - started)
        assert len(found) == request.count, f"read found {len(found)} of {request.count}"
        started = time.perf_counter()
        values = store.value(request)
        results["value"].append(time.perf_counter() - started)
        assert None not in values.values()
        started = time.perf_counter()
        for day in per_day:
            store.read(day)
        results["per day"].append(time.perf_counter() - started)
    gets, done = one_get_per_key(store, request.keys())
    summary = {name: percentile(values, 0.5) for name, values in results.items()}
    summary.update(keys=request.count, gets=gets, gets_done=done)
    return summary


def figures(result: dict[str, float], posting: float) -> list[Figure]:
    keys = int(result["keys"])
    scaled = "" if result["gets_done"] == keys else f", scaled from {int(result['gets_done'])} keys"
    return [
        at_most(f"catch-up: one Store.read of {keys} keys (365 dates × 41 steps)", result["read"], "s", 1.0),
        at_least("catch-up: one GET per key / one Store.read", result["gets"] / result["read"], "×", 20),
        reported(f"catch-up: one GET per key ({keys} GETs{scaled})", result["gets"], "s"),
        reported("catch-up: Store.value of the same request", result["value"], "s"),
        reported("catch-up: one Store.read per date (365 reads, as the daily DAG's sensors)", result["per day"], "s"),
        reported("posting the year (365 notifies of 41 steps)", posting, "s"),
    ]


def plot(result: dict[str, float]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    labels = ["Store.read\n(one request)", "Store.value\n(one request)", "Store.read\nper date (365)",
              "GET per key\n(14 965)"]
    values = [result["read"], result["value"], result["per day"], result["gets"]]
    bars = axis.bar(labels, values, color=["tab:blue", "tab:blue", "tab:cyan", "tab:gray"])
    axis.bar_label(bars, labels=[f"{v:.2f} s" for v in values], fontsize=8)
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="target < 1 s")
    axis.set_yscale("log")
    axis.set_ylabel("seconds (log)")
    axis.set_title("Is a year of data there? 365 dates × 41 steps", fontsize=9)
    axis.legend(fontsize=7)
    save_plot(figure, "catchup")


def main() -> None:
    with private_etcd() as etcd:
        store = Store([etcd.client_url])
        posting = post_year(store)
        result = measure(store)
    plot(result)
    transactions = -(-DAYS // 128)
    write_results(results_path(), figures(result, posting), [
        f"Catch-up: one Store.read of the year reads 365 prefix ranges in {transactions} transactions of at most "
        f"128 ranges; most of its time is decoding and matching the {int(result['keys'])} keys it gets back."])


if __name__ == "__main__":
    main()
