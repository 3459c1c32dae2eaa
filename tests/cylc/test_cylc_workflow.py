"""A real Cylc 8 workflow released by the aviso xtrigger (catch-up) and by the cylc action (push), on each backend:
a real etcd, then the aviso-server 0.7.1 double."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backend_stores import OnBackend, aviso_double_fixture, on_backend_fixture  # noqa: F401 - fixtures
from cylc_helpers import CYLC, cylc, running, wait_for
from waiting import eventually

from aviso_workflows import Store

FORECAST = {"class": "rd", "expver": "0077", "domain": "g", "stream": "oper", "time": 0, "step": "0/6"}
DAYS = ["20261101", "20261102", "20261103", "20261104", "20261105"]
POSTED_BEFORE = ["20261101", "20261102", "20261104"]
#: A location a shell would run or change if it reached a job script as it is.
HOSTILE = 'file:///data/$(touch INJECTED)/`touch INJECTED`/"x"/\\n'
#: The longest time from a post to the start of the job it releases: far below the xtrigger's 5 min interval,
#: so only the push can release it. (Measured here: 1.7-2.1 s, most of it Cylc's 1 s main loop and the job's
#: submission; the figure is printed, not asserted, as a speed figure depends on the machine.)
RELEASE_SECONDS = 10.0
ARGS = ", ".join(f"{name}={value}" for name, value in FORECAST.items() if name not in ("time",))

FLOW = textwrap.dedent(f"""\
    [scheduler]
        allow implicit tasks = False
        [[events]]
            stall timeout = PT2M
            abort on stall timeout = True
    [scheduling]
        initial cycle point = {DAYS[0]}T00Z
        final cycle point = {DAYS[-1]}T00Z
        runahead limit = P5
        [[xtriggers]]
            # a long interval: the first call releases what was posted before; the push releases the rest
            data = aviso(mars, date=%(point)s, {ARGS}):PT5M
        [[graph]]
            P1D = "@data => process"
    [runtime]
        [[process]]
            script = '''
                date +%s.%N > "$CYLC_WORKFLOW_SHARE_DIR/start-$CYLC_TASK_CYCLE_POINT"
                env | grep '^data_' | sort > "$CYLC_WORKFLOW_SHARE_DIR/env-$CYLC_TASK_CYCLE_POINT"
            '''
    """)


def location(day: str, step: int) -> str:
    if day not in POSTED_BEFORE:
        return f"file:///data/{day}.grib"
    return HOSTILE if (day, step) == ("20261102", 6) else f"file:///data/{day}/step{step}.grib"


def post(store: Store, day: str) -> float:
    """Post both steps of one day (one at a time before the run, in one transaction after); the time just before."""
    began = time.time()
    if day in POSTED_BEFORE:
        for step in (0, 6):
            store.notify("mars", {**FORECAST, "date": day, "step": step}, location=location(day, step))
    else:
        store.notify("mars", {**FORECAST, "date": day, "step": "0/6"}, location=location(day, 0))
    return began


def wait_until_done(run_dir: Path, points: list[str], seconds: float) -> None:
    """Until Cylc has recorded the jobs of ``points`` as succeeded (so the next release meets an idle scheduler)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with sqlite3.connect(run_dir / "log" / "db", timeout=5) as db:
            done = {point for point, in db.execute("SELECT cycle FROM task_states WHERE status = 'succeeded'")}
        if done >= set(points):
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs of {points} did not succeed within {seconds} s")


def listener_file(path: Path, workflow: str) -> Path:
    request = ", ".join(f"{k}: '{v}'" for k, v in FORECAST.items() if k != "step")
    path.write_text(textwrap.dedent(f"""\
        listeners:
          - event: mars
            request: {{{request}, step: [0, 6]}}
            triggers:
              - type: cylc
                workflow: {workflow}
                task: process
                xtrigger: data
                cylc: {CYLC}
                request: {{event: mars, {request}, step: 0/6}}
        """))
    return path


def job_start_times(run_dir: Path) -> dict[str, str]:
    """When each job started, as Cylc recorded it (whole seconds)."""
    with sqlite3.connect(run_dir / "log" / "db") as db:
        return {point: started for point, started in
                db.execute("SELECT cycle, time_run FROM task_jobs WHERE name = 'process'")}


