"""Put a pyflow suite on a server: write its scripts, load (replace) the definition, begin it."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ENDPOINTS_VARIABLE
from .names import check_suite
from .scripts import endpoint_arguments


def play(suite: Any, host: str, port: int | str, *, begin: bool = True) -> None:
    """Check ``suite``, deploy its scripts to its ``files`` directory, replace it on ``host:port`` and begin it."""
    import ecflow

    suite.check_definition()
    check_suite(suite)  # two tasks deployed to one file: refused naming both, before anything is written
    suite.deploy_suite()
    suite.replace_on_server(host, str(port))
    if begin:
        ecflow.Client(host, str(port)).begin_suite(suite.name)


def suite_arguments(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every example suite takes: ``--host``, ``--port``, ``--home``, ``--endpoint``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="localhost", help="ecflow_server host (default localhost)")
    parser.add_argument("--port", type=int, required=True, help="ecflow_server port")
    parser.add_argument("--home", help="directory for scripts and job output (default ./ecflow-home/<suite>)")
    parser.add_argument("--endpoint", action="append",
                        help=f"etcd endpoint for the jobs (default ${ENDPOINTS_VARIABLE})")
    parser.add_argument("--date", help="forecast date YYYYMMDD (default today)")
    parser.add_argument("--no-begin", action="store_true", help="load the suite but do not begin it")
    args = parser.parse_args(argv)
    if args.endpoint:
        endpoint_arguments(args.endpoint)  # refuse bad URLs before anything is written
    return args


def run_daily_suite(name: str, description: str, build: Callable[[Path, str, Sequence[str] | None], Any],
                    argv: Sequence[str] | None = None) -> None:
    """The command line of a one-date example suite: build it for ``--date`` and play it on the server."""
    args = suite_arguments(description, argv)
    home = Path(args.home or Path.cwd() / "ecflow-home" / name).resolve()
    suite = build(home, args.date or dt.date.today().strftime("%Y%m%d"), args.endpoint)
    play(suite, args.host, args.port, begin=not args.no_begin)
    print(f"suite /{suite.name} loaded on {args.host}:{args.port}; scripts in {home / 'files'}")
