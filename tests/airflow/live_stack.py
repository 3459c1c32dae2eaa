"""A live Airflow on loopback for tests: api-server, scheduler, dag-processor and triggerer on SQLite.

Every process is started in its own session on a free 127.0.0.1 port and stopped by its pid
(its process group: the api-server and the executor start children). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from airflow_helpers import AIRFLOW, MIGRATE_SECONDS

from aviso_workflows.server import free_port

T = TypeVar("T")
COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
STOP_SECONDS = 20.0
#: Airflow's own graceful stop of the triggerer escalates SIGINT, SIGTERM, SIGKILL 10 s apart.
COMPONENT_STOP_SECONDS = 45.0
CLI_SECONDS = 120.0
CLI_ATTEMPTS = 3


def eventually(what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / every) + 2):
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def descendants(pid: int) -> list[int]:
    """Pids of the processes below ``pid`` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo and len(found) < 10_000:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still run (zombies excluded)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.append(pid)
    return running


class LiveStack:
    """The four Airflow services of one AIRFLOW_HOME."""

    def __init__(self, home: Path, dags: Path, extra_env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AVISO_WORKFLOWS"))}
        self.env.update(extra_env)
        self.env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__TRIGGERER__DEFAULT_CAPACITY": "100",
        })
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()
        self.logs: list[IO[bytes]] = []

    def start(self) -> None:
        self.cli("db", "migrate", timeout=MIGRATE_SECONDS)
        with sqlite3.connect(self.home / "airflow.db") as db:  # readers and one writer at a time, not one of all
            db.execute("pragma journal_mode=wal")
        for name in COMPONENTS:
            self.start_component(name)

    def start_component(self, name: str) -> subprocess.Popen[bytes]:
        """Start one service (again), in its own session, its output appended to ``<name>.log``."""
        log = open(self.home / f"{name}.log", "ab")
        self.logs.append(log)
        kind = "triggerer" if name.startswith("triggerer") else name  # "triggerer-2": a second triggerer (HA)
        command = [str(AIRFLOW)] + [a.format(port=self.port) for a in COMPONENTS[kind]]
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes[name] = process
        self.stopped.discard(name)
        return process

    def stop_component(self, name: str, signum: signal.Signals, timeout: float = COMPONENT_STOP_SECONDS) -> int:
        """Stop one service by its pid and wait for it (bounded); returns its exit status.

        SIGTERM goes to the service's process, which stops its own children (Airflow's graceful stop);
        SIGKILL goes to its process group, so the service and the children it forked die at once. Any
        child still alive after ``timeout`` is killed by its pid and the stop fails.
        """
        process = self.processes[name]
        family = [process.pid, *descendants(process.pid)]
        self.stopped.add(name)
        if signum == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.send_signal(signum)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
            raise AssertionError(f"airflow {name} did not stop within {timeout:g} s of {signum.name}") from None
        for _ in range(int(timeout / 0.2) + 1):
            if not alive(family):
                break
            time.sleep(0.2)
        stragglers = alive(family)
        for pid in stragglers:
            os.kill(pid, signal.SIGKILL)
        assert not stragglers, f"children {stragglers} of airflow {name} outlived it by {timeout:g} s"
        return status

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        for log in self.logs:
            log.close()

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None and n not in self.stopped}
        if dead:
            raise AssertionError(f"airflow processes ended: {dead}; logs in {self.home}")

    def cli(self, *args: str, timeout: float = CLI_SECONDS) -> str:
        for _ in range(CLI_ATTEMPTS):  # SQLite may be busy with the services' writes: try again
            done = subprocess.run([str(AIRFLOW), *args], env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
            if done.returncode == 0 or "database is locked" not in done.stderr + done.stdout:
                break
            time.sleep(1)
        if done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the metadata DB (SQLite) directly: faster than a CLI call per poll."""
        self.check_alive()
        with sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=10) as db:
            return db.execute(sql, params).fetchall()

    def runs(self, dag_id: str, run_type: str | None = None) -> list[tuple[str, str]]:
        sql = "select run_id, state from dag_run where dag_id = ?" + (" and run_type = ?" if run_type else "")
        return self.query(sql, dag_id, *([run_type] if run_type else []))

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        rows = self.query("select state from task_instance where dag_id = ? and run_id = ? and task_id = ?",
                          dag_id, run_id, task_id)
        return rows[0][0] if rows else None

    def asset_payloads(self, asset_name: str) -> list[dict[str, Any]]:
        rows = self.query("select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ? "
                          "order by e.id", asset_name)
        return [json.loads(extra).get("payload", {}) for (extra,) in rows]

    def running_triggerer_jobs(self) -> set[int]:
        """Ids of the triggerer jobs that still run (a killed one stays "running" until found stale)."""
        return {row[0] for row in self.query("select id from job where job_type = 'TriggererJob' and "
                                             "state = 'running' and end_date is null")}

    def watcher_triggerer(self, asset_name: str) -> int | None:
        """The triggerer job running the watcher of ``asset_name``, if one does."""
        rows = self.query("select t.triggerer_id from trigger t join asset_watcher w on w.trigger_id = t.id "
                          "join asset a on a.id = w.asset_id where a.name = ?", asset_name)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def asset_notifications(self, asset_name: str) -> list[dict[str, Any]]:
        """The notifications the asset's events carry, event after event, as stored."""
        from aviso_workflows.airflow.assets import payload_notifications

        return [n for payload in self.asset_payloads(asset_name) for n in payload_notifications(payload)]

    def asset_state(self, asset_name: str) -> list[tuple[str, str]]:
        return self.query("select s.key, s.value from asset_state_store s join asset a on a.id = s.asset_id "
                          "where a.name = ?", asset_name)