@pytest.mark.slow
def test_catch_up_and_push_release_a_cylc_workflow(cylc_env: dict[str, str], on_backend: OnBackend,
                                                   tmp_path: Path) -> None:
    store = on_backend.store
    cylc_env = {**cylc_env, "AVISO_WORKFLOWS_ENDPOINTS": on_backend.endpoint}
    source = tmp_path / "src" / "released"
    source.mkdir(parents=True)
    (source / "flow.cylc").write_text(FLOW)
    for day in POSTED_BEFORE:
        post(store, day)
    checked = cylc(cylc_env, "validate", str(source))
    assert checked.returncode == 0, checked.stderr
    installed = cylc(cylc_env, "install", str(source), "--run-name=live")
    assert installed.returncode == 0, installed.stderr
    workflow = "released/live"
    run_dir = Path(cylc_env["HOME"]) / "cylc-run" / "released" / "live"
    share = run_dir / "share"
    listen = [str(Path(sys.executable).parent / "aviso-workflows"), "listen",
              str(listener_file(tmp_path / "listeners.yaml", workflow)), "--cursor", "push", "-v"]
    with running(listen, cylc_env, tmp_path / "listener.log") as listener, \
            running([str(CYLC), "play", "--no-detach", workflow], cylc_env, tmp_path / "play.log") as play:
        # a new cursor is saved at the listener's start position: what is posted from then on reaches it
        cursor = Path(cylc_env["AVISO_WORKFLOWS_STATE_DIR"]) / "cursors" / "push.json"
        eventually(lambda: listener.poll() is None and cursor.exists() or listener.poll() is not None,
                   what="the push listener saved its start", timeout=60)
        assert listener.poll() is None, (tmp_path / "listener.log").read_text()[-3000:]
        for day in POSTED_BEFORE:  # released by the xtrigger's first call, all at once
            wait_for(share / f"start-{day}T0000Z", 60, play)
        wait_until_done(run_dir, [f"{day}T0000Z" for day in POSTED_BEFORE], 30)
        assert not (share / "start-20261103T0000Z").exists() and not (share / "start-20261105T0000Z").exists()
        latencies = {}
        for day in ("20261103", "20261105"):
            posted = post(store, day)
            wait_for(share / f"start-{day}T0000Z", 20, listener)
            latencies[day] = float((share / f"start-{day}T0000Z").read_text()) - posted
            wait_until_done(run_dir, [f"{day}T0000Z"], 30)
        play.wait(timeout=60)  # the final cycle point done, the scheduler stops by itself
        assert play.returncode == 0, (tmp_path / "play.log").read_text()[-3000:]
    print(f"from post to job start (push): {', '.join(f'{d}: {s:.2f} s' for d, s in latencies.items())}")
    released = [line for line in (tmp_path / "listener.log").read_text().splitlines() if "cylc set " in line]
    for day in ("20261103", "20261105"):  # both steps in one transaction: one release, with both locations
        lines = [line for line in released if f"cylc set {workflow}//{day}T0000Z/process --pre=xtrigger/data" in line]
        assert len(lines) == 1, released
        assert all(name in lines[0] for name in ("data_location_0", "data_location_6", "data_keys", "data_count",
                                                 f"date={day}", "revision")), lines[0]
    assert len(released) == 2, released
    assert all(seconds < RELEASE_SECONDS for seconds in latencies.values()), latencies
    recorded = job_start_times(run_dir)
    assert sorted(recorded) == [f"{day}T0000Z" for day in DAYS]
    for day in DAYS:
        environment = dict(line.split("=", 1) for line in (share / f"env-{day}T0000Z").read_text().splitlines())
        assert environment["data_location_0"] == location(day, 0)
        assert environment["data_location_6"] == location(day, 6)
        assert environment["data_count"] == "2"
        assert environment["data_keys"].split() == [f"/ec/mars/date={day},class=rd,expver=0077,domain=g,"
                                                    f"time=00,stream=oper,step={step}" for step in (0, 6)]
    assert not list(run_dir.rglob("INJECTED")), "a location ran in a job's shell"


def test_a_typo_in_the_request_fails_cylc_validate(cylc_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "typo"
    source.mkdir()
    (source / "flow.cylc").write_text(FLOW.replace("stream=oper", "stream=opre"))
    checked = cylc(cylc_env, "validate", str(source))
    assert checked.returncode != 0
    assert "stream: 'opre' is not valid" in checked.stderr
    (source / "flow.cylc").write_text(FLOW.replace("class=rd", "clas=rd"))
    checked = cylc(cylc_env, "validate", str(source))
    assert checked.returncode != 0 and "clas: 'rd' is not valid" in checked.stderr
    assert "did you mean class?" in checked.stderr


def test_a_misspelled_option_fails_cylc_validate_naming_it_and_the_valid_ones(cylc_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    source = tmp_path / "option"
    source.mkdir()
    (source / "flow.cylc").write_text(FLOW.replace("):PT5M", ", tiemout=30):PT5M"))
    assert "step=0/6, tiemout=30):PT5M" in (source / "flow.cylc").read_text()
    checked = cylc(cylc_env, "validate", str(source))
    assert checked.returncode != 0
    assert "tiemout: 30 is not valid; not an argument of aviso(): did you mean timeout?" in checked.stderr, \
        checked.stderr
    assert "the options event, date, mode, timeout, endpoint, sequential" in checked.stderr
    assert "unknown field" not in checked.stderr
