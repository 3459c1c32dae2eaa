"""Notify throughput: our notify against raw etcd transactions of the same size, and pyaviso 1.0.2's notify.

Ours and the raw transactions (etcd3gw's ``Etcd3Client.transaction``) alternate in one loop, so both see
the same machine. A raw transaction writes what ours writes (the data keys and a status key, 128
operations at most) without reading the status key first or validating anything. pyaviso runs in its
own venv and process, one notify per key (it has no batched form).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    MARS,
    PYAVISO_PYTHON,
    Figure,
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
    write_results,
)
from etcd3gw.client import Etcd3Client

from aviso_workflows import Store
from aviso_workflows.etcd import b64

SINGLE_ROUNDS = 400
FORECAST_STEPS = 241  # 0..240: a forecast's steps
FORECAST_ROUNDS = 40
PYAVISO_NOTIFIES = 40
STATUS_VALUE = json.dumps({"etcd_user": None, "message": "notification to 241 keys", "unix_user": "bench",
                           "aviso_version": "raw", "engine": "ETCD_REST", "hostname": "bench",
                           "date_time": "2030-01-01T00:00:00.000000Z", "prev_rev": 1})

PYAVISO_SCRIPT = """
import json, sys, time
from pyaviso.notification_manager import NotificationManager
from pyaviso.user_config import UserConfig
count, date = int(sys.argv[1]), sys.argv[2]
fields = json.loads(sys.argv[3])
config, manager, took = UserConfig(), NotificationManager(), []
for step in range(count + 1):  # the first one loads the schema: not timed
    started = time.perf_counter()
    manager.notify({"event": "mars", **fields, "date": date, "step": step, "location": "file:///x"}, config=config)
    took.append(time.perf_counter() - started)
print(json.dumps(took[1:]))
"""


def raw_put(key: str, value: str) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def same_size(keys: list[str]) -> list[str]:
    """Keys as long as ours, under a prefix of their own."""
    return [key.replace("/ec/mars/", "/raw/mars/", 1) for key in keys]


def raw_notify(client: Etcd3Client, keys: list[str], limit: int) -> None:
    """The same keys and status writes as our notify, as bare transactions of at most ``limit`` operations."""
    for start in range(0, len(keys), limit - 1):
        chunk = keys[start:start + limit - 1]
        ops = [raw_put(key, "file:///x") for key in chunk] + [raw_put("/raw/mars/", STATUS_VALUE)]
        client.transaction({"compare": [], "success": ops, "failure": []})


def timed(action: Any, *args: Any, **options: Any) -> float:
    started = time.perf_counter()
    action(*args, **options)
    return time.perf_counter() - started


def measure_ours_and_raw(store: Store, client: Etcd3Client) -> dict[str, list[float]]:
    limit = store.config.max_txn_ops
    times: dict[str, list[float]] = {"single": [], "raw single": [], "batched": [], "raw batched": []}
    for step in range(SINGLE_ROUNDS):
        request = store.request("mars", {**MARS, "date": "20300301", "step": step})
        raw_keys = same_size(request.keys())
        times["single"].append(timed(store.notify, request, location="file:///x"))
        times["raw single"].append(timed(raw_notify, client, raw_keys, limit))
    for day in range(FORECAST_ROUNDS):
        date = f"203004{day % 28 + 1:02d}" if day < 28 else f"203005{day - 27:02d}"
        request = store.request("mars", {**MARS, "date": date, "step": f"0/to/{FORECAST_STEPS - 1}"})
        raw_keys = same_size(request.keys())
        times["batched"].append(timed(store.notify, request, location="file:///x"))
        times["raw batched"].append(timed(raw_notify, client, raw_keys, limit))
    return times


def measure_pyaviso(port: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="aviso-bench-pyaviso-") as directory:
        home = pyaviso_home(port, Path(directory))
        done = subprocess.run([str(PYAVISO_PYTHON), "-c", PYAVISO_SCRIPT, str(PYAVISO_NOTIFIES), "20300601",
                               json.dumps(MARS)], env=pyaviso_env(home), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"pyaviso notify failed:\n{done.stderr[-3000:]}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def figures(times: dict[str, list[float]], peer: list[float]) -> list[Figure]:
    def median_ms(name: str) -> float:
        return percentile(times[name], 0.5) * 1000

    peer_rate = 1 / percentile(peer, 0.5)
    batched_rate = FORECAST_STEPS / percentile(times["batched"], 0.5)
    raw_batched_rate = FORECAST_STEPS / percentile(times["raw batched"], 0.5)
    return [
        reported("single notify (one key), median", median_ms("single"), "ms", percentile(peer, 0.5) * 1000),
        at_most("single notify / raw txn of the same size (data + status key)",
                median_ms("single") / median_ms("raw single"), "×", 1.5),
        at_least(f"batched notify ({FORECAST_STEPS} steps, 2 txns)", batched_rate, "notifications/s", 20_000,
                 peer_rate),
        at_least("batched notify / raw txns of the same size", batched_rate / raw_batched_rate, "×", 0.8),
        reported("raw etcd txns, 128 puts each, keys as long as ours (etcd3gw)", raw_batched_rate, "keys/s"),
        reported("raw txn of 2 puts (etcd3gw), median", median_ms("raw single"), "ms"),
    ]


def plot(times: dict[str, list[float]], peer: list[float]) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["single", "raw single"]
    left.bar(["our notify\n(1 key)", "raw txn\n(2 puts)", "pyaviso notify\n(1 key)"],
             [percentile(times[n], 0.5) * 1000 for n in names] + [percentile(peer, 0.5) * 1000],
             color=["tab:blue", "tab:gray", "tab:orange"])
    left.set_ylabel("median time per call (ms)")
    left.set_title("One notification", fontsize=9)
    rates = [FORECAST_STEPS / percentile(times["batched"], 0.5), FORECAST_STEPS / percentile(times["raw batched"], 0.5),
             1 / percentile(peer, 0.5)]
    right.bar(["our notify\n(241 steps)", "raw txns\n(128 puts)", "pyaviso\n(one per key)"], rates,
              color=["tab:blue", "tab:gray", "tab:orange"])
    right.axhline(20_000, color="grey", linestyle="--", linewidth=1, label="target 20 000/s")
    right.set_yscale("log")
    right.set_ylabel("notifications per second (log)")
    right.set_title("A forecast of 241 steps", fontsize=9)
    right.legend(fontsize=7)
    save_plot(figure, "throughput")


def main() -> None:
    with private_etcd() as etcd:
        store = Store([etcd.client_url])
        client = Etcd3Client(host="127.0.0.1", port=etcd.port, api_path="/v3/")
        times = measure_ours_and_raw(store, client)
        peer = measure_pyaviso(etcd.port)
    plot(times, peer)
    raw_rate = FORECAST_STEPS / percentile(times["raw batched"], 0.5)
    write_results(results_path(), figures(times, peer),
                  [f"Throughput: raw etcd transactions of 128 puts reached {raw_rate:,.0f} keys/s in this run "
                   f"(the 20 000/s target assumes the ≈ 31 000 keys/s etcd reached on these machines before); "
                   f"a batched notify writes the same transactions, so its absolute rate follows etcd's."])


if __name__ == "__main__":
    main()
