"""The Airflow part of ``make demo``: the example consumer DAG defers, the example producer DAG releases it.

Both DAGs from ``dags/`` run with ``dag.test()``, each in its own process and throwaway AIRFLOW_HOME
(SQLite), against the demo's etcd. The consumer's deferrable sensor waits in the trigger; the
producer "computes" steps 0, 6 and 12 and notifies each; the consumer then prints the locations.
Takes about 30 seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from aviso_workflows import Store

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
FIELDS = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}
SHOWN = ("available", "Pausing task as DEFERRED", "running trigger", "notified", "released by", "step ",
         "DagRun Finished")
LIMIT_SECONDS = 90
DEFERRED = threading.Event()
START = time.monotonic()


def free_date(store: Store) -> dt.date:
    """The first day from tomorrow on with no notification yet, so the consumer really has to wait."""
    day = dt.date.today() + dt.timedelta(days=1)
    for _ in range(3650):
        if not store.get("mars", {**FIELDS, "date": day, "step": "0/6/12"}):
            return day
        day += dt.timedelta(days=1)
    raise RuntimeError("no free date in the next ten years")


def airflow_env(store_url: str, home: Path) -> dict[str, str]:
    """A private Airflow home with the example DAGs and an ``aviso_default`` connection to the demo's etcd."""
    url = urlsplit(store_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW_CONN_AVISO_DEFAULT=json.dumps({"conn_type": "aviso", "host": url.hostname, "port": url.port}),
               AVISO_DEMO_OUTPUT=str(home / "model-output"))
    return env


def start_dag(name: str, env: dict[str, str], day: dt.date,
              go: Path | None = None) -> tuple[subprocess.Popen[str], threading.Thread]:
    """``dag.test()`` of ``dags/<name>.py`` in a child process (once ``go`` exists); interesting lines are echoed."""
    command = [sys.executable, __file__, "--dag-test", name, day.isoformat(), str(go or "")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    echo = threading.Thread(target=_echo, args=(name.removeprefix("aviso_"), process), daemon=True)
    echo.start()
    return process, echo


def _echo(who: str, process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if any(marker in line for marker in SHOWN):
            text = line.split("[info     ]", 1)[-1].strip().split(" [", 1)[0].split(" loc=", 1)[0].strip()
            if "running trigger" in line:
                DEFERRED.set()
            print(f"{time.monotonic() - START:6.2f}s  {who:<9} {text[:150]}", flush=True)


def migrate(envs: list[dict[str, str]]) -> None:
    """Create the metadata DB once and give each home its own copy (two writers would lock SQLite)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=envs[0], capture_output=True, check=True, timeout=LIMIT_SECONDS)
    for env in envs[1:]:
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(envs[0]["AIRFLOW_HOME"]) / "airflow.db", Path(env["AIRFLOW_HOME"]) / "airflow.db")


def run(store_url: str) -> None:
    """Show a producer DAG releasing a consumer DAG's deferred sensor (about 30 s)."""
    store = Store([store_url])
    day = free_date(store)
    with tempfile.TemporaryDirectory(prefix="aviso-demo-airflow-") as tmp:
        envs = {name: airflow_env(store_url, Path(tmp) / name) for name in ("aviso_consumer", "aviso_producer")}
        print(f"dag.test() of dags/aviso_consumer.py and dags/aviso_producer.py for {day} "
              f"(Airflow homes in {tmp})", flush=True)
        migrate(list(envs.values()))
        go = Path(tmp) / "go"
        consumer, consumer_echo = start_dag("aviso_consumer", envs["aviso_consumer"], day)
        producer, producer_echo = start_dag("aviso_producer", envs["aviso_producer"], day, go)
        DEFERRED.wait(timeout=LIMIT_SECONDS)  # the producer runs once the consumer's sensor has deferred
        go.touch()
        for process in (producer, consumer):
            try:
                process.wait(timeout=LIMIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        consumer_echo.join(timeout=5)
        producer_echo.join(timeout=5)
    found = store.get("mars", {**FIELDS, "date": day, "step": "0/6/12"})
    print(f"consumer exit {consumer.returncode}, producer exit {producer.returncode}; locations in the store:")
    for notification in found:
        print(f"           step {notification.request['step']:>3}: {notification.location}")


def _dag_test(name: str, day: str, go: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{name}.py"))
    for _ in range(LIMIT_SECONDS * 10):
        if not go or os.path.exists(go):
            break
        time.sleep(0.1)
    bag.dags[name].test(logical_date=dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--dag-test":
        _dag_test(*sys.argv[2:])
    elif len(sys.argv) == 2:
        run(sys.argv[1])
    else:
        sys.exit("usage: demo_airflow.py ETCD_URL")
