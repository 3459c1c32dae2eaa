"""What Airflow adds: a poke of ``AvisoSensor`` against a bare ``Store.read``, and a deferral measured in-process.

The poke is called directly with a task context, as Airflow's poke loop calls it (41 keys, all there);
each poke builds the hook and store from the ``aviso_default`` connection, like a real one. The
deferral runs in this process, not in a live scheduler and triggerer (starting those would take most
of the time budget): ``execute()`` until it raises TaskDeferred, the trigger's ``run()`` in an asyncio
loop until the last key is posted and the event comes, then ``execute_complete()``. Airflow's own
scheduling (the triggerer picking the trigger up, the task resuming) is not in these figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from types import SimpleNamespace
from typing import Any

from common import (
    MARS,
    Figure,
    airflow_environment,
    percentile,
    private_etcd,
    pyplot,
    reported,
    results_path,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.listen import HUB

POKES = 200
DEFERRALS = 60
STEPS = "0/to/240/by/6"
FIRST_DAY = dt.date(2031, 1, 1)


def context_for(date: str) -> dict[str, Any]:
    import pendulum

    return {"logical_date": pendulum.parse(date), "ds_nodash": date,
            "dag_run": SimpleNamespace(run_after=pendulum.parse(date))}


def sensor(**options: Any) -> Any:
    from airflow.sdk import DAG

    from aviso_workflows.airflow import AvisoSensor

    with DAG("aviso_bench", schedule=None):
        return AvisoSensor(task_id="wait", event="mars", **options)


def measure_pokes(store: Store) -> dict[str, list[float]]:
    date = FIRST_DAY.strftime("%Y%m%d")
    store.notify("mars", {**MARS, "date": date, "step": STEPS})
    task = sensor(request={**MARS, "step": STEPS})
    context = context_for(date)
    request = store.request("mars", {**MARS, "date": date, "step": STEPS})
    times: dict[str, list[float]] = {"poke": [], "read": []}
    for _ in range(POKES):
        started = time.perf_counter()
        assert task.poke(context).is_done
        times["poke"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.read(request)
        times["read"].append(time.perf_counter() - started)
    return times


async def one_deferral(store: Store, day: int, times: dict[str, list[float]]) -> None:
    from airflow.sdk.bases.operator import ExecutorSafeguard
    from airflow.sdk.exceptions import TaskDeferred

    date = (FIRST_DAY + dt.timedelta(days=day + 1)).strftime("%Y%m%d")
    await asyncio.to_thread(store.notify, "mars", {**MARS, "date": date, "step": "0/6"})
    task = sensor(request={**MARS, "step": "0/6/12"}, deferrable=True)
    context = context_for(date)
    started = time.perf_counter()
    try:
        as_the_task_runner = {f"{type(task).__name__}__sentinel": ExecutorSafeguard.sentinel_value}
        task.execute(context, **as_the_task_runner)
        raise AssertionError("the sensor did not defer")
    except TaskDeferred as deferred:
        times["execute → TaskDeferred"].append(time.perf_counter() - started)
        trigger = deferred.trigger
    before = sum(w.subscriber_count for w in HUB.watches())
    events = trigger.run()
    waiting = asyncio.ensure_future(anext(events))
    for _ in range(1000):
        if sum(w.subscriber_count for w in HUB.watches()) > before:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)  # the trigger's first read
    posted = time.perf_counter()
    await asyncio.to_thread(store.notify, "mars", {**MARS, "date": date, "step": 12})
    event = await asyncio.wait_for(waiting, 30)
    times["last post → trigger event"].append(time.perf_counter() - posted)
    await events.aclose()
    started = time.perf_counter()
    result = task.execute_complete(context, event.payload)
    times["execute_complete"].append(time.perf_counter() - started)
    assert [n["request"]["step"] for n in result] == ["0", "6", "12"]


async def measure_deferrals(store: Store) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"execute → TaskDeferred": [], "last post → trigger event": [],
                                     "execute_complete": []}
    for day in range(DEFERRALS):
        await one_deferral(store, day, times)
    return times


def figures(pokes: dict[str, list[float]], deferrals: dict[str, list[float]]) -> list[Figure]:
    def ms(values: list[float]) -> float:
        return percentile(values, 0.5) * 1000

    found = [
        reported("AvisoSensor.poke() of 41 keys, median", ms(pokes["poke"]), "ms"),
        reported("Store.read of the same 41 keys, median", ms(pokes["read"]), "ms"),
        reported("poke overhead over the read (hook, connection, templating), median",
                 ms(pokes["poke"]) - ms(pokes["read"]), "ms"),
    ]
    found += [reported(f"deferrable sensor, in-process: {name}, median", ms(values), "ms")
              for name, values in deferrals.items()]
    return found


def plot(pokes: dict[str, list[float]], deferrals: dict[str, list[float]]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    series = {"Store.read\n(41 keys)": pokes["read"], "AvisoSensor\n.poke()": pokes["poke"],
              "execute →\nTaskDeferred": deferrals["execute → TaskDeferred"],
              "last post →\ntrigger event": deferrals["last post → trigger event"],
              "execute_\ncomplete": deferrals["execute_complete"]}
    medians = [percentile(values, 0.5) * 1000 for values in series.values()]
    bars = axis.bar(list(series), medians, color=["tab:gray", "tab:blue", "tab:green", "tab:green", "tab:green"])
    axis.bar_label(bars, labels=[f"{m:.2g}" for m in medians], fontsize=8)
    axis.set_ylabel("median (ms)")
    axis.set_title("Airflow: poke mode and the deferrable path (in-process)", fontsize=9)
    save_plot(figure, "airflow")


def main() -> None:
    with private_etcd() as etcd:
        airflow_environment(etcd.client_url)
        store = Store([etcd.client_url])
        pokes = measure_pokes(store)
        deferrals = asyncio.run(measure_deferrals(store))
    plot(pokes, deferrals)
    write_results(results_path(), figures(pokes, deferrals))


if __name__ == "__main__":
    main()
