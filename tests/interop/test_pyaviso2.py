"""pyaviso 2.4.2 (ECMWF's Aviso 2 client, HTTP + server-sent events) against ``aviso-workflows serve``.

``serve`` runs as a subprocess on a free loopback port in front of the session's etcd; pyaviso 2 runs from its
own venv (.venv-pyaviso2: it owns the same ``aviso`` command as pyaviso 1.0.2), as its command and through
its Python API in a child process. What one side posts, the others must see with the same fields and
location: our waits, an Airflow sensor, pyaviso 1.0.2's listener and pyaviso 2's listen and replay.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_pyaviso import aviso, aviso_home, json_objects, listener_file, pairs  # noqa: F401 - aviso_home: fixture

from aviso_workflows import Store, server
from aviso_workflows.serve.cli import start_serve_process

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parent.parent.parent
AVISO2 = ROOT / ".venv-pyaviso2" / "bin" / "aviso"
PYTHON2 = ROOT / ".venv-pyaviso2" / "bin" / "python"
MARS = {"class": "od", "expver": "1", "domain": "g", "time": "0", "stream": "oper"}
DISS = {"destination": "COM", "target": "E1", **MARS}
#: How the fields come back from every reader: canonical strings.
CANONICAL = {"expver": "0001", "time": "00"}
START_SECONDS = 30.0
OUTPUT_SECONDS = 20.0

if not AVISO2.exists():
    pytest.skip(f"pyaviso 2.4.2 is not installed in {AVISO2.parent.parent} (scripts/setup.sh installs it)",
                allow_module_level=True)


# -- serve ------------------------------------------------------------------------------------------
@contextmanager
def running_serve(etcd_url: str, port: int, log: Path, *options: str) -> Iterator[str]:
    """``aviso-workflows serve`` on 127.0.0.1:``port``; stopped by its pid (SIGTERM, then SIGKILL)."""
    with start_serve_process(etcd_url, port, options, log=log, timeout=START_SECONDS) as started:
        yield started.url


@pytest.fixture(scope="module")
def serve_url(etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``serve`` for the module's tests that do not restart it."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(etcd_url, server.free_port(), log) as url:
        yield url


# -- pyaviso 2 --------------------------------------------------------------------------------------
def aviso2_env(url: str, home: Path) -> dict[str, str]:
    """pyaviso 2's environment: a HOME of its own (no user config or state), the server's address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVISO")}
    env.update(HOME=str(home), AVISO_BASE_URL=url, NO_COLOR="1")
    return env


