"""Daily catch-up suite: each date's family processes the date once its data is available.

    python suites/catchup.py --host localhost --port 3141 [--date 20261122] [--days 5] [--ordered] [--endpoint URL]

Dates whose data was posted long ago complete at once (the wait reads the store first); only dates
still to come wait. The dates are independent families (``/catchup/daily/20261122``): a date whose data
is missing holds back no other, and turns late in ecFlow (late flag, label ``late``) once its analysis is
due, ``LATE_AFTER`` past 00 UTC of its date. ``--ordered`` makes it one RepeatDate family instead, for work
that must go date by date. Runs from ``--date`` minus ``--days - 1`` days to ``--date``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyflow as pf

from aviso_workflows.ecflow import LiteralTask, LoopbackHost, catchup_family
from aviso_workflows.ecflow.deploy import play, suite_arguments

ANALYSIS = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper", "step": 0}
#: When a date's 00 UTC analysis is due, after 00 UTC of its date.
LATE_AFTER = dt.timedelta(hours=6)


def process(day: Any) -> None:
    """One date's work, beside its wait task."""
    LiteralTask("process", script="echo processing the analysis of $YMD").triggers = day.wait.complete


def build(home: Path, start: dt.date, end: dt.date, endpoints: Sequence[str] | None = None,
          name: str = "catchup", timeout: float = 24 * 3600, ordered: bool = False) -> Any:
    """The catch-up suite over ``start``..``end``; scripts and job output go under ``home``."""
    with pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out")) as suite:
        catchup_family("daily", start, end, "mars", ANALYSIS, timeout=timeout, endpoints=endpoints,
                       late_after=LATE_AFTER, ordered=ordered, work=process)
    return suite


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--days", type=int, default=5)
    extra.add_argument("--ordered", action="store_true", help="one RepeatDate family: dates go one after the other")
    known, rest = extra.parse_known_args(argv)
    args = suite_arguments(__doc__.splitlines()[0], rest)
    end = dt.datetime.strptime(args.date, "%Y%m%d").date() if args.date else dt.date.today()
    home = Path(args.home or Path.cwd() / "ecflow-home" / "catchup").resolve()
    suite = build(home, end - dt.timedelta(days=known.days - 1), end, args.endpoint, ordered=known.ordered)
    play(suite, args.host, args.port, begin=not args.no_begin)
    print(f"suite /{suite.name} loaded on {args.host}:{args.port}; scripts in {home / 'files'}")


if __name__ == "__main__":
    main()
