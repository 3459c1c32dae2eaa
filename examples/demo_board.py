"""The board part of ``make demo``: ``serve`` in the demo's process, its board's URL, and keeping it up after.

The board (``/board``) shows today's and yesterday's forecasts as the demo posts them; open its URL while
the demo runs. ``make demo KEEP=600`` (or ``DEMO_KEEP_BOARD=600``) keeps etcd and the board up for that many
seconds after the demo (at most an hour; Ctrl-C ends it sooner).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

KEEP_VARIABLE = "DEMO_KEEP_BOARD"
MAX_KEEP_SECONDS = 3600
QUERY = "class=od&stream=oper&step=0/to/24/by/6&days=2"


def keep_seconds() -> int:
    """Seconds to keep the board up after the demo (``$DEMO_KEEP_BOARD``, 0 to 3600)."""
    text = os.environ.get(KEEP_VARIABLE, "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise SystemExit(f"{KEEP_VARIABLE}={text!r}: expected a number of seconds from 0 to {MAX_KEEP_SECONDS}")
    return min(int(text), MAX_KEEP_SECONDS)


def start_board(store: Any) -> tuple[str, Callable[[], None]]:
    """``serve`` on a free loopback port in a thread; the board's URL and a function that stops it."""
    from aviso_workflows import server
    from aviso_workflows.serve.app import ServeOptions
    from aviso_workflows.serve.cli import start_serve

    port = server.free_port()
    base = f"http://127.0.0.1:{port}"
    started = start_serve(store, ServeOptions(base_url=base), "127.0.0.1", port, timeout=20)
    return f"{base}/board?{QUERY}", lambda: started.stop(timeout=15)


def keep(url: str, seconds: int) -> None:
    """Keep the board up for ``seconds`` (Ctrl-C ends it sooner)."""
    if seconds <= 0:
        print("   (the board closes with the demo; make demo KEEP=600 keeps it up for 10 minutes after)")
        return
    print(f"\n== the board stays up for {seconds} s at {url}  (Ctrl-C to stop)", flush=True)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
