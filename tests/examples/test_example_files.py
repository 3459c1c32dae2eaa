"""Every file of examples/, dags/ and suites/ runs against real parts, as its own header says to run it.

- dags/: parsed by a DagBag and serialized as Airflow's dag processor does;
- suites/*.py: their command line (``--no-begin``) deploys the scripts and loads the suite on an ecflow_server;
- suites/cylc/daily: ``cylc validate`` and ``cylc lint``; its listener file loads and names its ``cylc set``;
- examples/listeners.yaml: a real notification runs its triggers; examples/bridge.yaml's change a loaded suite;
- examples/demo.py: ``--core-only`` runs (about 4 s: its own etcd, a waiter released live and one at once). The
  full ``make demo`` (about a minute, mostly Airflow starting) is not run here; its parts are: demo_ecflow's suite
  is deployed and loaded, demo_airflow, demo_aviso2, demo_board and demo_cylc import and have their entry point
  (each runs in ``make demo`` / ``make demo-cylc``; the Cylc and Aviso 2 stories are tested in tests/cylc and
  tests/interop).

A file that none of these cases covers fails the first test, so a new example cannot go untested unnoticed.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from runners import ROOT, assert_loaded, deploy_and_load, parse_and_serialize_dags

from aviso_workflows import Store
from aviso_workflows.ecflow import LoopbackHost
from aviso_workflows.ecflow.server import EcflowServer
from aviso_workflows.listeners import Dispatcher, dispatch, load_listener_file

CYLC = ROOT / ".venv-cylc" / "bin" / "cylc"
DAGS = sorted((ROOT / "dags").glob("*.py"))
SUITES = ["producer", "consumer", "catchup"]
IMPORTED_DEMOS = {"demo_airflow": "run", "demo_aviso2": "run", "demo_board": "start_board", "demo_cylc": "main"}
FORECAST = {"class": "od", "expver": 1, "domain": "g", "stream": "oper", "time": 0}


def covered() -> set[Path]:
    """The files the tests below run (or import), relative to the repository."""
    files = {path.relative_to(ROOT) for path in DAGS}
    files |= {Path("suites") / f"{name}.py" for name in SUITES}
    files |= {Path("suites/cylc/daily/flow.cylc"), Path("suites/cylc/daily/listeners.yaml")}
    files |= {Path("examples") / name for name in ("listeners.yaml", "bridge.yaml", "demo.py", "demo_ecflow.py")}
    files |= {Path("examples") / f"{name}.py" for name in IMPORTED_DEMOS}
    return files


def test_every_example_file_is_covered() -> None:
    present = {path.relative_to(ROOT) for folder in ("examples", "dags", "suites")
               for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert present - covered() == set(), "example files that no test runs"
    assert covered() - present == set(), "tests of example files that are gone"


@pytest.mark.parametrize("dag_file", DAGS, ids=[path.stem for path in DAGS])
def test_dag_file_parses_and_serializes(dag_file: Path) -> None:
    assert dag_file.stem in parse_and_serialize_dags(dag_file)


@pytest.mark.parametrize("name", SUITES)
def test_suite_command_deploys_and_loads(name: str, examples_ecflow: EcflowServer, example_env: dict[str, str],
                                         etcd_url: str, tmp_path: Path, unique_date: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "suites" / f"{name}.py"), "--host", "localhost", "--port",
                           str(examples_ecflow.port), "--home", str(tmp_path / name), "--endpoint", etcd_url,
                           "--date", unique_date, "--no-begin"], env=example_env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"suite /{name} loaded" in done.stdout
    assert list((tmp_path / name / "files").glob("*.ecf")), "no scripts deployed"
    assert_loaded(examples_ecflow, name)


def test_cylc_workflow_validates_and_passes_lint(example_env: dict[str, str]) -> None:
    if not CYLC.exists():
        pytest.skip(f"{CYLC} is missing: run make setup")
    source = ROOT / "suites" / "cylc" / "daily"
    for command in (["validate", str(source)], ["lint", str(source)]):
        done = subprocess.run([str(CYLC), *command], env=example_env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, f"cylc {command[0]}: {done.stdout}{done.stderr}"


def _describe_each(store: Store, path: Path, request: dict[str, object], capsys: pytest.CaptureFixture[str]) -> str:
    """Load a listener file and show (dry run) what a posted notification matching ``request`` would do."""
    listeners = load_listener_file(store, path)
    try:
        store.notify("mars", request, location="file:///data/x.grib")
        _, found = store.read(store.request("mars", request))
        assert len(found) == 1
        dispatch(listeners, found[0], dry_run=True)
    finally:
        for listener in listeners:
            for _, action in listener.actions:
                close: Callable[[], None] | None = getattr(action, "close", None)
                if close is not None:
                    close()
    return capsys.readouterr().out


def test_cylc_listener_file_names_its_cylc_set(store: Store, example_env: dict[str, str], unique_date: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shown = _describe_each(store, ROOT / "suites/cylc/daily/listeners.yaml",
                           {**FORECAST, "date": unique_date, "step": 6}, capsys)
    assert f"cylc set daily/demo//{unique_date}T0000Z/process --pre=xtrigger/forecast" in shown


def test_bridge_file_changes_a_suite_on_the_server(store: Store, example_env: dict[str, str], tmp_path: Path,
                                                  examples_ecflow: EcflowServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pyflow as pf

    with pf.Suite("consumer", host=LoopbackHost(), files=str(tmp_path / "files"), home=str(tmp_path),
                  DATA_LOCATION="") as suite:
        with pf.Task("step_6"):
            pf.Event("ready")
        with pf.Task("data"):
            pf.Meter("steps", 0, 24)
            pf.Label("latest", "")
        pf.Task("wait_6")
    deploy_and_load(suite, examples_ecflow)
    monkeypatch.setenv("ECF_HOST", "localhost")
    monkeypatch.setenv("ECF_PORT", str(examples_ecflow.port))  # the file names no server, as its header says
    listeners = load_listener_file(store, ROOT / "examples/bridge.yaml")
    request = {**FORECAST, "date": "20261122", "step": 6}
    store.notify("mars", request, location="file:///data/step6.grib")
    _, found = store.read(store.request("mars", request))
    assert Dispatcher(listeners, transient_tries=1).handle(found[0]) == 0
    client = examples_ecflow.client()
    client.sync_local()
    defs = client.get_defs()
    assert defs.find_abs_node("/consumer/step_6").find_event("ready").value()
    assert defs.find_abs_node("/consumer/data").find_meter("steps").value() == 6
    assert defs.find_abs_node("/consumer/data").find_label("latest").new_value() == \
        "step 6 at file:///data/step6.grib"
    assert defs.find_abs_node("/consumer").find_variable("DATA_LOCATION").value() == "file:///data/step6.grib"
    assert str(defs.find_abs_node("/consumer/wait_6").get_state()) == "complete"


def test_listeners_file_runs_its_triggers_for_a_notification(store: Store, example_env: dict[str, str],
                                                             unique_date: str, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(example_env["HOME"])
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    listeners = load_listener_file(store, ROOT / "examples/listeners.yaml")
    result = store.notify("mars", {**FORECAST, "date": unique_date, "step": 12},
                          location="file:///data/fc_step12.grib")
    _, found = store.read(store.request("mars", {**FORECAST, "date": unique_date, "step": 12}))
    assert len(found) == 1 and found[0].revision == result.revisions[-1]
    assert Dispatcher(listeners, transient_tries=1).handle(found[0]) == 0
    assert (home / "aviso-steps.txt").read_text() == "12 fc_step12.grib\n"
    assert "file:///data/fc_step12.grib" in (home / "aviso" / "mars.log").read_text()


def test_demo_core_runs(example_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--core-only"], env=example_env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "RELEASED with 5 steps" in done.stdout and "released at once" in done.stdout


def test_demo_ecflow_suite_deploys_and_loads(examples_ecflow: EcflowServer, example_env: dict[str, str],
                                             etcd_url: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        demo_ecflow = importlib.import_module("demo_ecflow")
    finally:
        sys.path.remove(str(ROOT / "examples"))
    deploy_and_load(demo_ecflow.build(tmp_path, demo_ecflow.demo_date(), etcd_url), examples_ecflow)


@pytest.mark.parametrize("name", sorted(IMPORTED_DEMOS))
def test_demo_part_imports(name: str, example_env: dict[str, str]) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert callable(getattr(module, IMPORTED_DEMOS[name]))
