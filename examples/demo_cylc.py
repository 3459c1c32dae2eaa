"""The Cylc 8 demo of ``make demo-cylc``: a daily workflow released by notifications, catch-up then push.

1. starts the embedded etcd on a free loopback port and posts the forecasts of three of the last five days;
2. installs suites/cylc/daily (cycle points: four days ago to today) in a temporary ~/cylc-run and plays it,
   with the listener of suites/cylc/daily/listeners.yaml running beside it;
3. the three posted days run at once (the xtrigger's first read); the two others run the moment their
   forecasts are posted (the listener releases their xtrigger), each job printing the locations it got.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aviso_workflows import Store, server  # noqa: E402

CYLC_BIN = ROOT / ".venv-cylc" / "bin"
FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper", "step": "0/6/12"}
START = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - START:6.2f}s  {who:<9} {text}", flush=True)


def post(store: Store, day: str) -> None:
    store.notify("mars", {**FORECAST, "date": day}, location=f"file:///data/od/oper/{day}/00.grib")
    say("producer", f"posted steps 0/6/12 of {day}")


def wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    if not os.access(CYLC_BIN / "cylc", os.X_OK):
        print(f"{CYLC_BIN / 'cylc'} is missing: run make setup", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="aviso-demo-cylc-"))
    info = server.start(work / "etcd", port=server.free_port())
    home = work / "home"
    (home / ".cylc" / "flow").mkdir(parents=True)
    (home / ".cylc" / "flow" / "global.cylc").write_text(
        f"[platforms]\n    [[localhost]]\n        cylc path = {CYLC_BIN}\n")
    env = {**os.environ, "HOME": str(home), "PATH": f"{CYLC_BIN}{os.pathsep}{os.environ['PATH']}",
           "AVISO_WORKFLOWS_ENDPOINTS": info.client_url, "AVISO_WORKFLOWS_STATE_DIR": str(work / "state")}
    print(f"== embedded etcd at {info.client_url}; cylc-run in {home / 'cylc-run'}")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        store = Store([info.client_url])
        today = dt.datetime.now(dt.UTC).date()
        days = [(today - dt.timedelta(days=n)).strftime("%Y%m%d") for n in range(4, -1, -1)]
        print("\n== 1. the forecasts of three of the last five days are posted before the workflow starts")
        for day in (days[0], days[1], days[3]):
            post(store, day)
        print("\n== 2. cylc install, cylc play, and the listener that pushes releases")
        subprocess.run([str(CYLC_BIN / "cylc"), "install", str(ROOT / "suites" / "cylc" / "daily"),
                        "--workflow-name=daily", "--run-name=demo"], env=env, check=True, capture_output=True)
        share = home / "cylc-run" / "daily" / "demo" / "share"
        log = open(work / "listener.log", "w")
        processes.append(subprocess.Popen([str(Path(sys.executable).parent / "aviso-workflows"), "listen",
                                           str(ROOT / "suites" / "cylc" / "daily" / "listeners.yaml")],
                                          env=env, stdout=log, stderr=log, start_new_session=True))
        play = subprocess.Popen([str(CYLC_BIN / "cylc"), "play", "--no-detach", "daily/demo"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        processes.append(play)
        for day in (days[0], days[1], days[3]):
            if wait_for(share / f"process-{day}T0000Z.env", 90):
                say("cylc", f"{day} ran at once (catch-up)")
        print("\n== 3. the other two days run the moment their forecasts are posted")
        for day in (days[2], days[4]):
            time.sleep(2)
            post(store, day)
            began = time.monotonic()
            if wait_for(share / f"process-{day}T0000Z.env", 30):
                say("cylc", f"{day} ran {time.monotonic() - began:.2f} s after the post")
        play.wait(timeout=120)
        print("\n== what the jobs got (forecast_* variables):")
        for day in days:
            lines = (share / f"process-{day}T0000Z.env").read_text().splitlines()
            print(f"   {day}: " + ", ".join(line for line in lines if "location_0" in line or "count" in line))
    finally:
        for process in processes:
            stop(process)
        server.stop(work / "etcd")
        shutil.rmtree(work, ignore_errors=True)
        print("\n== stopped etcd, the workflow and the listener; removed", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
