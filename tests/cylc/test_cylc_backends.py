"""The aviso xtrigger in a real Cylc 8 scheduler over each backend: etcd, then the aviso-server 0.7.1 double.

The workflow has two cycle points. The first is posted before the scheduler starts: the xtrigger's first call
releases it (a catch-up). The second is posted, one step at a time, while the scheduler runs: a later call of
the xtrigger (every 2 s here) releases it once both of its keys exist, with both locations.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

from backend_stores import OnBackend, aviso_double_fixture, on_backend_fixture  # noqa: F401 - fixtures
from cylc_helpers import CYLC, cylc, running, wait_for

#: Fields of this module's posts (its own expver: no other test of the session's etcd reads or writes them).
FORECAST = {"class": "rd", "expver": "0078", "domain": "g", "stream": "oper", "time": 0}
STEPS = (0, 6)


def flow(first: str, last: str) -> str:
    """Two daily points; each job writes the xtrigger's results (``data_*``) to a file, renamed into place."""
    arguments = ", ".join(f"{name}={value}" for name, value in FORECAST.items() if name != "time")
    return textwrap.dedent(f"""\
        [scheduler]
            allow implicit tasks = False
            [[events]]
                stall timeout = PT1M
                abort on stall timeout = True
        [scheduling]
            initial cycle point = {first}T00Z
            final cycle point = {last}T00Z
            runahead limit = P2
            [[xtriggers]]
                data = aviso(mars, date=%(point)s, {arguments}, step=0/6):PT2S
            [[graph]]
                P1D = "@data => process"
        [runtime]
            [[process]]
                script = '''
                    out="$CYLC_WORKFLOW_SHARE_DIR/env-$CYLC_TASK_CYCLE_POINT"
                    env | grep '^data_' | sort > "$out.part" && mv "$out.part" "$out"
                '''
        """)


def location(day: str, step: int) -> str:
    return f"file:///data/{day}/step{step}.grib"


def post(on_backend: OnBackend, day: str, step: int) -> None:
    on_backend.store.notify("mars", {**FORECAST, "date": day, "step": step}, location=location(day, step))


def test_the_xtrigger_releases_a_caught_up_point_and_a_point_posted_while_it_runs(
        cylc_env: dict[str, str], on_backend: OnBackend, unique_date: str, tmp_path: Path) -> None:
    days = [unique_date, (dt.datetime.strptime(unique_date, "%Y%m%d") + dt.timedelta(days=1)).strftime("%Y%m%d")]
    env = {**cylc_env, "AVISO_WORKFLOWS_ENDPOINTS": on_backend.endpoint}
    source = tmp_path / "src" / "xtrigger"
    source.mkdir(parents=True)
    (source / "flow.cylc").write_text(flow(*days))
    for step in STEPS:
        post(on_backend, days[0], step)
    installed = cylc(env, "install", str(source), "--run-name=run")
    assert installed.returncode == 0, installed.stderr
    share = Path(env["HOME"]) / "cylc-run" / "xtrigger" / "run" / "share"
    with running([str(CYLC), "play", "--no-detach", "xtrigger/run"], env, tmp_path / "play.log") as play:
        wait_for(share / f"env-{days[0]}T0000Z", 60, play)  # released by the first call
        assert not (share / f"env-{days[1]}T0000Z").exists(), "released before anything was posted for it"
        for step in STEPS:
            post(on_backend, days[1], step)
        wait_for(share / f"env-{days[1]}T0000Z", 60, play)  # released by a later call
        play.wait(timeout=60)  # the final cycle point done, the scheduler stops by itself
        assert play.returncode == 0, (tmp_path / "play.log").read_text()[-3000:]

    for day in days:
        environment = dict(line.split("=", 1) for line in (share / f"env-{day}T0000Z").read_text().splitlines())
        assert environment["data_count"] == "2", environment
        assert [environment[f"data_location_{step}"] for step in STEPS] == [location(day, s) for s in STEPS]