def aviso2(url: str, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run pyaviso 2's ``aviso`` command to its end."""
    return subprocess.run([str(AVISO2), *args], env=aviso2_env(url, home), capture_output=True, text=True,
                          timeout=timeout, check=False)


def python2(url: str, home: Path, code: str, *args: str) -> Any:
    """Run ``code`` with pyaviso 2's Python (``import pyaviso`` works there); it prints one JSON answer."""
    done = subprocess.run([str(PYTHON2), "-c", code, url, *args], env=aviso2_env(url, home), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


NOTIFY_WITH_API = """
import json, sys, pyaviso
client = pyaviso.AvisoClient(base_url=sys.argv[1])
answer = client.notify(event_type=sys.argv[2], identifier=json.loads(sys.argv[3]), payload=sys.argv[4])
print(json.dumps(answer.as_dict()))
"""

REPLAY_WITH_API = """
import json, sys, pyaviso
client = pyaviso.AvisoClient(base_url=sys.argv[1], state_store=pyaviso.MemoryStore())
found = []
with client.listen(sys.argv[2], filter=json.loads(sys.argv[3]), start_from=sys.argv[4], mode="replay_only") as it:
    for notification in it:
        found.append(notification.as_dict())
print(json.dumps(found))
"""


class Listener:
    """``aviso listen`` (pyaviso 2) in the background: what it prints, as JSON lines, and when it listens."""

    def __init__(self, url: str, home: Path, event: str, identifier: dict[str, str], state: Path) -> None:
        command = [str(AVISO2), "listen", "--json", "--event", event, "--state-file", str(state),
                   *(arg for k, v in identifier.items() for arg in ("--identifier", f"{k}={v}"))]
        self.process = subprocess.Popen(command, env=aviso2_env(url, home), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=lambda s=stream, o=lines: o.extend(iter(s.readline, "")), daemon=True).start()

    def notifications(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out) if line.startswith("{")]

    def wait_listening(self) -> None:
        """Until it says it listens (the server sent its opening event)."""
        self._until(lambda: any("Listening for" in line for line in self.err), "to listen")

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        self._until(lambda: len(self.notifications()) >= count, f"{count} notification(s)")
        return self.notifications()

    def _until(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + OUTPUT_SECONDS
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pyaviso 2's listener did not get {what}; it printed:\n"
                                     f"{''.join(self.out)[-2000:]}\n{''.join(self.err)[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ctrl+C: pyaviso 2 saves the last sequence it delivered, then exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def listening(url: str, home: Path, event: str, identifier: dict[str, str], state: Path) -> Iterator[Listener]:
    listener = Listener(url, home, event, identifier, state)
    try:
        listener.wait_listening()
        yield listener
    finally:
        listener.stop()


def canonical(request: dict[str, str]) -> dict[str, str]:
    return {**request, **{k: v for k, v in CANONICAL.items() if k in request}}


# -- pyaviso 2 posts, everyone else sees it -----------------------------------------------------------
@pytest.mark.parametrize(("event", "fields"), [("mars", MARS), ("dissemination", DISS)])
def test_pyaviso2_command_notify_releases_our_wait(serve_url: str, tmp_path: Path, store: Store, unique_date: str,
                                                   event: str, fields: dict[str, str]) -> None:
    request = {**fields, "date": unique_date, "step": "12"}
    done = aviso2(serve_url, tmp_path, "notify", pairs(event, request) + ',data="file:///data/x.grib"')
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "success" and answer["request_id"]

    [notification] = store.wait(event, request, timeout=10)

    assert notification.location == "file:///data/x.grib"
    assert notification.request == {**canonical(request), "step": "12"}


def test_pyaviso2_api_notify_seen_alike_by_wait_sensor_and_pyaviso1(
        serve_url: str, etcd_url: str, tmp_path: Path, store: Store, unique_date: str,
        aviso_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    request = {**MARS, "date": unique_date, "step": "48"}
    location = "file:///data/api.grib"
    pyaviso1 = subprocess.Popen(_pyaviso1_listen(aviso_home, request), env=_pyaviso1_env(aviso_home), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        seen_by_pyaviso1 = _notify_until_pyaviso1_prints(serve_url, tmp_path, pyaviso1, request, location)
    finally:
        pyaviso1.terminate()
        pyaviso1.wait(timeout=20)

    [waited] = store.wait("mars", request, timeout=10)
    sensed = _sensor_poke(etcd_url, request, monkeypatch)

    expected = canonical(request)
    assert waited.location == location and waited.request == expected
    assert sensed["location"] == location and sensed["request"] == expected
    assert seen_by_pyaviso1["location"] == location
    assert seen_by_pyaviso1["request"] == store.schema("mars").parse_key(store.request("mars", request).keys()[0])


def _pyaviso1_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


def _pyaviso1_listen(home: Path, request: dict[str, str]) -> list[str]:
    listener = listener_file(home, "mars", request)
    return [str(ROOT / ".venv-pyaviso" / "bin" / "aviso"), "listen", str(listener), "--now"]


def _notify_until_pyaviso1_prints(url: str, home: Path, pyaviso1: subprocess.Popen[str], request: dict[str, str],
                                  location: str) -> dict[str, Any]:
    """Post through pyaviso 2's API once a second (pyaviso 1.0.2 polls) until its echo prints it; 40 s at most."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(pyaviso1.stdout.readline, "")),  # type: ignore[union-attr]
                     daemon=True).start()
    for _ in range(40):
        answer = python2(url, home, NOTIFY_WITH_API, "mars", json.dumps(request), location)
        assert answer["status"] == "success"
        time.sleep(1.0)
        found = [d for d in json_objects("".join(lines)) if d.get("event") == "mars"]
        if found:
            return found[0]
    raise AssertionError(f"pyaviso 1.0.2 never printed the notification; its output:\n{''.join(lines)[-3000:]}")


def _sensor_poke(etcd_url: str, request: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One poke of a real AvisoSensor on the same etcd: what it pushes to XCom for the notification."""
    host, port = etcd_url.split("//", 1)[1].rsplit(":", 1)
    connection = {"conn_type": "aviso", "host": host, "port": int(port)}
    monkeypatch.setenv("AIRFLOW_CONN_AVISO_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    if "AIRFLOW_HOME" not in os.environ:
        monkeypatch.setenv("AIRFLOW_HOME", str(Path(os.environ["AVISO_WORKFLOWS_STATE_DIR"]).parent / "airflow"))
    from airflow.sdk import DAG

    from aviso_workflows.airflow import AvisoSensor

    with DAG("aviso_pyaviso2", schedule=None):
        sensor = AvisoSensor(task_id="wait", event="mars", request=request)
    result = sensor.poke({"dag_run": SimpleNamespace(run_after=dt.datetime.now(dt.UTC))})
    assert result.is_done, "the sensor did not find pyaviso 2's notification"
    [notification] = result.xcom_value
    return dict(notification)


# -- others post, pyaviso 2 listens and replays ---------------------------------------------------------
def test_our_notify_and_pyaviso1_notify_reach_pyaviso2_listen(serve_url: str, tmp_path: Path, store: Store,
                                                               unique_date: str, aviso_home: Path) -> None:  # noqa: F811
    request = {**MARS, "date": unique_date}
    with listening(serve_url, tmp_path, "mars", {"class": "od", "date": unique_date},
                   tmp_path / "state.json") as listener:
        store.notify("mars", {**request, "step": 0}, location="file:///data/ours.grib")
        posted = aviso(aviso_home, "notify", pairs("mars", {**request, "step": "6", "location": "file:///data/1.grib"}))
        assert posted.returncode == 0, posted.stderr
        first, second = listener.wait_for(2)

    assert first["event_type"] == "mars" and first["identifier"] == {**canonical(request), "step": "0"}
    assert first["payload"] == "file:///data/ours.grib"
    assert second["identifier"] == {**canonical(request), "step": "6"} and second["payload"] == "file:///data/1.grib"
    assert first["sequence"] < second["sequence"]


def test_pyaviso2_replays_from_a_date(serve_url: str, tmp_path: Path, store: Store, unique_date: str,
                                      aviso_home: Path) -> None:  # noqa: F811
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    request = {**MARS, "date": unique_date}
    store.notify("mars", {**request, "step": 0}, location="file:///data/0.grib")
    store.notify("mars", {**request, "step": 6}, location="file:///data/6.grib")
    posted = aviso(aviso_home, "notify", pairs("mars", {**request, "step": "12", "location": "file:///data/12.grib"}))
    assert posted.returncode == 0, posted.stderr
    identifier = {"class": "od", "date": unique_date}
    since = before.strftime("%Y-%m-%dT%H:%M:%SZ")

    replayed = aviso2(serve_url, tmp_path, "replay", "--json", "--from", since, "--event", "mars",
                      *(arg for k, v in identifier.items() for arg in ("--identifier", f"{k}={v}")))
    through_api = python2(serve_url, tmp_path, REPLAY_WITH_API, "mars", json.dumps(identifier), since)

    assert replayed.returncode == 0, replayed.stderr
    printed = [json.loads(line) for line in replayed.stdout.splitlines() if line.startswith("{")]
    for found in (printed, through_api):
        assert [(n["identifier"]["step"], n["payload"]) for n in found] == [
            ("0", "file:///data/0.grib"), ("6", "file:///data/6.grib"), ("12", "file:///data/12.grib")]
        assert [n["sequence"] for n in found] == sorted(n["sequence"] for n in found)


def test_pyaviso2_listener_resumes_across_restarts_of_serve_and_itself(etcd_url: str, tmp_path: Path,
                                                                       store: Store, unique_date: str) -> None:
    """A live listener outlives a restart of serve; stopped and started again, it goes on from its state file."""
    request = {**MARS, "date": unique_date}
    identifier = {"class": "od", "date": unique_date}
    port, state, log = server.free_port(), tmp_path / "state.json", tmp_path / "serve.log"
    posted: list[str] = []

    def post(step: int) -> None:
        store.notify("mars", {**request, "step": step}, location=f"file:///data/{step}.grib")
        posted.append(str(step))

    with running_serve(etcd_url, port, log) as url:
        listener = Listener(url, tmp_path, "mars", identifier, state)
        listener.wait_listening()
        post(0)
        listener.wait_for(1)
    post(6)  # while serve is down
    with running_serve(etcd_url, port, log):
        post(12)
        listener.wait_for(3)  # it reconnected after the last sequence it had
        listener.stop()
        first_run = listener.notifications()
        post(18)  # while the listener is stopped
        again = Listener(url, tmp_path, "mars", identifier, state)
        try:
            again.wait_for(1)
            post(24)
            again.wait_for(2)
            post(30)  # the stream is in order: anything repeated before this post has come when it does
            again.wait_for(3)
        finally:
            again.stop()
        second_run = again.notifications()

    steps = [n["identifier"]["step"] for n in first_run + second_run]
    assert steps == posted, f"lost or repeated: {steps} (posted {posted})"
    sequences = [n["sequence"] for n in first_run + second_run]
    assert sequences == sorted(set(sequences))
    saved = json.loads(state.read_text())["checkpoints"]
    assert [c["last_committed_sequence"] for c in saved.values()] == [sequences[-1]]


# -- replay windows, schema and admin (aviso-server's routes, src/routes/{replay,schema,admin}.rs, 0.7.1) ------
def _replay_printed(url: str, home: Path, identifier: dict[str, str], *window: str,
                    event: str = "mars") -> list[dict[str, Any]]:
    done = aviso2(url, home, "replay", "--json", *window, "--event", event,
                  *(arg for k, v in identifier.items() for arg in ("--identifier", f"{k}={v}")))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _times(url: str, identifier: dict[str, str]) -> list[str]:
    """The CloudEvent times of the mars notifications matching ``identifier`` (pyaviso 2 prints none)."""
    body = {"event_type": "mars", "identifier": identifier, "from_id": "1"}
    with httpx.stream("POST", f"{url}/api/v1/replay", json=body, timeout=20) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:") and "specversion" in line]
    return [json.loads(line[5:])["time"] for line in lines]


def test_pyaviso2_replays_from_and_until_an_id_and_a_date(serve_url: str, tmp_path: Path, store: Store,
                                                          unique_date: str) -> None:
    """pyaviso 2.4.2's ``replay --until`` sends ``to_id``/``to_date`` (newer aviso-servers' fields, not in 0.7.1);
    serve ends the replay there, inclusive."""
    request = {**MARS, "date": unique_date}
    for step in (0, 6, 12):
        store.notify("mars", {**request, "step": step}, location=f"file:///data/{step}.grib")
    identifier = {"class": "od", "date": unique_date}
    every = _replay_printed(serve_url, tmp_path, identifier, "--from", "1")
    assert [n["identifier"]["step"] for n in every] == ["0", "6", "12"]
    second = every[1]["sequence"]

    # pyaviso 2's --from N starts after N (from_id N + 1)
    by_id = _replay_printed(serve_url, tmp_path, identifier, "--from", str(every[0]["sequence"] - 1), "--until",
                            str(second))
    by_date = _replay_printed(serve_url, tmp_path, identifier, "--from", "1", "--until",
                              _times(serve_url, identifier)[1])

    assert [n["sequence"] for n in by_id] == [every[0]["sequence"], second]
    assert [n["identifier"]["step"] for n in by_date] == ["0", "6"]


def test_pyaviso2_schema_list_and_get(serve_url: str, tmp_path: Path) -> None:
    listed = aviso2(serve_url, tmp_path, "schema", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(line)["event_type"] for line in listed.stdout.splitlines() if line.startswith("{")) == \
        ["dissemination", "mars"]
    got = aviso2(serve_url, tmp_path, "schema", "get", "dissemination", "--json")
    assert got.returncode == 0, got.stderr
    handlers = json.loads(got.stdout)["schema"]["identifier"]
    assert handlers["step"]["type"] == "IntHandler" and handlers["destination"]["required"] is True


def test_pyaviso2_admin_delete_wipe_stream_and_wipe_all(tmp_path: Path) -> None:
    """``aviso admin`` (pyaviso 2.4.2) against serve's ``/api/v1/admin/...`` routes, on an etcd of its own (a
    wipe deletes every key of an event). A deleted or wiped notification is left out of later replays."""
    from etcd_helpers import running_etcd

    with running_etcd(tmp_path / "etcd") as etcd, \
            running_serve(etcd.client_url, server.free_port(), tmp_path / "serve.log") as url:
        store = Store([etcd.client_url])
        request = {**MARS, "date": "20300101"}
        for step in (0, 6, 12):
            store.notify("mars", {**request, "step": step}, location=f"file:///{step}")
        store.notify("dissemination", {**DISS, "date": "20300101", "step": 0}, location="file:///d")
        identifier = {"class": "od", "date": "20300101"}
        first, second, third = _replay_printed(url, tmp_path, identifier, "--from", "1")

        deleted = aviso2(url, tmp_path, "admin", "delete", f"mars@{second['sequence']}", "--yes")
        missing = aviso2(url, tmp_path, "admin", "delete", f"mars@{second['sequence']}", "--yes")
        after_delete = _replay_printed(url, tmp_path, identifier, "--from", "1")
        wiped = aviso2(url, tmp_path, "admin", "wipe-stream", "mars", "--yes")
        after_wipe = _replay_printed(url, tmp_path, identifier, "--from", "1")
        diss_left = store.get("dissemination", {"destination": "COM", "date": "20300101"})
        everything = aviso2(url, tmp_path, "admin", "wipe-all", "--yes")
        diss_after = store.get("dissemination", {"destination": "COM", "date": "20300101"})

    assert deleted.returncode == 0, deleted.stderr
    assert missing.returncode != 0 and "404" in missing.stderr + missing.stdout
    assert [n["sequence"] for n in after_delete] == [first["sequence"], third["sequence"]]
    assert wiped.returncode == 0 and after_wipe == [], wiped.stderr
    assert len(diss_left) == 1, "a stream's wipe leaves the other events"
    assert everything.returncode == 0 and diss_after == [], everything.stderr


AREA_CONFIG = """
notification_schema:
  area:
    payload: {required: true}
    topic: {base: "area", key_order: ["date", "time"]}
    identifier:
      date: {type: DateHandler, canonical_format: "%Y%m%d", required: false}
      time: {type: TimeHandler, required: false}
      polygon: {type: PolygonHandler, required: true}
"""
SQUARE = "(10.0,10.0,10.0,20.0,20.0,20.0,20.0,10.0,10.0,10.0)"
FAR = "(50.0,50.0,50.0,60.0,60.0,60.0,50.0,50.0)"


def test_pyaviso2_against_serve_with_an_aviso_server_configuration(etcd_url: str, tmp_path: Path,
                                                                    unique_date: str) -> None:
    """``serve --aviso-server-config``: pyaviso 2 posts polygon events with JSON payloads and replays them with a
    point filter; the payload comes back as posted, the time as aviso-server writes it (``1200``)."""
    config = tmp_path / "config.yaml"
    config.write_text(AREA_CONFIG)
    with running_serve(etcd_url, server.free_port(), tmp_path / "serve.log", "--aviso-server-config",
                       str(config)) as url:
        for polygon, files in ((SQUARE, ["a.grib"]), (FAR, ["b.grib"])):
            done = aviso2(url, tmp_path, "notify", f"event=area,date={unique_date},time=12,data="
                          + json.dumps({"files": files}, separators=(",", ":")), "--identifier", f"polygon={polygon}")
            assert done.returncode == 0, done.stderr
        refused = aviso2(url, tmp_path, "notify", f"event=area,date={unique_date},time=12,data=\"x\"")
        printed = _replay_printed(url, tmp_path, {"date": unique_date, "point": "15,15"}, "--from", "1", event="area")

    assert refused.returncode != 0 and "Required field 'polygon' missing" in refused.stderr + refused.stdout
    assert [(n["identifier"], n["payload"]) for n in printed] == [
        ({"date": unique_date, "time": "1200", "polygon": SQUARE}, {"files": ["a.grib"]})]

